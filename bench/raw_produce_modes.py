"""How fast aiokafka produces a consume -> produce passthrough, three ways (not a test).

On the real local broker, for the same 60,000 envelopes, each way in its own process (as the
worker is one), in rounds with the order rotating:

  send       one ``send()`` per record, aiokafka's default partitioner (murmur2 of the key)
  send_part  one ``send()`` per record with the input record's partition given (no hashing)
  batch      aiokafka's batch API (``create_batch`` / ``send_batch``), as the worker produces and as
             bench/throughput.py's raw passthrough does
  spec       the batch API writing what issue 4 asks of any router per routed message: the message
             with the five samex headers to its destination, and a decision-record-sized record to
             a decision log (bench/throughput.py, ``send_batched_spec``); the ceiling of a router
             that meets the issue, without decoding or deciding anything

Throughput = records / (last output timestamp - first); CPU = the process's own CPU per message.
Until 2026-11-30 bench/throughput.py's passthrough used ``send``; this shows how far that was from
the limit of the client. Last line: one JSON object with the medians.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.throughput import out_span, spec_topics  # noqa: E402
from router.localkafka import kafka_broker  # noqa: E402
from router.topics import ensure_topics  # noqa: E402
from tests.kafka_helpers import produce_records, synth_records  # noqa: E402

N, ROUNDS = 60_000, 4
MODES = ("send", "send_part", "batch", "spec")  # bench/throughput.py's PASS_MODES, in rotation order


async def main(bootstrap: str) -> None:
    values = synth_records(N, seed=99)
    res: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for rnd in range(ROUNDS):
        src = f"modes{rnd}{uuid.uuid4().hex[:4]}.in"
        await ensure_topics(bootstrap, [src], partitions=6)
        await produce_records(bootstrap, src, values)
        for mode in MODES[rnd % len(MODES):] + MODES[:rnd % len(MODES)]:
            dst = f"{src}.{mode}"
            await ensure_topics(bootstrap, spec_topics(dst) if mode == "spec" else [dst], partitions=6)
            # bench/throughput.py's passthrough, as its own process
            out = subprocess.run([sys.executable, str(REPO / "bench" / "throughput.py"), "--raw-run", bootstrap, src,
                                  dst, str(N), mode], capture_output=True, check=True, cwd=REPO, timeout=600)
            us = json.loads(out.stdout.decode().splitlines()[-1])["us_per_msg"]
            count, span = await out_span(bootstrap, [dst], N)
            res[mode].append((count / span, us))
            print(f"round {rnd + 1} {mode}: {count / span:,.0f} msg/s, {us:.1f} µs of CPU per message", flush=True)
    summary = {}
    for mode, v in res.items():
        rate, us = statistics.median(x for x, _ in v), statistics.median(u for _, u in v)
        print(f"{mode}: median {rate:,.0f} msg/s, {us:.1f} µs per message")
        summary[f"{mode}_msgs_per_s"], summary[f"{mode}_us_per_msg"] = round(rate), round(us, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    with kafka_broker(None) as broker:
        asyncio.run(main(broker))

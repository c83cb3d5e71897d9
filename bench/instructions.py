"""CPU instructions per message of the worker's hot-path code, offline (not a test).

Wall-clock figures on this shared machine swing by a third between runs; instruction counts do
not. This runs itself under valgrind's cachegrind twice per part, with 0 and with REPS passes over
5,000 synthetic envelopes (500-message batches), and prints the difference per message:

  decode   RoutingReader.decode_raw (the hot path's envelope reader)
  process  RouterCore.process with the order book hook, as in the worker
  enqueue  BatchSender.enqueue of process's outputs (grouping and aiokafka's batch builder; the
           producer's send is replaced, so no broker is involved and nothing is sent)

    python bench/instructions.py [PART ...]        # needs valgrind; ~1 min per part

Fewer instructions is not the same as less time (cache misses, allocation), so a change is kept
only when the throughput benchmark agrees; this tells which part a change moved, and by how much.
Last line: one JSON object {part: instructions per message}.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PARTS = ("decode", "process", "enqueue")
N, BATCH, REPS = 5000, 500, 2
NOW_MS = 1_790_000_000_000


def workload(part: str, reps: int) -> None:
    sys.path.insert(0, str(REPO))
    from aiokafka import AIOKafkaProducer
    from prometheus_client import CollectorRegistry

    from router.codec import default_codec
    from router.identifiers import patient_key
    from router.metrics import WorkerMetrics
    from router.rules.engine import Engine
    from router.rules.load import load_rules
    from router.settings import load_settings
    from router.worker.batchsend import BatchSender
    from router.worker.core import InRecord, RouterCore
    from router.worker.orders import OrderBook
    from router.worker.states import StateBook
    from tests.kafka_helpers import synth_records

    codec, settings, states = default_codec(), load_settings(), StateBook()
    core = RouterCore(settings, codec, WorkerMetrics(CollectorRegistry()), Engine(load_rules(REPO / "rules")),
                      states, "w")
    book = OrderBook({}, lambda: core.engine, states, "orders-changelog")
    core.hooks.append(book)
    ins = [InRecord("in", i % 6, i, patient_key(e["patient"]["id"], settings.patient_key_bytes).encode(),
                    codec.encode("envelope", e)) for i, e in enumerate(synth_records(N, seed=7))]
    loop = asyncio.new_event_loop()

    async def make() -> Any:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", enable_idempotence=True, acks="all")

        async def send_batch(batch: Any, topic: str, partition: int | None = None) -> None:
            batch.close()

        producer.send_batch = send_batch  # never started: batches are built, not sent
        return producer

    sender = BatchSender(loop.run_until_complete(make()))
    outputs = [core.process(ins[i:i + BATCH], now_ms=NOW_MS).outputs for i in range(0, N, BATCH)]
    for outs in outputs:
        for o in outs:
            sender._partitions.setdefault(o.topic, 6)
    gc.collect()
    gc.freeze()
    gc.set_threshold(settings.gc_young_threshold or 700, 10, 10)  # as the worker runs

    def once() -> None:
        if part == "decode":
            decode = core._reader.decode_raw
            for r in ins:
                decode(r.value)
        elif part == "process":
            book.table.clear()  # every pass places the same orders anew
            for i in range(0, N, BATCH):
                core.process(ins[i:i + BATCH], now_ms=NOW_MS)
        else:
            for outs in outputs:
                loop.run_until_complete(sender.enqueue(outs))

    once()  # warm: caches as in a running worker
    for _ in range(reps):
        once()


def count(part: str, reps: int) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                          sys.executable, __file__, "--workload", part, str(reps)],
                         capture_output=True, text=True, env=env, check=True)
    m = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if m is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


def main(parts: list[str]) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt install valgrind)")
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    result = {}
    for part in parts or PARTS:
        per_msg = (count(part, REPS) - count(part, 0)) // (REPS * N)
        result[part] = per_msg
        print(f"{part}: {per_msg:,} instructions per message", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--workload"]:
        workload(sys.argv[2], int(sys.argv[3]))
    else:
        main(sys.argv[1:])

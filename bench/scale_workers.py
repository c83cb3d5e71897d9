"""Router throughput with one worker against two in one consumer group (not a test).

The design scales by partitions and workers. This measures what a second worker process adds on
this machine (2 shared cores, the broker on them too). For each run: start K workers on fresh
topics, wait until they are ready and the group has settled, then fill the inbound topic at
~150,000 msg/s (a batch-API copy of a prefilled topic, far faster than the router) and time the
decisions: records / (last decision timestamp - first). Each worker's share comes from its own
``samex_messages_in_total``, so a run where one worker did all the work shows. K alternates
1, 2, 1, 2, ... Last line: one JSON object with the medians.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.throughput import out_span, passthrough  # noqa: E402
from router.kafkaio import records_in  # noqa: E402
from router.localkafka import kafka_broker  # noqa: E402
from router.rules.engine import Engine  # noqa: E402
from router.rules.load import load_rules  # noqa: E402
from router.topics import ensure_router_topics, ensure_topics  # noqa: E402
from tests.kafka_helpers import WorkerProcess, produce_records, synth_records, topic_settings  # noqa: E402

N, ROUNDS, SETTLE_S = 60_000, 3, 8.0


def messages_in(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("samex_messages_in_total{"))


async def run(bootstrap: str, source: str, k: int, rnd: int) -> tuple[float, list[float]]:
    prefix = f"scale{rnd}k{k}{uuid.uuid4().hex[:4]}."
    s = topic_settings(bootstrap, prefix)
    eng = Engine(load_rules(REPO / "rules"))
    await ensure_router_topics(s, eng.systems, eng.golive_ms)
    workers = [WorkerProcess(s, worker_id=f"s{i}").start() for i in range(k)]
    try:
        for w in workers:
            w.wait_ready()
        await asyncio.sleep(SETTLE_S)  # the group's assignment settles before any input arrives
        await passthrough(bootstrap, source, s.inbound_topic, N, "batch")  # the input, at ~150,000 msg/s
        deadline = time.monotonic() + 300
        while await records_in(bootstrap, s.decisions_topic) < N and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        shares = [messages_in(w.get("/metrics").decode()) / N for w in workers]
        count, span = await out_span(bootstrap, [s.decisions_topic], N)
        return count / span, shares
    finally:
        for w in workers:
            w.stop()


async def main(bootstrap: str) -> None:
    source = f"scale-src{uuid.uuid4().hex[:4]}"
    await ensure_topics(bootstrap, [source], partitions=6)
    await produce_records(bootstrap, source, synth_records(N, seed=99))
    rates: dict[int, list[float]] = {1: [], 2: []}
    for rnd in range(ROUNDS):
        for k in (1, 2):
            rate, shares = await run(bootstrap, source, k, rnd)
            rates[k].append(rate)
            print(f"round {rnd + 1}, {k} worker{'s' if k > 1 else ''}: {rate:,.0f} msg/s "
                  f"(share of the input per worker: {', '.join(f'{x:.0%}' for x in shares)})", flush=True)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"medians: one worker {one:,.0f} msg/s, two workers {two:,.0f} msg/s ({two / one:.2f}x)")
    print(json.dumps({"one_worker_msgs_per_s": round(one), "two_workers_msgs_per_s": round(two),
                      "two_over_one": round(two / one, 3)}))


if __name__ == "__main__":
    with kafka_broker(None) as broker:
        asyncio.run(main(broker))

"""How a throughput run's output is spread over time (not a test).

Runs bench/throughput.py's router run (the router and the raw passthrough on the same 60,000
messages) RUNS times against one local broker, and for each run prints the records per 250 ms of
the router's decisions topic and of the raw passthrough's output, and the rate after the first
10 % (start-up left out). Written to look into why later runs against one broker were slower
than the first (docs/throughput-history.md).

    python bench/run_shape.py [RUNS]        # default 3
"""

from __future__ import annotations

import asyncio
import collections
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import throughput as bench  # noqa: E402
from aiokafka import TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from router.kafkaio import consumer, partitions_of  # noqa: E402
from router.localkafka import kafka_broker  # noqa: E402


async def timestamps(bootstrap: str, topic: str) -> list[int]:
    c = consumer(bootstrap, group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(c, topic))]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        total = sum((await c.end_offsets(tps)).values())
        out: list[int] = []
        while len(out) < total:
            for recs in (await c.getmany(timeout_ms=500, max_records=20000)).values():
                out += [r.timestamp for r in recs]
        return sorted(out)
    finally:
        await c.stop()


def describe(name: str, ts: list[int]) -> str:
    n, first = len(ts), ts[0]
    per = collections.Counter((t - first) // 250 for t in ts)
    cut = ts[n // 10]
    rate = n / ((ts[-1] - first) / 1000)
    steady = (n - n // 10) / ((ts[-1] - cut) / 1000)
    return (f"  {name}: {n:,} in {(ts[-1] - first) / 1000:.2f} s = {rate:,.0f}/s; after the first 10 %: "
            f"{steady:,.0f}/s\n    per 250 ms: {' '.join(str(per[i]) for i in range(max(per) + 1))}")


async def main(bootstrap: str, runs: int) -> None:
    values = bench.synth_records(bench.N, seed=99)
    for run in range(runs):
        router, raw, *_others = await bench.router_run(bootstrap, values, run)
        print(f"run {run + 1}: router {router:,.0f} msg/s, raw {raw:,.0f} msg/s, ratio {router / raw:.3f}", flush=True)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(f"bench{run}b")]
        finally:
            await admin.close()
        for name, suffix in (("router decisions", "decisions"), ("raw output", "raw-out")):
            topic = next(t for t in mine if t.endswith(suffix))
            print(describe(name, await timestamps(bootstrap, topic)), flush=True)


if __name__ == "__main__":
    with kafka_broker() as broker:
        asyncio.run(main(broker, int(sys.argv[1]) if len(sys.argv) > 1 else 3))

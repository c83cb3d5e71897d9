"""Router/raw ratio with the broker's log on disk and on tmpfs, alternating (not a test).

Two local brokers run side by side, one with its log in .kafka/runs (disk, as the tests and
`make run` have it) and one in /dev/shm (tmpfs). Rounds alternate between them; each round is one
`bench/throughput.py` router run (60,000 messages through one worker, and the same messages
through the raw passthrough, on fresh topics). The rounds share the machine's noise, so the
medians can be compared. Last line: {"disk_ratio": ..., "tmpfs_ratio": ..., "rounds": ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import throughput

from router.localkafka import LocalKafka

ROUNDS = int(os.environ.get("SAMEX_BENCH_ROUNDS", "4"))


async def main(brokers: dict[str, str]) -> None:
    values = throughput.synth_records(throughput.N, seed=99)
    ratios: dict[str, list[float]] = {name: [] for name in brokers}
    for rnd in range(ROUNDS):
        for name, bootstrap in brokers.items():
            router, raw, *_others = await throughput.router_run(bootstrap, values, rnd)
            ratios[name].append(router / raw)
            print(f"round {rnd + 1}, broker log on {name}: router {router:,.0f} msg/s, raw {raw:,.0f} msg/s, "
                  f"ratio {router / raw:.3f}", flush=True)
    for name, rs in ratios.items():
        print(f"{name}: median ratio {statistics.median(rs):.3f} ({', '.join(f'{r:.2f}' for r in rs)})")
    print(json.dumps({f"{name}_ratio": round(statistics.median(rs), 3) for name, rs in ratios.items()}
                     | {"rounds": ROUNDS, "messages": throughput.N}))


if __name__ == "__main__":
    shm = Path("/dev/shm/samex-bench-brokers")
    shm.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(LocalKafka())
        tmpfs = stack.enter_context(LocalKafka(runs_dir=shm))
        asyncio.run(main({"disk": disk.bootstrap, "tmpfs": tmpfs.bootstrap}))

"""A/B latency of worker settings on the real local broker (not a test).

Runs bench/throughput.py's steady-state latency measurement (1,000 msg/s, 10 s warm-up, 20 s
measured) for each variant in turn (the order rotates each round), K rounds, on one broker, with
the raw passthrough as a control in every round: alternating runs see the same machine noise.

    python bench/latency_ab.py "linger2:SAMEX_LINGER_MS=2" "linger0:SAMEX_LINGER_MS=0" --rounds 3

A variant is NAME:ENV=VALUE[,ENV=VALUE...] (worker settings, see router/settings.py). Last line:
one JSON object with the medians per variant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import throughput

from router.localkafka import kafka_broker


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, spec = text.partition(":")
    env = dict(kv.split("=", 1) for kv in spec.split(",") if kv)
    if not name or any(not k.startswith("SAMEX_") for k in env):
        raise SystemExit(f"bad variant {text!r}: expected NAME:SAMEX_X=1[,SAMEX_Y=2]")
    return name, env


async def main(bootstrap: str, variants: list[tuple[str, dict[str, str]]], rounds: int) -> None:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in variants}
    results["raw"] = []
    base_env = dict(os.environ)
    order = [*variants, ("raw", {})]
    for k in range(rounds):
        # the order rotates each round, so that no variant always runs first (on a fresh broker, or
        # right after the same neighbour)
        for name, env in order[k % len(order):] + order[:k % len(order)]:
            os.environ.clear()
            os.environ.update({**base_env, **env})  # the worker process inherits these settings
            p50, p99, _a50, a99 = await throughput.latency_run(bootstrap, 200 + k, raw=(name == "raw"))
            results[name].append((p50, p99))
            print(f"round {k + 1} {name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms (p99 from the first message {a99:.1f} ms)",
                  flush=True)
    os.environ.clear()
    os.environ.update(base_env)
    summary = {name: {"p50_ms": round(statistics.median(r[0] for r in rs), 1),
                      "p99_ms": round(statistics.median(r[1] for r in rs), 1)} for name, rs in results.items()}
    for name, v in summary.items():
        print(f"median {name}: p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms")
    print(json.dumps(summary))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="NAME:SAMEX_SETTING=VALUE[,...]")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    vs = [parse_variant(v) for v in a.variants]
    with kafka_broker() as broker:
        asyncio.run(main(broker, vs, a.rounds))

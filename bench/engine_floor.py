"""How close the large rule set can come to the small one in bench/engine.py (not a test).

Issue 3 asks for the large set (10,000 units, 1,000 rules) within 1.3x of the small set's cost per
decision. Any engine that finds a receiver by its HSA-id has to look that string up in a table of
every unit it routes to. This measures, on the same message lists as bench/engine.py and
interleaved in one process, three loops per set:

  loop     the benchmark loop and the reads of the message's kind and receiver (no lookup)
  lookup   the same plus the engine's own index lookup (kind -> HSA-id -> slot) and nothing else
  decide   Engine.decide, as bench/engine.py times it

"lookup" large minus small is the extra memory cost of finding one of 10,000 receivers at random
instead of one of 191; no work after the lookup can win it back. So the lowest cost ratio any
engine built on that lookup can reach is (small decide + lookup gap) / small decide. Last line:
one JSON object with the medians and that floor.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.engine import INSTANTS, RUNS, engines_and_messages, harness, rate  # noqa: E402
from router.rules.engine import Engine  # noqa: E402


def lookup(engine: Engine, msgs: list[dict]) -> float:
    """The index lookup alone: kind -> table, HSA-id -> slot (as the first lines of ``decide``)."""
    slots = engine._slots
    t0 = time.perf_counter()
    for m in msgs:
        by_kind = slots.get(m["kind"])
        if by_kind is not None:
            by_kind.get(m["receiver"]["unit_hsa_id"])
    return len(msgs) / (time.perf_counter() - t0)


def ns(rates: list[float]) -> float:
    return 1e9 / statistics.median(rates)


def main() -> None:
    small, large, ms, ml = engines_and_messages()
    instants = INSTANTS
    rate(small, ms, instants), rate(large, ml, instants)  # warm up, as bench/engine.py
    lookup(small, ms), lookup(large, ml)
    r: dict[str, list[float]] = {k: [] for k in ("loop_s", "loop_l", "lookup_s", "lookup_l", "decide_s", "decide_l")}
    for run in range(RUNS):
        r["loop_s"].append(harness(ms))
        r["loop_l"].append(harness(ml))
        r["lookup_s"].append(lookup(small, ms))
        r["lookup_l"].append(lookup(large, ml))
        r["decide_s"].append(rate(small, ms, instants))
        r["decide_l"].append(rate(large, ml, instants))
        print(f"run {run + 1}: ns per message, small / large: loop {1e9 / r['loop_s'][-1]:.0f} / "
              f"{1e9 / r['loop_l'][-1]:.0f}, lookup {1e9 / r['lookup_s'][-1]:.0f} / {1e9 / r['lookup_l'][-1]:.0f}, "
              f"decide {1e9 / r['decide_s'][-1]:.0f} / {1e9 / r['decide_l'][-1]:.0f}", flush=True)
    gap = ns(r["lookup_l"]) - ns(r["lookup_s"])
    small_ns, large_ns = ns(r["decide_s"]), ns(r["decide_l"])
    floor = (small_ns + gap) / small_ns
    print(f"medians, ns per message: loop {ns(r['loop_s']):.0f} / {ns(r['loop_l']):.0f}; lookup "
          f"{ns(r['lookup_s']):.0f} / {ns(r['lookup_l']):.0f} (the large set's lookup costs {gap:.0f} ns more); "
          f"decide {small_ns:.0f} / {large_ns:.0f}")
    print(f"cost ratio of decide, large/small: {large_ns / small_ns:.2f}x; the lookup's extra cost alone puts the "
          f"floor at {floor:.2f}x (target 1.3x)")
    print(json.dumps({"small_decide_ns": round(small_ns), "large_decide_ns": round(large_ns),
                      "lookup_gap_ns": round(gap), "decide_ratio": round(large_ns / small_ns, 3),
                      "floor_ratio": round(floor, 3)}))


if __name__ == "__main__":
    main()

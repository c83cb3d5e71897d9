"""What each object a decision touches costs on the large rule set (not a test).

Issue 3 asks for the large set (10,000 units) within 1.3x of the small set's cost per decision.
This measures, on the message lists of bench/engine.py, interleaved in one process, three
stand-ins for ``Engine.decide`` that touch more and more of the engine's memory per decision:

  lookup      call, one dict lookup of the receiver's HSA-id, return the value found (a per-unit
              record): the dict's entry, the key string and the record's header
  flat, hot   the same, then read the kind's decision from the record (a further cache line of the
              record), but every decision is one shared object, hot in the cache
  flat        the same with the real decisions (about 4,000 distinct objects on the large set)

plus ``Engine.decide`` itself. The flat record is one tuple per unit: (etapp, go-live, then the
live and not-live decision per kind); units that route alike share one. It is the smallest layout
that decides by lookup, and it answers like ``decide`` for every message here (checked first).

Each step's extra large-minus-small cost is what touching one more distinct object costs when the
directory has 10,000 units. Last line: one JSON object with the medians.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.engine import INSTANTS, RUNS, engines_and_messages, rate  # noqa: E402
from router.decision import Decision  # noqa: E402
from router.envelope import KINDS  # noqa: E402
from router.rules.engine import Engine  # noqa: E402

SHARED = Decision("routed", ("x",), "r", "v", None, None, "one shared decision")
Record = tuple[Any, ...]


def records(engine: Engine, hot: bool) -> tuple[dict[str, Record], dict[str, int]]:
    """HSA-id -> flat record; the record's slot of each kind's live decision (not live: the next)."""
    shared: dict[Record, Record] = {}
    out: dict[str, Record] = {}
    for hsa, unit in engine.units.items():
        items: list[Any] = [unit.etapp, engine.golive_ms.get(unit.etapp, 0) if unit.etapp else 0]
        for kind in KINDS:
            slot = engine._slots.get(kind, {}).get(hsa)
            if slot is None:
                items += [None, None]
                continue
            for fixed in (slot.fixed_live, slot.fixed_not_live):
                d = fixed if fixed is not None else slot  # not fixed: decide() decides
                items.append(SHARED if hot and isinstance(d, Decision) else d)
        rec = tuple(items)
        out[hsa] = shared.setdefault(rec, rec)
    return out, {k: 2 + 2 * i for i, k in enumerate(KINDS)}


class Stand:
    """An object with a ``decide`` like the engine's, for bench.engine.rate."""

    def __init__(self, decide: Callable[..., Any]) -> None:
        self.decide = decide


def lookup_only(recs: dict[str, Record]) -> Stand:
    def decide(env: Any, as_of_ms: int, states: Any = None) -> Any:
        return recs.get(env["receiver"]["unit_hsa_id"])
    return Stand(decide)


def flat(engine: Engine, recs: dict[str, Record], at: dict[str, int]) -> Stand:
    slow = engine.decide

    def decide(env: Any, as_of_ms: int, states: Any = None) -> Any:
        rec = recs.get(env["receiver"]["unit_hsa_id"])
        if rec is not None:
            etapp = rec[0]
            if etapp is None:
                d = rec[at[env["kind"]] + 1]
            elif states and states.get(etapp, "scheduled") != "scheduled":
                return slow(env, as_of_ms, states)
            else:
                d = rec[at[env["kind"]] + (as_of_ms < rec[1])]
            if d.__class__ is Decision:
                return d
        return slow(env, as_of_ms, states)
    return Stand(decide)


def main() -> None:
    small, large, ms, ml = engines_and_messages()
    instants = INSTANTS
    sides: dict[str, tuple[Any, Any]] = {
        "lookup": (lookup_only(records(small, False)[0]), lookup_only(records(large, False)[0])),
        "flat, hot": (flat(small, *records(small, True)), flat(large, *records(large, True))),
        "flat": (flat(small, *records(small, False)), flat(large, *records(large, False))),
        "Engine.decide": (small, large),
    }
    for eng, stand, msgs in ((small, sides["flat"][0], ms), (large, sides["flat"][1], ml)):
        for i, m in enumerate(msgs[:50_000]):
            assert stand.decide(m, instants[i & 7], {}) == eng.decide(m, instants[i & 7], {}), m
    for s, lg in sides.values():  # warm up
        rate(s, ms, instants), rate(lg, ml, instants)
    r: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    for run in range(RUNS):
        for name, (s, lg) in sides.items():
            r[name].append((1e9 / rate(s, ms, instants), 1e9 / rate(lg, ml, instants)))
        print(f"run {run + 1}, ns per decision small / large: " + "; ".join(
            f"{k} {v[-1][0]:.0f} / {v[-1][1]:.0f}" for k, v in r.items()), flush=True)
    result: dict[str, dict[str, float]] = {}
    for name, pairs in r.items():
        s_ns = statistics.median(p[0] for p in pairs)
        l_ns = statistics.median(p[1] for p in pairs)
        result[name] = {"small_ns": round(s_ns), "large_ns": round(l_ns), "gap_ns": round(l_ns - s_ns),
                        "ratio": round(statistics.median(p[1] / p[0] for p in pairs), 2)}
        print(f"{name}: small {s_ns:.0f} ns, large {l_ns:.0f} ns, large costs {l_ns - s_ns:.0f} ns more; "
              f"ratio {result[name]['ratio']}x (median of the runs' own ratios)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

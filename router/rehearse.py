"""Rehearsal: decide recorded inbound traffic under other rules and another instant, produce
nothing, and compare with what was decided. A go-live's effect is known before it happens.

It is a replay dry run (``router/replay.py``) with one rule set and one instant for every
message, plus an account of what would become unroutable and why.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from router.codec import default_codec
from router.replay import Diff, Engines, Redecider, Request, outcome_of_decision, outcome_of_record, select
from router.rules.engine import Engine
from router.worker.states import StateBook


@dataclass
class Rehearsal:
    diff: Diff = field(default_factory=Diff)
    unroutable: int = 0  # routed before, dead letter now
    reasons_unroutable: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        d = self.diff.as_json()
        return {"total": d["total"], "same": d["same"], "changed": d["changed"],
                "not_in_decision_log": d["without_decision"], "would_become_unroutable": self.unroutable,
                "changes": d["changes"], "after": d["after"], "unroutable_reasons": dict(self.reasons_unroutable)}


async def rehearse(settings: Any, engine: Engine, as_of_ms: int, from_ms: int, to_ms: int | None,
                   states: StateBook, use_orders: bool = True,
                   progress: Callable[[str, int, int], None] | None = None) -> Rehearsal:
    import orjson

    from router.worker.orders import read_orders

    codec = default_codec()
    orders = {k: orjson.dumps(v).decode() for k, v in (await read_orders(settings)).items()} if use_orders else None
    redecider = Redecider(Engines({}, engine), states, engine=engine, as_of_ms=as_of_ms, orders=orders)
    result = Rehearsal()
    t0 = time.monotonic()
    req = Request(from_ms, to_ms if to_ms is not None else int(time.time() * 1000))
    async for item in select(settings, req, codec, progress=progress):
        d = redecider.decide(item)
        after = outcome_of_decision(d)
        result.diff.add(item, after)
        if item.orig is not None and after[0] == "dead_letter" and outcome_of_record(item.orig)[0] == "routed":
            result.unroutable += 1
            result.reasons_unroutable[d.reason] += 1
    result.seconds = time.monotonic() - t0
    return result


__all__ = ["Rehearsal", "rehearse"]

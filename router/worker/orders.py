"""Results follow their orders: where each lab order and remiss was placed, and the decision hook
that sends a lab result (or a remiss answer) back to that system.

Why: an etapp can switch (go-live, pause, rollback) between an order and its result. The result
belongs in the system where the order lives, not where the ordering unit's messages go now. The
placement is the system the rules gave, at order time, for a reply addressed to the ordering unit.

The book is a mapping ``key -> JSON text`` kept in a changelog-backed faust GlobalTable in the
worker (every worker holds all entries and recovers them from the changelog topic on restart);
tests pass a plain dict. Keys: ``order:<placer order number>``, ``referral:<referral id>``.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from functools import lru_cache
from typing import Any

import orjson

from router.decision import Decision
from router.rules.engine import Engine
from router.timeutil import fmt_ms
from router.worker.states import StateBook

# kind of the order message -> kind of the reply that must find its way back
REPLY_KIND = {"lab_order": "lab_result", "remiss": "remiss"}


def order_key(env: dict[str, Any]) -> tuple[str, str] | None:
    """(role, key) of an envelope: ('place', key) for an order/referral, ('answer', key) for a reply."""
    kind = env["kind"]
    corr = env.get("correlation") or {}
    if kind == "lab_order" and corr.get("placer_order_number"):
        return "place", f"order:{corr['placer_order_number']}"
    if kind == "lab_result" and corr.get("placer_order_number"):
        return "answer", f"order:{corr['placer_order_number']}"
    if kind == "remiss":
        if corr.get("in_reply_to"):
            return "answer", f"referral:{corr['in_reply_to']}"
        if corr.get("referral_id"):
            return "place", f"referral:{corr['referral_id']}"
    return None


class OrderBook:
    """A RouterCore decision hook (see ``RouterCore.hooks``)."""

    def __init__(self, table: MutableMapping[str, Any], engine: Callable[[], Engine], states: StateBook,
                 changelog_topic: str | None = None) -> None:
        self.table = table
        self.engine = engine
        self.states = states
        # Writes go into the batch's own outputs (one record each on the table's changelog, in the
        # form faust writes it) so they are acknowledged with the batch, before its input offsets
        # are committed; ``table`` is updated in place without faust's per-write send.
        self.changelog_topic = changelog_topic
        self.outbox: list[tuple[bytes, bytes]] = []
        self.followed = 0
        self.unknown = 0

    def _put(self, key: str, entry: dict[str, Any]) -> None:
        text = orjson.dumps(entry).decode()
        self.table[key] = text
        if self.changelog_topic is not None:
            self.outbox.append((orjson.dumps(key), orjson.dumps(text)))

    def drain(self) -> list[tuple[str, bytes, bytes]]:
        """(topic, key, value) of the writes since the last drain."""
        if not self.outbox or self.changelog_topic is None:
            self.outbox.clear()
            return []
        out = [(self.changelog_topic, k, v) for k, v in self.outbox]
        self.outbox.clear()
        return out

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self.table.get(key)
        return decode_entry(raw) if raw is not None else None

    def __call__(self, env: dict[str, Any], decision: Decision, now_ms: int, rec: Any) -> Decision | None:
        role_key = order_key(env)
        if role_key is None or decision.outcome == "park":
            return None
        role, key = role_key
        if role == "place":
            if key in self.table:
                return None  # a resend or an update of the same order keeps its first placement
            unit = env["sender"]["unit_hsa_id"]
            engine = self.engine()
            systems = engine.placement(unit, REPLY_KIND[env["kind"]], now_ms, self.states.at(now_ms))
            if systems is None:
                return None
            u = engine.units.get(unit)
            placed = {"kind": env["kind"], "reply_kind": REPLY_KIND[env["kind"]], "unit": unit,
                      "etapp": u.etapp if u else None, "systems": list(systems), "placed_ms": now_ms,
                      "message_id": env["message_id"], "answered_ms": None}
            self._put(key, placed)
            return None
        entry = self.get(key)
        what = "lab result" if env["kind"] == "lab_result" else "remiss answer"
        of, ident = key.split(":", 1)
        if entry is None:
            self.unknown += 1
            if decision.outcome != "routed":
                return None
            # built directly: dataclasses.replace was 2 % of the worker's time (py-spy, full load)
            return Decision(decision.outcome, decision.destinations, decision.rule, decision.rules_version,
                            decision.etapp, decision.etapp_state,
                            f"{decision.reason}; no known order for this {what} ({of} {ident}): routed by the rules",
                            decision.reason_code)
        systems = tuple(entry["systems"])
        if not entry.get("answered_ms"):
            entry["answered_ms"] = now_ms
            self._put(key, entry)
        self.followed += 1
        rules_say = ", ".join(decision.destinations) if decision.outcome == "routed" else decision.reason_code
        reason = f"{what} follows its {of} {ident} placed {_placed_text(entry['placed_ms'])} in {', '.join(systems)}"
        if systems != decision.destinations:
            reason += f" (the rules alone say {rules_say})"
        return Decision("routed", systems, decision.rule or "follows-order", decision.rules_version, decision.etapp,
                        decision.etapp_state, reason, "routed")

# fmt_ms of placement instants, kept: orders placed in one batch share one instant (fmt_ms is ~2.5 µs)
_placed_text = lru_cache(maxsize=4096)(fmt_ms)


def decode_entry(raw: Any) -> dict[str, Any]:
    value = orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw
    if isinstance(value, str):  # faust's json value serializer wraps our JSON text once more
        value = orjson.loads(value)
    return value  # type: ignore[no-any-return]


def orders_changelog_topic(settings: Any) -> str:
    return f"{settings.group_id}-app-samex-orders-changelog"


async def read_orders(settings: Any) -> dict[str, dict[str, Any]]:
    """The order book as the workers hold it: the last value per key on the table's changelog."""
    from router.kafkaio import read_to_end

    out: dict[str, dict[str, Any]] = {}
    for r in sorted(await read_to_end(settings.kafka_bootstrap, orders_changelog_topic(settings)),
                    key=lambda r: (r.partition, r.offset)):
        if r.key is None:
            continue
        k = r.key.decode()
        if k.startswith('"'):  # faust's json key serializer
            k = orjson.loads(k)
        if r.value is None:
            out.pop(k, None)
        else:
            out[k] = decode_entry(r.value)
    return out

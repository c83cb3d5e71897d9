"""Replay: take recorded messages by time and filters, and re-decide them (dry run, with a diff
against what was decided), copy them to a sandbox topic, or route them again for real.

The pure parts (filters, the engine per rule-set version, the diff) work on plain dicts; the
Kafka parts read with ``offsets_for_times`` and ``read_committed`` (``router.recorded``) and
produce with the idempotent producer. A re-send carries the replay headers and leaves an audit
record on the control topic, which the trace index shows as a "replayed" hop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from router.codec import Codec, default_codec
from router.envelopereader import RoutingReader
from router.errors import CodecError, ConfigError, SamexError
from router.rules.engine import Engine
from router.worker.states import StateBook

DEFAULT_MAX = 100
AUDIT_IDS = 5000
KINDS = ("remiss", "lab_order", "lab_result", "info")
Outcome = tuple[str, tuple[str, ...]]


class ReplayError(SamexError):
    """A replay that must not start (bad window, unknown filter value, missing reason, over the cap)."""


# -- selection -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    kinds: frozenset[str] = frozenset()
    senders: frozenset[str] = frozenset()
    receivers: frozenset[str] = frozenset()
    systems: frozenset[str] = frozenset()
    etapper: frozenset[str] = frozenset()
    rules: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()  # dead-letter reason codes
    message_ids: frozenset[str] = frozenset()

    def validate(self, engines: Iterable[Engine]) -> None:
        engines = list(engines)
        systems = {s for e in engines for s in e.systems}
        etapper = {x for e in engines for x in e.golive_ms}
        bad = [f"unknown system {s!r} (known: {', '.join(sorted(systems))})" for s in sorted(self.systems - systems)]
        bad += [f"unknown etapp {x!r} (known: {', '.join(sorted(etapper))})" for x in sorted(self.etapper - etapper)]
        bad += [f"unknown kind {k!r}" for k in sorted(self.kinds - set(KINDS))]
        if bad:
            raise ReplayError("; ".join(bad))

    def as_json(self) -> dict[str, list[str]]:
        return {k: sorted(v) for k, v in self.__dict__.items() if v}

    def matches(self, env: dict[str, Any], orig: dict[str, Any] | None, dead: dict[str, Any] | None) -> bool:
        if self.kinds and env["kind"] not in self.kinds:
            return False
        if self.message_ids and env["message_id"] not in self.message_ids and \
                env.get("source_message_id") not in self.message_ids:
            return False
        s, r = env["sender"], env["receiver"]
        if self.senders and s["unit_hsa_id"] not in self.senders and s.get("system") not in self.senders:
            return False
        if self.receivers and r["unit_hsa_id"] not in self.receivers and r.get("system") not in self.receivers:
            return False
        if self.systems:
            seen = {s.get("system"), r.get("system"), *(orig["destinations"] if orig else ()),
                    dead.get("system") if dead else None}
            if not seen & self.systems:
                return False
        if self.etapper and (orig is None or orig.get("etapp") not in self.etapper):
            return False
        if self.rules and (orig is None or orig.get("rule") not in self.rules):
            return False
        return not (self.reasons and (dead is None or dead["reason_code"] not in self.reasons))


@dataclass(slots=True)
class Item:
    """One selected message: the envelope bytes as recorded and what was decided about it."""

    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    topic: str
    partition: int
    offset: int
    env: dict[str, Any]
    orig: dict[str, Any] | None = None
    dead: dict[str, Any] | None = None


# -- rule sets in force ------------------------------------------------------------------------------
class Engines:
    """Engines by rule-set version from the published sets on the control topic; a version that is
    not there falls back to ``fallback`` (counted, and said in the summary)."""

    def __init__(self, published: dict[str, dict[str, str]], fallback: Engine) -> None:
        self.published = published
        self.fallback = fallback
        self.cache: dict[str, Engine] = {fallback.version: fallback}
        self.missing: Counter[str] = Counter()

    def get(self, version: str | None) -> Engine:
        if version is None:
            return self.fallback
        e = self.cache.get(version)
        if e is not None:
            return e
        texts = self.published.get(version)
        if texts is not None:
            from router.rules.load import load_rule_texts

            try:
                e = self.cache[version] = Engine(load_rule_texts(texts))
                return e
            except SamexError:
                pass
        self.missing[version] += 1
        return self.fallback


@dataclass
class Control:
    """What the control topic holds that a replay needs."""

    published: dict[str, dict[str, str]] = field(default_factory=dict)
    states: StateBook = field(default_factory=StateBook)
    active_texts: dict[str, str] | None = None


def read_control_records(records: list[dict[str, Any]]) -> Control:
    """The control topic as the workers read it: a rule set they would refuse never becomes the active
    one here, and an etapp change they would refuse (missing or wrong fields) is skipped."""
    from router.worker.control import ControlRecordError, etapp_change, validate_texts

    c = Control()
    for r in records:
        if r.get("type") == "rules" and r.get("rules_files"):
            texts = dict(r["rules_files"])
            if r.get("rules_version") in c.published or validate_texts(texts)[0] is not None:
                c.published[r["rules_version"]] = texts
                c.active_texts = texts
        elif r.get("type") == "etapp_state":
            try:
                c.states.apply(etapp_change(r))
            except ControlRecordError:
                continue
    return c


# -- dry run ------------------------------------------------------------------------------------------
def outcome_of_record(d: dict[str, Any]) -> Outcome:
    return d["outcome"], tuple(sorted(d["destinations"])) if d["outcome"] == "routed" else ()


def outcome_of_decision(d: Any) -> Outcome:
    if d.outcome == "routed":
        return "routed", tuple(sorted(d.destinations))
    return ("parked" if d.outcome == "park" else "dead_letter"), ()


def label(o: Outcome) -> str:
    return ",".join(o[1]) if o[0] == "routed" else o[0]


@dataclass
class Diff:
    total: int = 0
    same: int = 0
    without_decision: int = 0
    changes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    after: Counter[str] = field(default_factory=Counter)

    def add(self, item: Item, after: Outcome, examples: int = 3) -> None:
        self.total += 1
        self.after[label(after)] += 1
        if item.orig is None:
            self.without_decision += 1
            return
        before = outcome_of_record(item.orig)
        if before == after:
            self.same += 1
            return
        k = (item.env["kind"], label(before), label(after))
        self.changes[k] += 1
        if len(self.examples[k]) < examples:
            self.examples[k].append(item.env["message_id"])

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total, "same": self.same, "changed": sum(self.changes.values()),
                "without_decision": self.without_decision,
                "changes": [{"kind": k, "before": b, "after": a, "count": n, "examples": self.examples[(k, b, a)]}
                            for (k, b, a), n in sorted(self.changes.items(), key=lambda kv: -kv[1])],
                "after": dict(self.after)}


class Redecider:
    """Decide items again: under the version each was decided with (default), or one engine;
    at the instant each was decided (default), or one instant."""

    def __init__(self, engines: Engines, states: StateBook, engine: Engine | None = None, as_of_ms: int | None = None,
                 orders: dict[str, Any] | None = None) -> None:
        self.engines, self.states, self.engine, self.as_of = engines, states, engine, as_of_ms
        self.current: Engine = engine or engines.fallback
        self.book = None
        if orders is not None:
            from router.worker.orders import OrderBook

            self.book = OrderBook(dict(orders), lambda: self.current, states)

    def decide(self, item: Item) -> Any:
        orig = item.orig
        eng = self.engine or self.engines.get(orig["rules_version"] if orig else None)
        self.current = eng
        at = self.as_of if self.as_of is not None else (orig["decided_at_ms"] if orig else
                                                          item.env["received_time_ms"])
        d = eng.decide(item.env, at, self.states.at(at))
        if self.book is not None:
            d = self.book(item.env, d, at, None) or d
        return d


def dry_run(items: Iterable[Item], redecider: Redecider, diff: Diff | None = None) -> Diff:
    diff = diff or Diff()
    for it in items:
        diff.add(it, outcome_of_decision(redecider.decide(it)))
    return diff


# -- reading ------------------------------------------------------------------------------------------
@dataclass
class Request:
    from_ms: int
    to_ms: int
    filters: Filters = field(default_factory=Filters)
    dead_letters: bool = False


def check_window(from_ms: int, to_ms: int) -> None:
    if from_ms >= to_ms:
        raise ReplayError("the time window is empty: --from must be before --to")


async def topic_exists(settings: Any, topic: str) -> bool:
    from router.kafkaio import consumer, partitions_of

    c = consumer(settings.kafka_bootstrap, group_id=None)
    try:
        await c.start()
        return bool(await partitions_of(c, topic))
    finally:
        await c.stop()


async def read_originals(settings: Any, from_ms: int, codec: Codec,
                         progress: Callable[[str, int, int], None] | None = None,
                         stop: asyncio.Event | None = None) -> dict[str, dict[str, Any]]:
    """The decision per message id as recorded (the last one that was not a replay), from ``from_ms``."""
    from router.recorded import read_range

    out: dict[str, dict[str, Any]] = {}
    async for batch in read_range(settings.kafka_bootstrap, settings.decisions_topic, from_ms, None,
                                  (lambda d, t: progress("decision log", d, t)) if progress else None):
        for r in batch:
            d = codec.decode_as("decision", r.value)
            if not d.get("replay_id"):
                out[d["message_id"]] = d
        if stop is not None and stop.is_set():
            break
    return out


async def read_dead(settings: Any, from_ms: int, to_ms: int | None, codec: Codec,
                    progress: Callable[[str, int, int], None] | None = None,
                    stop: asyncio.Event | None = None) -> list[tuple[Any, dict[str, Any]]]:
    from router.recorded import read_range

    out = []
    async for batch in read_range(settings.kafka_bootstrap, settings.deadletter_topic, from_ms, to_ms,
                                  (lambda d, t: progress("dead letters", d, t)) if progress else None):
        for r in batch:
            out.append((r, codec.decode_as("deadletter", r.value)))
        if stop is not None and stop.is_set():
            break
    return out


async def select(settings: Any, req: Request, codec: Codec, stop: asyncio.Event | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> Any:
    """Yield the selected items, each message once, in the order recorded per partition."""
    from router.recorded import read_range

    reader = RoutingReader(codec)
    originals = await read_originals(settings, req.from_ms, codec, progress, stop)
    seen: set[str] = set()
    if req.dead_letters:
        for r, dl in await read_dead(settings, req.from_ms, req.to_ms, codec, progress, stop):
            if stop is not None and stop.is_set():
                return
            try:
                name, env = reader.decode(dl["original"])
            except CodecError:
                continue
            if name != "envelope" or env["message_id"] in seen:
                continue
            orig = originals.get(env["message_id"])
            if not req.filters.matches(env, orig, dl):
                continue
            seen.add(env["message_id"])
            src = dl["source"]
            yield Item(dl["original"], r.key, [], src["topic"], src["partition"], src["offset"], env, orig, dl)
        return
    dead: dict[str, dict[str, Any]] = {}
    if req.filters.reasons:
        dead = {dl["message_id"]: dl for _r, dl in await read_dead(settings, req.from_ms, None, codec, None, stop)
                if dl.get("message_id")}
    async for batch in read_range(settings.kafka_bootstrap, settings.inbound_topic, req.from_ms, req.to_ms,
                                  (lambda d, t: progress("inbound", d, t)) if progress else None):
        for r in batch:
            if stop is not None and stop.is_set():
                return
            try:
                name, env = reader.decode(r.value or b"")
            except CodecError:
                continue
            if name != "envelope" or env["message_id"] in seen:
                continue
            mid = env["message_id"]
            orig = originals.get(mid)
            if not req.filters.matches(env, orig, dead.get(mid)):
                continue
            seen.add(mid)
            yield Item(r.value, r.key, [(k, bytes(v)) for k, v in (r.headers or ())], r.topic, r.partition,
                       r.offset, env, orig, dead.get(mid))


# -- writing ------------------------------------------------------------------------------------------
@dataclass
class Summary:
    mode: str
    replay_id: str | None = None
    selected: int = 0
    written: int = 0
    capped: int = 0  # selected beyond --max, not re-sent
    interrupted: bool = False
    routed: Counter[str] = field(default_factory=Counter)
    diff: Diff | None = None
    notes: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "replay_id": self.replay_id, "selected": self.selected,
                               "written": self.written, "not_sent_over_cap": self.capped,
                               "interrupted": self.interrupted, "outcomes": dict(self.routed), "notes": self.notes,
                               "seconds": round(self.seconds, 3)}
        if self.diff is not None:
            out.update(self.diff.as_json())
        return out


def replay_headers(item: Item, replay_id: str, who: str, reason: str, redeliver: bool) -> list[tuple[str, bytes]]:
    h = [("samex-replay-of", item.env["message_id"].encode()), ("samex-replay-by", who.encode()),
         ("samex-replay-reason", reason.encode())]
    if redeliver:
        h.append(("samex-replay-redeliver", b"1"))
    return h


async def copy_to_topic(settings: Any, items: Any, topic: str, summary: Summary, stop: asyncio.Event,
                        tick: Callable[[], None] | None = None) -> None:
    from router.kafkaio import producer

    p = producer(settings.kafka_bootstrap)
    await p.start()
    try:
        futs = []
        async for it in items:
            summary.selected += 1
            headers = [*it.headers, ("samex-replay-id", (summary.replay_id or "").encode()),
                       ("samex-replay-of", it.env["message_id"].encode())]
            futs.append(await p.send(topic, it.value, key=it.key, headers=headers))
            summary.message_ids.append(it.env["message_id"])
            if tick:
                tick()
            if stop.is_set():
                summary.interrupted = True
                break
        await asyncio.gather(*futs)
        summary.written = len(futs)
    finally:
        await p.stop()


async def resend(settings: Any, items: Any, engine: Engine, states: StateBook, summary: Summary, who: str,
                 reason: str, max_n: int, redeliver: bool, stop: asyncio.Event, orders: dict[str, Any] | None = None,
                 tick: Callable[[], None] | None = None) -> None:
    """Route selected items again under ``engine`` now, at most ``max_n`` of them, with replay headers."""
    from prometheus_client import CollectorRegistry

    from router.kafkaio import producer
    from router.metrics import WorkerMetrics
    from router.topics import ensure_router_topics
    from router.worker.core import InRecord, RouterCore

    await ensure_router_topics(settings, engine.systems, engine.golive_ms)
    core = RouterCore(settings, default_codec(), WorkerMetrics(CollectorRegistry()), engine, states,
                      worker_id=f"replay:{who}")
    if orders is not None:
        from router.worker.orders import OrderBook

        core.hooks.append(OrderBook(dict(orders), lambda: engine, states))
    rid = summary.replay_id or ""
    p = producer(settings.kafka_bootstrap)
    await p.start()
    try:
        futs = []
        async for it in items:
            if summary.written >= max_n:
                summary.capped += 1
                summary.selected += 1
                continue
            summary.selected += 1
            rec = InRecord(it.topic, it.partition, it.offset, it.key, it.value, (), 0)
            res = core.process([rec], replay_id=rid, extra_headers=replay_headers(it, rid, who, reason, redeliver))
            for o in res.outputs:
                futs.append(await p.send(o.topic, o.value, key=o.key, headers=o.headers, partition=o.partition))
            for _mid, d in res.decisions:
                summary.routed[label(outcome_of_decision(d)) if d is not None else "undecodable"] += 1
            summary.written += 1
            summary.message_ids.append(it.env["message_id"])
            if tick:
                tick()
            if stop.is_set():
                summary.interrupted = True
                break
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def audit(settings: Any, summary: Summary, who: str, why: str, req: Request, extra: dict[str, Any]) -> None:
    from router.worker.control import publish, replay_record

    detail = {"mode": summary.mode, "from_ms": req.from_ms, "to_ms": req.to_ms, "filters": req.filters.as_json(),
              "dead_letters": req.dead_letters, "selected": summary.selected, "written": summary.written,
              "not_sent_over_cap": summary.capped, "interrupted": summary.interrupted,
              "message_ids": summary.message_ids[:AUDIT_IDS], **extra}
    await publish(settings, replay_record(summary.replay_id or "", who, why, detail))


def new_replay_id() -> str:
    return f"rp-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def cap_check(max_n: int, confirmed: bool) -> None:
    if max_n < 1:
        raise ReplayError("--max must be at least 1")
    if max_n > DEFAULT_MAX and not confirmed:
        raise ReplayError(f"--max {max_n} is above {DEFAULT_MAX}: add --yes-really to confirm a re-send that large")


__all__ = ["ConfigError", "Diff", "Engines", "Filters", "Item", "Redecider", "ReplayError", "Request", "RoutingReader",
           "Summary",
           "audit", "cap_check", "check_window", "copy_to_topic", "dry_run", "new_replay_id", "read_control_records",
           "resend", "select", "topic_exists"]



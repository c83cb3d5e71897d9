"""The routing core of the worker: a batch of inbound records in, output records out.

Pure apart from the clock value it is given and the metrics it counts: no Kafka here, so the
same code runs in the faust agent, in offline tests and in the benchmark.
"""

from __future__ import annotations

import bisect
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.codec import Codec
from router.decision import Decision
from router.envelopereader import RoutingReader
from router.errors import CodecError, TruncatedRecordError, UnknownSchemaError
from router.identifiers import patient_key
from router.metrics import WorkerMetrics
from router.rules.engine import Engine
from router.settings import Settings
from router.worker.decisionenc import DecisionEncoder
from router.worker.states import StateBook

DEAD_LETTER_KEEP_BYTES = 64 * 1024
# The envelope's ``source`` becomes a metric label (messages in, last message per source). It is
# sender-controlled text, so only names shaped like a connector ("mllp-in", "fhir-in:millennium",
# "sim:elvis") pass, without a run of 6 digits, and at most SOURCE_LABELS_MAX of them per worker:
# a personnummer, a message id or a flood of names never becomes a label or a series.
_SOURCE_SHAPE = re.compile(r"^[a-z][a-z0-9-]{0,23}(:[a-z][a-z0-9-]{0,31})?$")
_DIGIT_RUN = re.compile(r"\d{6}")
SOURCE_LABELS_MAX = 64
# An inbound Kafka key is used (on the outputs, the decision record, the dead letter) only when it
# is shaped like a patient key, the hex HMAC-SHA256 that identifiers.patient_key makes. Any other
# key could be anything, a raw identifier included, and need not even decode as text: it is not
# copied; a decodable envelope is then keyed by its own patient key, an undecodable one by none.
_KEY_SHAPE = re.compile(rb"^[0-9a-f]{64}$")
_KEYS_OK_MAX = 200_000  # keys already seen well-shaped (a patient's key repeats): a set lookup, not a regex
# Decision.outcome -> the decision record's outcome symbol
RECORD_OUTCOME = {"routed": "routed", "park": "parked", "dead_letter": "dead_letter"}
_KEPT_MAX = 50_000
Header = tuple[str, bytes]


@dataclass(slots=True)
class InRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[Header] = ()
    timestamp_ms: int = 0


@dataclass(slots=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[Header] = field(default_factory=list)
    partition: int | None = None  # None: the key's partition (murmur2, as the Java client)


@dataclass(slots=True)
class BatchResult:
    outputs: list[OutRecord]
    routed_received_ms: list[int]  # received times of routed messages, for end-to-end latency after the ack
    decisions: list[tuple[str, Decision | None]]  # (message id, decision) for each input, in order
    parks: list[tuple[str, int]] = field(default_factory=list)  # (etapp, partition) of each parked record


# A hook that may replace the engine's decision (e.g. results follow their orders); returns None to keep it.
DecisionHook = Callable[[dict[str, Any], Decision, int, InRecord], Decision | None]


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """Observe many values into a prometheus_client Histogram with one lock round per bucket.

    Same result as calling ``observe`` per value; uses the client's bucket counters directly
    (prometheus_client has no bulk API), which saves ~3 µs per message on the hot path.
    """
    if not values:
        return
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1
        total += v
    _add(histogram, counts, total)


def observe_since_ms(histogram: Any, now_ms: float, since_ms: Sequence[float]) -> None:
    """``observe_many(histogram, [max(0, now_ms - t) / 1000 for t in since_ms])`` in one pass (seconds
    from epoch-ms instants; the end-to-end latency of every routed message)."""
    if not since_ms:
        return
    bounds = [b * 1000 for b in histogram._upper_bounds]
    counts = [0] * len(bounds)
    total = 0.0
    for t in since_ms:
        d = now_ms - t
        if d < 0:
            d = 0.0
        counts[bisect.bisect_left(bounds, d)] += 1
        total += d
    _add(histogram, counts, total / 1000)


def _add(histogram: Any, counts: list[int], total: float) -> None:
    for i, n in enumerate(counts):
        if n:
            histogram._buckets[i].inc(n)
    histogram._sum.inc(total)


def _code_of(exc: CodecError) -> str:
    if isinstance(exc, UnknownSchemaError):
        return "unknown_schema"
    if isinstance(exc, TruncatedRecordError):
        return "truncated"
    return "undecodable"


class RouterCore:
    def __init__(self, settings: Settings, codec: Codec, metrics: WorkerMetrics, engine: Engine,
                 states: StateBook | None = None, worker_id: str = "worker") -> None:
        self.settings = settings
        self.codec = codec
        self.metrics = metrics
        self.engine = engine
        self.states = states or StateBook()
        self.worker_id = worker_id
        self.hooks: list[DecisionHook] = []
        # (etapp, inbound partition) pairs whose park partition still holds unreleased records; while
        # one does, new messages of that etapp from that partition queue behind them (per-patient order)
        self.backlog: set[tuple[str, int]] = set()
        self.park_seq: Counter[tuple[str, int]] = Counter()  # parks produced, per (etapp, partition)
        self.park_unacked: Counter[tuple[str, int]] = Counter()  # parks not yet acknowledged
        self.releasing = False
        self._key = settings.patient_key_bytes
        self._decision_fp = codec.fingerprint("decision")
        self._decision_enc = DecisionEncoder(codec)
        # Per engine decision (decisions repeat): its rule/version/etapp headers and its encoded
        # outcome-to-reason block of the decision record. Keyed by identity (a Decision's own hash
        # walks all its fields); the entry holds the Decision, so its id is not reused meanwhile.
        self._kept: dict[int, tuple[Decision, tuple[Header, ...], bytes | None]] = {}
        self._reader = RoutingReader(codec)
        self._out_topics: dict[str, str] = {}  # system -> its destination topic
        self._source_labels: dict[str, str] = {}  # envelope source -> its metric label (source_label)
        self._sources_seen: set[str] = set()
        self._keys_ok: set[bytes] = set()

    def _checked_key(self, key: bytes) -> bytes | None:
        """``key`` if shaped like a patient key (see _KEY_SHAPE), else None."""
        if not _KEY_SHAPE.match(key):
            return None
        if len(self._keys_ok) > _KEYS_OK_MAX:
            self._keys_ok.clear()
        self._keys_ok.add(key)
        return key

    def source_label(self, source: str | None) -> str:
        """The metric label for an envelope's ``source``: itself if shaped like a connector name and
        among the first SOURCE_LABELS_MAX such names, else "invalid" / "other" (see _SOURCE_SHAPE)."""
        if not source:
            return "unknown"
        label = self._source_labels.get(source)
        if label is None:
            if len(source) > 57 or not _SOURCE_SHAPE.match(source) or _DIGIT_RUN.search(source):
                label = "invalid"
            elif source in self._sources_seen or len(self._sources_seen) < SOURCE_LABELS_MAX:
                self._sources_seen.add(source)
                label = source
            else:
                label = "other"
            if len(self._source_labels) > 4 * SOURCE_LABELS_MAX:
                self._source_labels.clear()  # a flood of odd names: keep the memo small
            self._source_labels[source] = label
        return label

    # -- one batch ------------------------------------------------------------------------------
    def process(self, records: Sequence[InRecord], now_ms: int | None = None, replay_id: str | None = None,
                extra_headers: Sequence[Header] = (), released: bool = False) -> BatchResult:
        """Decide a batch. ``released=True``: the records come from a park topic and are re-decided
        now (counted as released, not as new input). A record is read for its topic, partition,
        offset, key and value only, so the hot path passes aiokafka's records as they are."""
        self.releasing = released
        try:
            return self._process(records, now_ms, replay_id, extra_headers, released)
        finally:
            self.releasing = False

    def ack_parks(self, result: BatchResult) -> None:
        """The batch's records are acknowledged: its parks are in the park topics now."""
        for ep in result.parks:
            self.park_unacked[ep] -= 1

    def _process(self, records: Sequence[InRecord], now_ms: int | None, replay_id: str | None,
                 extra_headers: Sequence[Header], released: bool) -> BatchResult:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        parks: list[tuple[str, int]] = []
        released_c: Counter[str] = Counter()
        outs: list[OutRecord] = []
        routed_received: list[int] = []
        decisions: list[tuple[str, Decision | None]] = []
        routed_c: Counter[tuple[str, str, str, str]] = Counter()
        dead_c: Counter[str] = Counter()
        parked_c: Counter[str] = Counter()
        in_c: Counter[tuple[str, str]] = Counter()
        last_seen: dict[str, int] = {}
        engine = self.engine  # one rule set per batch, even if a reload lands meanwhile
        states = self.states.at(now_ms)
        timings: list[float] = []
        observe = timings.append
        perf = time.perf_counter
        lean = self._decision_enc.fast
        out_topics = self._out_topics
        keys_ok = self._keys_ok
        for rec in records:
            value = rec.value or b""
            in_key = rec.key
            if in_key is not None and in_key not in keys_ok:
                in_key = self._checked_key(in_key)
            if len(value) > self.settings.max_record_bytes:
                # its routing fields when it is a whole envelope (the payload is skipped, not read), so
                # that the dead letter and the decision record name its message id
                big = self._reader.peek(value)
                mid = big["message_id"] if big else f"unknown:{rec.topic}:{rec.partition}:{rec.offset}"
                reason = (f"record of {len(value)} bytes exceeds the {self.settings.max_record_bytes}-byte limit; "
                          f"dead letter keeps the first {DEAD_LETTER_KEEP_BYTES} bytes")
                self._dead(outs, rec, in_key, big, "oversized", reason, value[:DEAD_LETTER_KEEP_BYTES], engine,
                           now_ms)
                # keyed like the record (the patient hash), so the decision lies on the patient's partition
                outs.append(self._decision_record(rec, mid, big, None, engine.version, now_ms, 0, reason,
                                                  "dead_letter", in_key, replay_id))
                dead_c["oversized"] += 1
                if not released:  # counted in, as every input is
                    in_c[(self.source_label(big.get("source")), big["kind"]) if big else ("unknown", "unknown")] += 1
                decisions.append((mid, None))
                continue
            try:
                # the routing fields only; the full codec (patient included) when the record has no key.
                # decode_raw leaves out fields only the decision encoder's slow path would read.
                if in_key and lean:
                    name, env, raw = self._reader.decode_raw(value)
                elif in_key:
                    (name, env), raw = self._reader.decode(value), None
                else:
                    (name, env), raw = self.codec.decode(value), None
                if name != "envelope":
                    raise UnknownSchemaError(f"expected an envelope record, got a {name} record")
            except CodecError as exc:
                mid = f"unknown:{rec.topic}:{rec.partition}:{rec.offset}"
                code = _code_of(exc)
                self._dead(outs, rec, in_key, None, code, str(exc), value, engine, now_ms)
                outs.append(self._decision_record(rec, mid, None, None, engine.version, now_ms, 0, str(exc),
                                                  "dead_letter", in_key, replay_id))
                dead_c[code] += 1
                if not released:
                    in_c[("unknown", "unknown")] += 1
                decisions.append((mid, None))
                continue
            kind = env["kind"]
            if not released:
                source = self.source_label(env.get("source"))
                in_c[(source, kind)] += 1
                last_seen[source] = env["received_time_ms"]
            t0 = perf()
            decision = engine.decide(env, now_ms, states)
            decided = decision  # the engine's own (memoised) object: its encoded fields are worth keeping
            for hook in self.hooks:
                replaced = hook(env, decision, now_ms, rec)
                if replaced is not None:
                    decision = replaced
            if self.backlog and decision.outcome == "routed" and not self.releasing and decision.etapp and \
                    (decision.etapp, rec.partition) in self.backlog:
                decision = Decision("park", (), decision.rule, decision.rules_version, decision.etapp,
                                    decision.etapp_state, f"{decision.etapp} is releasing parked messages; queued "
                                    "behind them to keep per-patient order", "parked")
            observe(perf() - t0)
            mid = env["message_id"]
            key = in_key or patient_key(env["patient"]["id"], self._key).encode()
            if released:
                parked_etapp = rec.topic.removeprefix(self.settings.park_topic_prefix)
                released_c[parked_etapp] += 1
                decision = Decision(decision.outcome, decision.destinations, decision.rule, decision.rules_version,
                                    decision.etapp, decision.etapp_state,
                                    f"released from {rec.topic}: {decision.reason}", decision.reason_code)
            kept = self._kept_for(decision) if decision is decided else None
            headers = self._headers(env, decision, replay_id, extra_headers, kept)
            if decision.outcome == "routed":
                for dest in decision.destinations:
                    topic = out_topics.get(dest)
                    if topic is None:
                        topic = out_topics[dest] = self.settings.out_topic(dest)
                    outs.append(OutRecord(topic, key, value, headers))
                    routed_c[(kind, dest, decision.etapp or "", decision.rule or "")] += 1
                routed_received.append(env["received_time_ms"])
            elif decision.outcome == "park":
                etapp = decision.etapp or "unknown"
                # park partition = inbound partition: the release of partition p runs on the worker
                # that owns inbound partition p, and keeps its order
                outs.append(OutRecord(self.settings.park_topic(etapp), key, value,
                                      [*headers, ("samex-parked-from", f"{rec.topic}:{rec.partition}:{rec.offset}"
                                                  .encode())], rec.partition))
                ep = (etapp, rec.partition)
                self.backlog.add(ep)
                self.park_seq[ep] += 1
                self.park_unacked[ep] += 1
                parks.append(ep)
                parked_c[etapp] += 1
            else:
                self._dead(outs, rec, key, env, decision.reason_code, decision.reason, value, engine, now_ms)
                dead_c[decision.reason_code] += 1
            outs.append(self._decision_record(rec, mid, env, decision, decision.rules_version, now_ms,
                                              now_ms - env["received_time_ms"], decision.reason,
                                              RECORD_OUTCOME[decision.outcome], key, replay_id,
                                              kept[2] if kept else None, raw))
            decisions.append((mid, decision))
        for hook in self.hooks:
            drain = getattr(hook, "drain", None)
            if drain is not None:
                # state the hooks wrote (the order book's changelog): acknowledged with the batch
                outs.extend(OutRecord(topic, k, v, [], 0) for topic, k, v in drain())
        m = self.metrics
        observe_many(m.decision_seconds, timings)
        for (source, kind), n in in_c.items():
            m.messages_in.labels(source, kind).inc(n)
        for labels, n in routed_c.items():
            m.routed.labels(*labels).inc(n)
        for code, n in dead_c.items():
            m.dead_letters.labels(code, "router").inc(n)
        for etapp, n in parked_c.items():
            m.parked.labels(etapp).inc(n)
            m.parked_waiting.labels(etapp).inc(n)
        for source, ms in last_seen.items():
            m.last_message.labels(source).set(ms / 1000)
        for etapp, n in released_c.items():
            m.released.labels(etapp).inc(n)
            m.parked_waiting.labels(etapp).dec(n)
        return BatchResult(outs, routed_received, decisions, parks)

    # -- records --------------------------------------------------------------------------------
    def _kept_for(self, d: Decision) -> tuple[Decision, tuple[Header, ...], bytes | None]:
        kept = self._kept.get(id(d))
        if kept is None or kept[0] is not d:
            enc = self._decision_enc
            block = enc.block(RECORD_OUTCOME[d.outcome], self._destinations(d), d.rule, d.rules_version, d.etapp,
                              d.etapp_state, d.reason) if enc.fast else None
            if len(self._kept) > _KEPT_MAX:
                self._kept.clear()
            kept = self._kept[id(d)] = (d, self._decision_headers(d), block)
        return kept

    @staticmethod
    def _decision_headers(d: Decision) -> tuple[Header, ...]:
        return (("samex-rule", (d.rule or "").encode()), ("samex-rules-version", d.rules_version.encode()),
                ("samex-etapp", (d.etapp or "").encode()))

    def _destinations(self, d: Decision | None) -> list[str]:
        """The decision record's destinations: the systems, the park topic, or none."""
        if d is None or d.outcome == "dead_letter":
            return []
        if d.outcome == "park":
            return [self.settings.park_topic(d.etapp or "")]
        return list(d.destinations)

    def _headers(self, env: dict[str, Any], d: Decision, replay_id: str | None,
                 extra: Sequence[Header], kept: tuple[Decision, tuple[Header, ...], bytes | None] | None = None,
                 ) -> list[Header]:
        per_decision = kept[1] if kept is not None else self._decision_headers(d)
        h: list[Header] = [("samex-message-id", env["message_id"].encode()), *per_decision,
                           ("samex-trace-id", (env.get("trace_id") or env["message_id"]).encode())]
        if replay_id:
            h.append(("samex-replay-id", replay_id.encode()))
        h.extend(extra)
        return h

    def _dead(self, outs: list[OutRecord], rec: InRecord, key: bytes | None, env: dict[str, Any] | None, code: str,
              reason: str,
              original: bytes, engine: Engine, now_ms: int) -> None:
        record = {
            "message_id": env["message_id"] if env else None,
            "reason_code": code,
            "reason": reason,
            "stage": "router",
            "system": None,
            "original": original,
            "source": {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
            "rules_version": engine.version,
            "at_ms": now_ms,
            "kind": env["kind"] if env else None,
            "trace_id": (env.get("trace_id") if env else None),
        }
        outs.append(OutRecord(self.settings.deadletter_topic, key, self.codec.encode("deadletter", record),
                              [("samex-reason", code.encode())]))

    def _decision_record(self, rec: InRecord, mid: str, env: dict[str, Any] | None, d: Decision | None,
                         version: str, now_ms: int, latency_ms: float, reason: str, outcome: str,
                         key: bytes | None, replay_id: str | None, block: bytes | None = None,
                         raw: tuple[bytes, ...] | None = None) -> OutRecord:
        """``block``: the kept encoding of ``d``'s outcome-to-reason fields (``_kept_for``), only
        when ``reason`` and ``version`` are ``d``'s own. ``raw``: the envelope's own encodings of
        the fields the record repeats (``RoutingReader.decode_raw``)."""
        enc = self._decision_enc
        if env is not None and raw is not None and enc.fast:
            if block is None:
                block = enc.block(outcome, self._destinations(d), d.rule if d else None, version,
                                  d.etapp if d else None, d.etapp_state if d else None, reason)
            value = enc.encode_raw(raw, env["kind"], block, now_ms, now_ms, float(latency_ms), rec.topic,
                                   rec.partition, rec.offset, key or None, replay_id, self.worker_id)
            return OutRecord(self.settings.decisions_topic, key, value, [])
        dests = self._destinations(d)
        if env is not None:
            corr = env["correlation"]
            value = self._decision_enc.encode(
                mid, env.get("source_message_id"), env["kind"], outcome, dests, d.rule if d else None, version,
                d.etapp if d else None, d.etapp_state if d else None, reason, now_ms, now_ms, float(latency_ms),
                rec.topic, rec.partition, rec.offset, key.decode() if key else None,
                env["sender"]["unit_hsa_id"], env["receiver"]["unit_hsa_id"], corr.get("placer_order_number"),
                corr.get("filler_order_number"), corr.get("referral_id"), env.get("trace_id"), replay_id,
                self.worker_id, env.get("source"), block=block)
        else:
            value = self._decision_enc.encode(
                mid, None, None, outcome, dests, d.rule if d else None, version, d.etapp if d else None,
                d.etapp_state if d else None, reason, now_ms, now_ms, float(latency_ms), rec.topic, rec.partition,
                rec.offset, key.decode() if key else None, None, None, None, None, None, None, replay_id,
                self.worker_id)
        # Keyed like the message itself (the patient hash): one patient's decisions stay in order
        # on one partition. Undecodable input has no patient, hence no key.
        return OutRecord(self.settings.decisions_topic, key, value, [])

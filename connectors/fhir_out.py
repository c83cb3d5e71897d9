"""fhir-out: deliver the envelopes on ``samex.out.<system>`` to the system's FHIR R4 base URL.

Per record: skip it if the delivered-store already has its message id (unless the replay header
``samex-replay-redeliver: 1`` asks for another delivery); POST the resource with an added
identifier ``urn:samex:message-id|<id>`` and ``If-None-Exist`` on it, so the server itself
deduplicates a resend after a crash; 200/201 = acknowledged; other 4xx (not 408/429) = rejected ->
dead letter; 5xx, 408, 429, timeouts and connection errors are retried with capped exponential
backoff. Then write the delivery record (acks=all), mark the store, and only then commit the
offset. Partitions are worked concurrently, each strictly in order (per-patient order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from connectors.common import Backoff
from connectors.fhir import FHIR_JSON, MESSAGE_ID_SYSTEM
from connectors.fhir_dedup import DeliveredStore
from router.codec import Codec, default_codec
from router.errors import CodecError, SamexError
from router.identifiers import redact
from router.kafkaio import consumer as make_consumer
from router.kafkaio import producer as make_producer
from router.metrics import ConnectorMetrics
from router.settings import Settings

log = logging.getLogger("samex.fhir_out")
STAGE = "fhir-out"
RETRY_4XX = {408, 425, 429}
# refusal reasons created at 0 on start (others, e.g. an unusual 5xx, appear when they happen)
REFUSAL_REASONS = ("no_answer", *(f"http_{s}" for s in sorted(RETRY_4XX | {500, 502, 503, 504})))


class Stopped(SamexError):
    """fhir-out was asked to stop while a record was still being retried (its offset stays uncommitted)."""


@dataclass(frozen=True)
class Attempt:
    """The answer of one POST: HTTP status (0 = no answer) and a redacted detail text."""

    status: int
    detail: str

    @property
    def acknowledged(self) -> bool:
        return self.status in (200, 201)

    @property
    def rejected(self) -> bool:
        return 400 <= self.status < 500 and self.status not in RETRY_4XX


def prepare(payload: bytes, message_id: str) -> tuple[str, bytes]:
    """Resource type and the JSON to POST: the payload with the samex message-id identifier added."""
    res = orjson.loads(payload)
    if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
        raise ValueError("payload is not a FHIR resource")
    idents = [i for i in res.get("identifier") or [] if isinstance(i, dict)]
    if not any(i.get("system") == MESSAGE_ID_SYSTEM for i in idents):
        res["identifier"] = [*idents, {"system": MESSAGE_ID_SYSTEM, "value": message_id}]
    return str(res["resourceType"]), orjson.dumps(res)


def _detail(status: int, body: bytes) -> str:
    text = ""
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and doc.get("resourceType") == "OperationOutcome":
            text = "; ".join(str(i.get("diagnostics") or i.get("code") or "") for i in doc.get("issue") or [])
    except orjson.JSONDecodeError:
        text = body[:200].decode("utf-8", "replace")
    return redact(f"HTTP {status}" + (f": {text}" if text else ""))[:500]


class FhirOutbound:
    def __init__(self, settings: Settings, system: str, base_url: str, metrics: ConnectorMetrics,
                 store: DeliveredStore, codec: Codec | None = None, group_id: str | None = None,
                 timeout_s: float = 10.0, backoff: Backoff | None = None, only_format: str | None = None) -> None:
        self.settings = settings
        # deliver only payloads of this format (see mllp_out.OutboundOptions.only_format)
        self.only_format = only_format
        self.system = system
        self.base = base_url.rstrip("/")
        self.metrics = metrics
        metrics.init_outbound(system, REFUSAL_REASONS)
        self.store = store
        self.codec = codec or default_codec()
        self.topic = settings.out_topic(system)
        self.group_id = group_id or f"samex-out-{system}"
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.backoff = backoff or Backoff(cap_s=15.0)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._http: aiohttp.ClientSession | None = None
        self._stop = asyncio.Event()
        self._positions: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume and deliver until ``stop`` is set (or the task is cancelled)."""
        self._stop = stop or asyncio.Event()
        self._consumer = make_consumer(self.settings.kafka_bootstrap, self.topic, group_id=self.group_id,
                                       client_id=f"samex-fhir-out-{self.system}")
        self._producer = make_producer(self.settings.kafka_bootstrap, client_id=f"samex-fhir-out-{self.system}")
        self._http = aiohttp.ClientSession(timeout=self.timeout)
        await self._producer.start()
        await self._consumer.start()
        log.info("fhir-out started", extra={"system": self.system, "topic": self.topic})
        try:
            while not self._stop.is_set():
                batch = await self._consumer.getmany(timeout_ms=300, max_records=500)
                if batch:
                    # partitions concurrently, each in order; a real failure cancels the siblings
                    async with asyncio.TaskGroup() as tg:
                        for tp, recs in batch.items():
                            tg.create_task(self._partition(tp, recs))
                self._update_lag()
        finally:
            await self._close()

    async def _close(self) -> None:
        for closer in (self._consumer.stop() if self._consumer else None,
                       self._producer.stop() if self._producer else None,
                       self._http.close() if self._http else None):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer

    def _update_lag(self) -> None:
        c = self._consumer
        if c is None:
            return
        total = 0
        for tp in c.assignment():
            hw = c.highwater(tp)
            done = self._positions.get(tp)
            if hw is not None and done is not None:
                total += max(0, hw - done)
        self.metrics.outbound_lag.labels(self.system).set(total)

    async def _partition(self, tp: TopicPartition, records: Sequence[ConsumerRecord]) -> None:
        assert self._consumer is not None
        for rec in records:
            if self._stop.is_set():
                return  # the rest stays uncommitted and is read again after a restart
            try:
                await self.deliver(rec)
            except Stopped:
                return
            try:
                async with self._commit_lock:
                    await self._consumer.commit({tp: rec.offset + 1})
            except (CommitFailedError, IllegalStateError) as exc:
                # partition revoked in a rebalance: its new owner reads the record again and the
                # delivered-store / conditional create keep it from being delivered twice
                log.warning("offset commit failed", extra={"system": self.system, "error": type(exc).__name__})
                if tp in self._consumer.assignment():  # still ours: go on after this record, not after the batch
                    with contextlib.suppress(IllegalStateError):
                        self._consumer.seek(tp, rec.offset + 1)
                return
            self._positions[tp] = rec.offset + 1

    # -- one record ----------------------------------------------------------------------------
    async def deliver(self, rec: ConsumerRecord) -> str:
        """Deliver one record to its end: returns the outcome written to the deliveries topic."""
        headers = {k: bytes(v).decode("utf-8", "replace") for k, v in rec.headers or ()}
        redeliver = headers.get("samex-replay-redeliver") == "1"
        replay_id = headers.get("samex-replay-id")
        try:
            _, env = self.codec.decode(rec.value, expect="envelope")
        except CodecError as exc:
            await self._dead(rec, None, "undecodable", str(exc), headers)
            return "rejected"
        mid = env["message_id"]
        if self.only_format and env["payload"]["format"] != self.only_format:
            return "skipped_other_format"  # another connector delivers this format
        trace_id = env.get("trace_id") or headers.get("samex-trace-id")
        prior = self.store.outcome(mid)
        if prior is not None and not redeliver:
            await self._delivery(rec, mid, "skipped_duplicate", None, f"already {prior}", 0, replay_id, trace_id)
            return "skipped_duplicate"
        payload = env["payload"]
        try:
            if payload["format"] != "fhir_r4_json":
                raise ValueError(f"payload format {payload['format']} cannot be delivered over FHIR")
            rtype, body = prepare(payload["data"], mid)
        except (ValueError, orjson.JSONDecodeError) as exc:
            await self._dead(rec, env, "unsupported_type", str(exc), headers)
            await self._delivery(rec, mid, "rejected", None, redact(str(exc))[:500], 0, replay_id, trace_id)
            self.store.record(mid, "rejected")
            return "rejected"
        http_headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "X-Request-Id": str(trace_id or mid)}
        if not redeliver and rtype != "Bundle":
            http_headers["If-None-Exist"] = f"identifier={MESSAGE_ID_SYSTEM}|{mid}"
        url = f"{self.base}/" if rtype == "Bundle" else f"{self.base}/{rtype}"
        attempts = 0
        t0 = time.monotonic()
        while True:
            attempts += 1
            answer = await self._post(url, body, http_headers)
            if answer.status == 412 and "If-None-Exist" in http_headers:
                # FHIR: the condition matched several resources, so the server has it already
                answer = Attempt(412, "already present at the destination (several matches)")
                break
            if answer.acknowledged or answer.rejected:
                break
            reason = f"http_{answer.status}" if answer.status else "no_answer"
            self.metrics.refusals.labels(self.system, reason).inc()
            delay = self.backoff.delay(attempts)
            log.warning("delivery failed, retrying", extra={"message_id": mid, "trace_id": trace_id,
                                                            "system": self.system, "attempt": attempts,
                                                            "detail": answer.detail, "retry_in_s": round(delay, 2)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                raise Stopped("stopped while retrying")
        if answer.acknowledged or answer.status == 412:
            self.metrics.delivery_seconds.labels(self.system).observe(time.monotonic() - t0)
            await self._delivery(rec, mid, "acknowledged", str(answer.status), answer.detail if answer.status == 412
                                 else None, attempts, replay_id, trace_id)
            self.store.record(mid, "acknowledged")
            return "acknowledged"
        self.metrics.refusals.labels(self.system, f"http_{answer.status}").inc()
        await self._dead(rec, env, "rejected_by_destination", answer.detail, headers)
        await self._delivery(rec, mid, "rejected", str(answer.status), answer.detail, attempts, replay_id, trace_id)
        self.store.record(mid, "rejected")
        return "rejected"

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        assert self._http is not None
        try:
            async with self._http.post(url, data=body, headers=headers) as resp:
                return Attempt(resp.status, _detail(resp.status, await resp.read()))
        except TimeoutError:
            return Attempt(0, "timeout")
        except aiohttp.ClientError as exc:
            return Attempt(0, f"connection: {type(exc).__name__}")

    # -- records we write -----------------------------------------------------------------------
    async def _send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        assert self._producer is not None
        fut = await self._producer.send(topic, value, key=key, headers=headers)
        await fut

    async def _delivery(self, rec: ConsumerRecord, mid: str, outcome: str, ack_code: str | None,
                        detail: str | None, attempts: int, replay_id: str | None, trace_id: str | None) -> None:
        record = {"message_id": mid, "system": self.system, "outcome": outcome, "ack_code": ack_code,
                  "detail": detail, "attempts": attempts, "at_ms": int(time.time() * 1000),
                  "replay_id": replay_id, "trace_id": trace_id}
        await self._send(self.settings.deliveries_topic, rec.key, self.codec.encode("delivery", record),
                         [("samex-message-id", mid.encode())])
        self.metrics.deliveries.labels(self.system, outcome).inc()
        log.info("delivery", extra={"message_id": mid, "trace_id": trace_id, "system": self.system,
                                    "outcome": outcome, "attempts": attempts})

    async def _dead(self, rec: ConsumerRecord, env: dict[str, Any] | None, code: str, reason: str,
                    headers: dict[str, str]) -> None:
        record = {
            "message_id": env["message_id"] if env else headers.get("samex-message-id"),
            "reason_code": code,
            "reason": redact(reason)[:500],
            "stage": STAGE,
            "system": self.system,
            "original": bytes(rec.value or b""),
            "source": {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
            "rules_version": headers.get("samex-rules-version"),
            "at_ms": int(time.time() * 1000),
            "kind": env["kind"] if env else None,
            "trace_id": (env.get("trace_id") if env else None) or headers.get("samex-trace-id"),
        }
        await self._send(self.settings.deadletter_topic, rec.key, self.codec.encode("deadletter", record),
                         [("samex-reason", code.encode())])
        self.metrics.dead_letters.labels(code, STAGE).inc()
        log.warning("dead-lettered", extra={"message_id": record["message_id"], "trace_id": record["trace_id"],
                                            "system": self.system, "reason_code": code})

"""mllp-out: deliver ``samex.out.<system>`` to the system's MLLP endpoint, each message once.

Per record, strictly in order within its partition (a patient's messages share a partition):

1. skip it (delivery record ``skipped_duplicate``) when the dedup store already has its message id
   as delivered, unless the header ``samex-replay-redeliver`` is ``"1"`` (a replay is then keyed by
   message id + replay id, so the replay itself is delivered once);
2. note ``sending`` in the store, send the original HL7 bytes, wait for the ACK;
3. ``AA`` -> store ``acknowledged`` -> delivery record ``acknowledged``;
   ``AE`` -> dead letter (stage mllp-out, reason_code rejected_by_destination, the ACK text redacted)
   -> store ``rejected`` -> delivery record ``rejected``;
   ``AR``, a timeout, a wrong or missing answer, a lost connection -> retry the same record with
   capped exponential backoff (never skip ahead);
4. the partition's offset is committed only after every record before it was decided and its
   delivery record (and dead letter) acknowledged by Kafka.

Partitions are fetched continuously and paused while their backlog is long, so the consumer stays
in its group during long retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from connectors.common import Backoff
from connectors.dedup import DedupStore
from connectors.hl7v2 import Hl7Error, header_of, parse_ack
from connectors.mllp import MllpClient, MllpError, MllpTimeout
from router.codec import Codec, default_codec
from router.errors import CodecError, SamexError
from router.identifiers import redact
from router.kafkaio import consumer as make_consumer
from router.kafkaio import producer as make_producer
from router.metrics import ConnectorMetrics
from router.settings import Settings

log = logging.getLogger("samex.mllp_out")
STAGE = "mllp-out"
INTERRUPTED = "resent after an interrupted delivery"
UNANSWERED = "resent after an unanswered attempt"
# every reason a delivery attempt is counted as refused (samex_delivery_refusals_total{reason})
REFUSAL_REASONS = ("AR", "timeout", "connection", "bad_ack", "wrong_ack", "interrupted")


@dataclass(frozen=True)
class OutboundOptions:
    host: str = "127.0.0.1"
    port: int = 2576
    ack_timeout_s: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)
    group_id: str | None = None
    high_water: int = 2000  # pause a partition's fetching above this many queued records
    session_timeout_ms: int = 6000
    # deliver only payloads of this format; others belong to another connector of the same system
    # (Millennium takes HL7 v2 over MLLP and FHIR over HTTP: two connectors, two consumer groups)
    only_format: str | None = None


class Stopped(SamexError):
    """Asked to stop while a record was still being retried; its offset stays uncommitted."""


def _headers(rec: Any) -> dict[str, str]:
    return {k: bytes(v).decode("utf-8", errors="replace") for k, v in (rec.headers or ())}


class _Partition:
    """The strictly sequential delivery of one partition's records."""

    def __init__(self, out: MllpOutbound, tp: TopicPartition) -> None:
        self.out, self.tp = out, tp
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.done_offset: int | None = None  # next offset to commit once pending futures are acked
        self.pending: list[asyncio.Future[Any]] = []
        self.committed: int | None = None
        self.client = MllpClient(out.opt.host, out.opt.port)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                rec = await self.queue.get()
                await self.out.deliver(rec, self)
                self.done_offset = rec.offset + 1
        finally:
            await self.client.close()

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


class MllpOutbound:
    def __init__(self, settings: Settings, system: str, metrics: ConnectorMetrics, store: DedupStore,
                 options: OutboundOptions = OutboundOptions(), codec: Codec | None = None) -> None:
        self.settings, self.system, self.metrics, self.store, self.opt = settings, system, metrics, store, options
        self.codec = codec or default_codec()
        self.topic = settings.out_topic(system)
        self.group_id = options.group_id or f"samex-out-{system}"
        metrics.init_outbound(system, REFUSAL_REASONS)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.parts: dict[TopicPartition, _Partition] = {}
        self._stop = asyncio.Event()

    # ---- one record ----------------------------------------------------------------------

    async def deliver(self, rec: Any, part: _Partition) -> None:
        h = _headers(rec)
        try:
            env = self.codec.decode_as("envelope", rec.value)
        except CodecError as exc:
            await self._dead_letter(rec, part, h.get("samex-message-id"), "undecodable", str(exc), None, None)
            return
        mid = env["message_id"]
        replay_id = h.get("samex-replay-id")
        redeliver = h.get("samex-replay-redeliver") == "1"
        key = f"{mid}/replay/{replay_id}" if redeliver and replay_id else mid
        extra = {"message_id": mid, "trace_id": env.get("trace_id"), "system": self.system}
        if self.store.is_done(key) or (not redeliver and self.store.is_done(mid)):
            self.metrics.deliveries.labels(self.system, "skipped_duplicate").inc()
            self._delivery(rec, part, mid, "skipped_duplicate", None, "already delivered", 0, replay_id, env)
            return
        payload = env["payload"]
        if self.opt.only_format and payload["format"] != self.opt.only_format:
            return  # another connector delivers this format
        if payload["format"] == "fhir_r4_json":
            await self._dead_letter(rec, part, mid, "unsupported_type",
                                    f"a {payload['format']} payload cannot be delivered over MLLP to {self.system}",
                                    env.get("kind"), env.get("trace_id"))
            self.store.record(key, "rejected")
            self._delivery(rec, part, mid, "rejected", None, "payload format not deliverable over MLLP", 0,
                           replay_id, env)
            return
        data: bytes = payload["data"]
        control_id = header_of(data).control_id
        interrupted = self.store.mark_sending(key)
        if interrupted:
            log.warning("a delivery was interrupted before its answer; sending again", extra=extra)
            self.metrics.refusals.labels(self.system, "interrupted").inc()
        attempt = 0
        uncertain = False  # an earlier attempt may have reached the destination without its answer reaching us
        while True:
            attempt += 1
            t0 = time.monotonic()
            reason = None
            try:
                ack = parse_ack(await part.client.request(data, self.opt.ack_timeout_s))
                if control_id and ack.control_id and ack.control_id != control_id:
                    await part.client.close()
                    reason = "wrong_ack"
                elif ack.code == "AA":
                    self.metrics.delivery_seconds.labels(self.system).observe(time.monotonic() - t0)
                    self.store.record(key, "acknowledged")
                    self.metrics.deliveries.labels(self.system, "acknowledged").inc()
                    detail = INTERRUPTED if interrupted else UNANSWERED if uncertain else None
                    self._delivery(rec, part, mid, "acknowledged", "AA", detail, attempt, replay_id, env)
                    return
                elif ack.code == "AE":
                    text = redact(ack.text)[:300]
                    await self._dead_letter(rec, part, mid, "rejected_by_destination",
                                            f"{self.system} answered AE: {text}", env.get("kind"), env.get("trace_id"))
                    self.store.record(key, "rejected")
                    self.metrics.deliveries.labels(self.system, "rejected").inc()
                    self._delivery(rec, part, mid, "rejected", "AE", text, attempt, replay_id, env)
                    return
                else:
                    reason = "AR" if ack.code == "AR" else "bad_ack"
            except MllpTimeout:
                reason, uncertain = "timeout", True
            except MllpError:
                reason, uncertain = "connection", True
            except Hl7Error:
                await part.client.close()
                reason = "bad_ack"
            self.metrics.refusals.labels(self.system, reason).inc()
            delay = self.opt.backoff.delay(attempt)
            if attempt in (1, 5) or attempt % 20 == 0:
                log.warning("delivery not accepted; retrying", extra={**extra, "reason": reason, "attempt": attempt,
                                                                      "retry_in_s": round(delay, 2)})
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                continue
            raise Stopped(f"stopped while retrying a delivery to {self.system}")

    def _delivery(self, rec: Any, part: _Partition, mid: str, outcome: str, ack_code: str | None,
                  detail: str | None, attempts: int, replay_id: str | None, env: dict[str, Any]) -> None:
        value = self.codec.encode("delivery", {
            "message_id": mid, "system": self.system, "outcome": outcome, "ack_code": ack_code, "detail": detail,
            "attempts": attempts, "at_ms": int(time.time() * 1000), "replay_id": replay_id,
            "trace_id": env.get("trace_id")})
        assert self.producer is not None
        part.pending.append(asyncio.ensure_future(self.producer.send_and_wait(
            self.settings.deliveries_topic, value, key=rec.key)))

    async def _dead_letter(self, rec: Any, part: _Partition, mid: str | None, code: str, reason: str,
                           kind: str | None, trace_id: str | None) -> None:
        value = self.codec.encode("deadletter", {
            "message_id": mid, "reason_code": code, "reason": redact(reason)[:500], "stage": STAGE,
            "system": self.system, "original": bytes(rec.value or b""),
            "source": {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
            "rules_version": _headers(rec).get("samex-rules-version"), "at_ms": int(time.time() * 1000),
            "kind": kind, "trace_id": trace_id})
        assert self.producer is not None
        while True:
            try:
                await self.producer.send_and_wait(self.settings.deadletter_topic, value, key=rec.key)
                break
            except KafkaError as exc:
                log.error("dead letter not written; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(1.0)
        self.metrics.dead_letters.labels(code, STAGE).inc()

    # ---- the consumer loop ---------------------------------------------------------------

    async def _drop_partitions(self) -> None:
        parts, self.parts = self.parts, {}
        for p in parts.values():
            await p.stop()
        await self._commit(parts)

    async def _commit(self, parts: dict[TopicPartition, _Partition]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for tp, p in parts.items():
            done = p.done_offset
            if p.pending:
                futs, p.pending = p.pending, []
                results = await asyncio.gather(*futs, return_exceptions=True)
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    raise SamexError(f"could not write delivery records: {type(failed[0]).__name__}")
            if done is not None and done != p.committed:
                offsets[tp] = done
        if not offsets or self.consumer is None:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit failed (rebalance); records will be seen again and skipped as duplicates",
                        extra={"error": type(exc).__name__})
            return
        for tp, off in offsets.items():
            if tp in parts:
                parts[tp].committed = off

    async def run(self, stop: asyncio.Event) -> None:
        outer = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await outer._drop_partitions()

            async def on_partitions_assigned(self, assigned: Any) -> None:
                return None

        self.producer = make_producer(self.settings.kafka_bootstrap, client_id=f"samex-out-{self.system}")
        await self.producer.start()
        self.consumer = make_consumer(self.settings.kafka_bootstrap, group_id=self.group_id,
                                      client_id=f"samex-out-{self.system}",
                                      session_timeout_ms=self.opt.session_timeout_ms, heartbeat_interval_ms=1000,
                                      max_poll_interval_ms=600000)
        self.consumer.subscribe([self.topic], listener=Listener())
        await self.consumer.start()
        stopper = asyncio.create_task(self._watch(stop))
        last_commit = time.monotonic()
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=200, max_records=2000)
                for tp, recs in batch.items():
                    p = self.parts.get(tp)
                    if p is None:
                        p = self.parts[tp] = _Partition(self, tp)
                    for r in recs:
                        p.queue.put_nowait(r)
                for tp, p in self.parts.items():
                    if p.task.done() and not p.task.cancelled() and p.task.exception() is not None:
                        exc = p.task.exception()
                        if not isinstance(exc, Stopped):
                            raise SamexError(f"delivery of {tp} failed: {exc!r}") from exc
                    size = p.queue.qsize()
                    paused = tp in self.consumer.paused()
                    if size > self.opt.high_water and not paused:
                        self.consumer.pause(tp)
                    elif size < self.opt.high_water // 2 and paused:
                        self.consumer.resume(tp)
                if time.monotonic() - last_commit > 0.2:
                    await self._commit(dict(self.parts))
                    last_commit = time.monotonic()
                    self._lag()
        finally:
            stopper.cancel()
            self._stop.set()
            with contextlib.suppress(Exception):
                await self._drop_partitions()
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            with contextlib.suppress(Exception):
                await self.producer.stop()

    async def _watch(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stop.set()

    def _lag(self) -> None:
        assert self.consumer is not None
        total = 0
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            p = self.parts.get(tp)
            done = p.done_offset if p and p.done_offset is not None else None
            if done is None:
                with contextlib.suppress(Exception):
                    done = p.committed if p else None
            if hw is not None and done is not None:
                total += max(0, hw - done)
            elif p is not None:
                total += p.queue.qsize()
        self.metrics.outbound_lag.labels(self.system).set(total)

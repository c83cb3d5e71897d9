"""mllp-in: an asyncio MLLP server that maps HL7 v2 to envelopes and writes them to Kafka.

Per frame: parse + map (:mod:`connectors.hl7v2`), produce to the inbound topic keyed by the
patient hash (acks=all, idempotent), and answer

* ``AA`` only after Kafka acknowledged the write;
* ``AE`` with a reason for a message that cannot be mapped (after a dead letter, stage mllp-in);
* ``AR`` when Kafka did not acknowledge within ``produce_timeout_s`` (or is not reachable at all),
  for an oversized frame and for a frame interrupted by a new start block: the sender retries.

A connection may pipeline frames: they are mapped and handed to the producer as they arrive and
answered strictly in order. Every connection is served independently; bad input on one never
affects the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from connectors.hl7v2 import Header, Hl7Error, build_ack, header_of, map_hl7_record, message_id_of
from connectors.mllp import DEFAULT_MAX_BYTES, Broken, FrameReader, Oversized
from router.codec import Codec, default_codec
from router.errors import MappingError, SamexError
from router.explain import mapping_code
from router.identifiers import patient_key, redact
from router.kafkaio import producer as make_producer
from router.metrics import ConnectorMetrics
from router.settings import Settings

log = logging.getLogger("samex.mllp_in")
STAGE = "mllp-in"
# every outcome counted in samex_inbound_total{outcome} (created at 0 on start)
INBOUND_OUTCOMES = ("accepted", "unmappable", "kafka_unavailable", "oversized", "garbage", "incomplete_frame",
                    "broken_frame")


@dataclass(frozen=True)
class InboundOptions:
    max_frame_bytes: int = DEFAULT_MAX_BYTES
    produce_timeout_s: float = 10.0
    default_charset: str = "utf-8"
    frame_timeout_s: float = 30.0  # an unfinished frame older than this is answered AR and dropped
    idle_timeout_s: float = 900.0  # a silent connection is closed
    pipeline_depth: int = 64
    linger_ms: int = 0  # ACK latency matters more than batch size: a sender waits for every ACK
    producers: int = 1  # parallel producers; a patient always uses the same one (3 measured no faster here)
    source: str = "mllp-in"


class Pending:
    """An answer that waits for Kafka's acknowledgement of a write (the responder awaits it in order)."""

    __slots__ = ("deadletter_code", "extra", "fut", "header", "kind", "reason", "started")

    def __init__(self, fut: asyncio.Future[Any], header: Header, extra: dict[str, Any], kind: str,
                 deadletter_code: str | None = None, reason: str = "") -> None:
        self.fut, self.header, self.extra, self.kind = fut, header, extra, kind
        self.deadletter_code, self.reason = deadletter_code, reason
        self.started = time.monotonic()


#: What the responder answers, in order: ACK bytes known at once, or a write to wait for.
Answer = bytes | Pending


class MllpInbound:
    def __init__(self, settings: Settings, metrics: ConnectorMetrics, options: InboundOptions = InboundOptions(),
                 codec: Codec | None = None) -> None:
        self.settings, self.metrics, self.opt = settings, metrics, options
        metrics.init_inbound(options.source, INBOUND_OUTCOMES)
        self.codec = codec or default_codec()
        self.producers: list[AIOKafkaProducer] = []
        self._producer_task: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self.port: int | None = None
        # labelled metric children, looked up once (labels() takes a lock and a dict lookup per call)
        self._outcomes: dict[str, Any] = {}
        self._kinds: dict[str, Any] = {}

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 2575) -> int:
        """Listen (at once, also while Kafka is down) and connect the producer in the background."""
        self._producer_task = asyncio.create_task(self._keep_producer())
        self._server = await asyncio.start_server(self._serve, host, port, limit=1 << 20, backlog=512)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("mllp-in listening", extra={"host": host, "port": self.port})
        return self.port

    @property
    def producer(self) -> AIOKafkaProducer | None:
        """The first producer once all are connected (``None`` while Kafka is unreachable)."""
        return self.producers[0] if self.producers else None

    def _producer_for(self, key: bytes | None) -> AIOKafkaProducer | None:
        if not self.producers:
            return None
        return self.producers[(key[-1] if key else 0) % len(self.producers)]

    async def _keep_producer(self) -> None:
        delay = 0.5
        while not self.producers:
            started: list[AIOKafkaProducer] = []
            try:
                for i in range(max(1, self.opt.producers)):
                    p = make_producer(self.settings.kafka_bootstrap, client_id=f"samex-mllp-in-{i}",
                                      linger_ms=self.opt.linger_ms,
                                      request_timeout_ms=int(max(self.opt.produce_timeout_s, 1) * 1000) + 5000)
                    started.append(p)
                    await asyncio.wait_for(p.start(), max(self.opt.produce_timeout_s, 5.0))
            except (KafkaError, OSError, TimeoutError) as exc:
                for p in started:
                    with contextlib.suppress(Exception):
                        await p.stop()
                log.warning("Kafka not reachable; answering AR until it is", extra={"error": type(exc).__name__})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.producers = started

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        if self._producer_task is not None:
            self._producer_task.cancel()
            with contextlib.suppress(BaseException):
                await self._producer_task
        for p in self.producers:
            with contextlib.suppress(Exception):
                await p.stop()

    # ---- connections ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        answers: asyncio.Queue[Answer | None] = asyncio.Queue(self.opt.pipeline_depth)
        responder = asyncio.create_task(self._respond(answers, writer))
        try:
            await self._read_frames(FrameReader(reader, self.opt.max_frame_bytes), answers)
            await answers.put(None)
            await responder
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # a handler ends quietly (also when the server stops)
        finally:
            if not responder.done():
                responder.cancel()
            writer.close()
            self._conns.discard(task)

    async def _read_frames(self, fr: FrameReader, answers: asyncio.Queue[Answer | None]) -> None:
        idle = 0.0
        garbage = 0
        while True:
            try:
                async with asyncio.timeout(self.opt.frame_timeout_s):  # no extra task per frame (wait_for)
                    got = await fr.read()
            except TimeoutError:
                if fr.pending:
                    fr.reset()
                    self._count("incomplete_frame")
                    await answers.put(build_ack(header_of(b""), "AR", "incomplete MLLP frame: no end "
                                                f"marker within {self.opt.frame_timeout_s:g} s"))
                    idle = 0.0
                    continue
                idle += self.opt.frame_timeout_s
                if idle >= self.opt.idle_timeout_s:
                    return
                continue
            idle = 0.0
            if fr.garbage > garbage:
                garbage = fr.garbage
                self._count("garbage")
            if got is None:
                if fr.pending:
                    self._count("incomplete_frame")
                return
            if isinstance(got, Oversized):
                self._count("oversized")
                log.warning("oversized MLLP frame skipped", extra={"bytes": got.size})
                head = header_of(got.head, self.opt.default_charset)
                await answers.put(build_ack(head, "AR", f"message of {got.size} bytes exceeds "
                                            f"the limit of {self.opt.max_frame_bytes} bytes"))
                continue
            if isinstance(got, Broken):
                self._count("broken_frame")
                await answers.put(build_ack(header_of(got.head, self.opt.default_charset), "AR",
                                            "MLLP frame interrupted by a new start block; resend"))
                continue
            await answers.put(await self.submit(got))

    async def _respond(self, answers: asyncio.Queue[Answer | None], writer: asyncio.StreamWriter) -> None:
        """Answer in order; after the peer went away keep draining (the writes still complete)."""
        gone = False
        while True:
            item = await answers.get()
            if item is None:
                return
            ack = item if isinstance(item, bytes) else await self._settle(item)
            if gone:
                continue
            writer.write(b"\x0b" + ack + b"\x1c\r")
            try:
                await writer.drain()
            except (ConnectionError, OSError):
                gone = True

    async def _settle(self, p: Pending) -> bytes:
        """The ACK of a write: AA (AE for a dead letter) once Kafka acknowledged it, AR if not in time."""
        what = "dead letter" if p.deadletter_code is not None else "write"
        try:
            if not p.fut.done():
                left = max(0.01, self.opt.produce_timeout_s - (time.monotonic() - p.started))
                async with asyncio.timeout(left):
                    await asyncio.shield(p.fut)  # a timeout must not cancel the write itself
            p.fut.result()
        except (KafkaError, TimeoutError) as exc:
            log.warning(f"{what} not acknowledged in time; answering AR",
                        extra={**p.extra, "error": type(exc).__name__})
            self._count("kafka_unavailable")
            return build_ack(p.header, "AR", f"Kafka did not acknowledge the {what} in time; retry later")
        if p.deadletter_code is not None:
            self._count("unmappable")
            self.metrics.dead_letters.labels(p.deadletter_code, STAGE).inc()
            return build_ack(p.header, "AE", p.reason)
        self._count("accepted")
        kind = self._kinds.get(p.kind)
        if kind is None:
            kind = self._kinds[p.kind] = self.metrics.messages_in.labels(self.opt.source, p.kind)
        kind.inc()
        return build_ack(p.header, "AA")

    def _count(self, outcome: str) -> None:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self.metrics.inbound.labels(self.opt.source, outcome)
        child.inc()

    # ---- one message ---------------------------------------------------------------------

    async def submit(self, data: bytes) -> Answer:
        """Map ``data`` and hand it to the producer; returns its ACK, or the write whose ACK is due."""
        received = int(time.time() * 1000)
        try:
            m = map_hl7_record(data, received_ms=received, source=self.opt.source,
                               default_charset=self.opt.default_charset)
            value = self.codec.encode("envelope", m.record)
        except (MappingError, SamexError) as exc:
            return await self._reject(data, header_of(data, self.opt.default_charset), exc, received)
        header = m.header
        key = patient_key(m.patient, self.settings.patient_key_bytes).encode()
        extra = {"message_id": m.message_id, "trace_id": m.trace_id}
        producer = self._producer_for(key)
        if producer is None:
            self._count("kafka_unavailable")
            return build_ack(header, "AR", "Kafka is not reachable; retry later")
        try:
            async with asyncio.timeout(self.opt.produce_timeout_s):
                fut = await producer.send(self.settings.inbound_topic, value, key=key)
        except (KafkaError, TimeoutError) as exc:
            log.warning("produce failed; answering AR", extra={**extra, "error": type(exc).__name__})
            self._count("kafka_unavailable")
            return build_ack(header, "AR", "Kafka did not accept the message; retry later")
        return Pending(fut, header, extra, m.kind)

    async def _reject(self, data: bytes, header: Header, exc: Exception, received: int) -> Answer:
        reason = redact(str(exc))[:300]
        code = mapping_code(reason) if isinstance(exc, Hl7Error | MappingError) else "unmappable"
        if code == "unmappable" and "MSH" in reason and "start" in reason:
            code = "undecodable"
        mid = message_id_of(data, self.opt.default_charset)
        record = {"message_id": mid, "reason_code": code, "reason": reason, "stage": STAGE, "system": None,
                  "original": bytes(data), "source": {"topic": self.opt.source, "partition": -1, "offset": -1},
                  "rules_version": None, "at_ms": received, "kind": None, "trace_id": None}
        log.info("unmappable HL7 message; answering AE", extra={"message_id": mid, "reason_code": code})
        producer = self.producer
        if producer is None:
            self._count("kafka_unavailable")
            return build_ack(header, "AR", "Kafka is not reachable; retry later")
        try:
            async with asyncio.timeout(self.opt.produce_timeout_s):
                fut = await producer.send(self.settings.deadletter_topic, self.codec.encode("deadletter", record))
        except (KafkaError, TimeoutError):
            self._count("kafka_unavailable")
            return build_ack(header, "AR", "Kafka did not accept the dead letter; retry later")
        return Pending(fut, header, {"message_id": mid}, "", deadletter_code=code, reason=reason)


async def serve(settings: Settings, metrics: ConnectorMetrics, host: str, port: int, options: InboundOptions,
                stop: asyncio.Event) -> None:
    server = MllpInbound(settings, metrics, options)
    bound = await server.start(host, port)
    print(f"mllp-in listening on {host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()

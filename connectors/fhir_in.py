"""fhir-in: an HTTP endpoint for FHIR R4 JSON (ServiceRequest, Task, Bundle) that writes envelopes
to the inbound topic and answers 201 only after Kafka acknowledged the write (acks=all).

Answers: 201 + Location (one resource), 200 + transaction-/batch-response Bundle (a Bundle),
400/415/422/413 + OperationOutcome (input samex refuses), 503 + OperationOutcome (Kafka unavailable:
the client retries; the message id is stable, so a retry never makes a second message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.fhir import (
    FHIR_JSON,
    EntryResult,
    FhirInputError,
    Problem,
    map_bundle,
    map_resource,
    operation_outcome,
    parse_json,
    validate,
)
from router.codec import Codec, default_codec
from router.envelope import Envelope
from router.errors import KafkaUnavailableError
from router.kafkaio import producer as make_producer
from router.metrics import ConnectorMetrics
from router.settings import Settings

log = logging.getLogger("samex.fhir_in")
CONNECTOR = "fhir-in"
ACCEPTED_CONTENT = ("application/fhir+json", "application/json", "application/json+fhir")


def _json(doc: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type=FHIR_JSON, headers=headers)


def outcome_response(problems: Sequence[Problem], status: int) -> web.Response:
    return _json(operation_outcome(problems), status)


class FhirInbound:
    """The request handlers; the producer is started lazily and re-created after a failure."""

    def __init__(self, settings: Settings, metrics: ConnectorMetrics, source_system: str = "millennium",
                 codec: Codec | None = None, produce_timeout_s: float = 10.0, max_body_bytes: int | None = None,
                 base_path: str = "/fhir") -> None:
        self.settings = settings
        self.metrics = metrics
        metrics.init_inbound(CONNECTOR, ("created", "invalid", "unavailable"))
        self.system = source_system
        self.codec = codec or default_codec()
        self.produce_timeout_s = produce_timeout_s
        self.max_body = max_body_bytes or settings.max_record_bytes
        self.base = base_path.rstrip("/")
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._down_until = 0.0

    # -- Kafka ---------------------------------------------------------------------------------
    async def _get_producer(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is not None:
                return self._producer
            if time.monotonic() < self._down_until:  # failed a moment ago: answer 503 at once
                raise KafkaUnavailableError("Kafka was unreachable a moment ago")
            p = make_producer(self.settings.kafka_bootstrap, client_id="samex-fhir-in",
                              request_timeout_ms=int(self.produce_timeout_s * 1000))
            try:
                await asyncio.wait_for(p.start(), self.produce_timeout_s)
            except Exception as exc:
                self._down_until = time.monotonic() + 1.0
                with contextlib.suppress(Exception):
                    await p.stop()
                raise KafkaUnavailableError(f"cannot connect to Kafka: {type(exc).__name__}") from exc
            self._producer = p
            return p

    async def _drop_producer(self) -> None:
        async with self._lock:
            p, self._producer = self._producer, None
        if p is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.stop(), 5)

    async def produce(self, envelopes: Sequence[Envelope]) -> None:
        """Write envelopes to the inbound topic; return only when every write is acknowledged."""
        p = await self._get_producer()
        key = self.settings.patient_key_bytes
        try:
            futs = []
            for env in envelopes:
                value = self.codec.encode("envelope", env.to_record())
                headers = [("samex-message-id", env.message_id.encode())]
                futs.append(await asyncio.wait_for(
                    p.send(self.settings.inbound_topic, value, key=env.key(key), headers=headers),
                    self.produce_timeout_s))
            await asyncio.wait_for(asyncio.gather(*futs), self.produce_timeout_s)
        except Exception as exc:
            await self._drop_producer()
            raise KafkaUnavailableError(f"Kafka did not acknowledge the write: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self._drop_producer()

    # -- HTTP ----------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body + 1024)
        b = self.base
        app.router.add_post(f"{b}/ServiceRequest", self.post_resource)
        app.router.add_post(f"{b}/Task", self.post_resource)
        app.router.add_post(f"{b}/", self.post_bundle)
        app.router.add_post(b or "/", self.post_bundle)
        app.router.add_get(f"{b}/metadata", self.metadata)
        if b:
            app.router.add_get("/metadata", self.metadata)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_route("*", f"{b}/{{tail:.*}}", self.not_supported)
        app.on_cleanup.append(lambda _app: self.close())
        return app

    def _count(self, outcome: str) -> None:
        self.metrics.inbound.labels(CONNECTOR, outcome).inc()

    async def _read(self, request: web.Request) -> dict[str, Any]:
        ctype = request.content_type
        if ctype not in ACCEPTED_CONTENT:
            raise FhirInputError([Problem("not-supported", f"Content-Type {ctype!r} is not accepted; send "
                                          f"{FHIR_JSON}")], 415)
        if request.content_length is not None and request.content_length > self.max_body:
            raise FhirInputError([Problem("too-costly", f"body larger than {self.max_body} bytes")], 413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise FhirInputError([Problem("too-costly", f"body larger than {self.max_body} bytes")], 413) from None
        return {"raw": body, "doc": parse_json(body)}

    def _refuse(self, exc: FhirInputError) -> web.Response:
        self._count("invalid")
        # Refused at the edge: no dead letter (nothing was accepted), the client has the reason.
        log.info("refused FHIR input", extra={"status": exc.status, "reason": str(exc)[:300]})
        return outcome_response(exc.problems, exc.status)

    def _unavailable(self, exc: KafkaUnavailableError) -> web.Response:
        self._count("unavailable")
        log.warning("Kafka unavailable, answered 503", extra={"reason": str(exc)})
        return outcome_response([Problem("transient", "the message store is unavailable; retry later")], 503)

    async def post_resource(self, request: web.Request) -> web.Response:
        rtype = request.path.rsplit("/", 1)[-1]
        trace_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        try:
            got = await self._read(request)
            doc = got["doc"]
            if doc["resourceType"] != rtype:
                raise FhirInputError([Problem("invalid", f"resourceType {doc['resourceType']!r} posted to "
                                              f"{rtype} endpoint", "resourceType")], 400)
            validate(doc)
            env = map_resource(doc, got["raw"], self.system, received_ms=int(time.time() * 1000), trace_id=trace_id)
            await self.produce([env])
        except FhirInputError as exc:
            return self._refuse(exc)
        except KafkaUnavailableError as exc:
            return self._unavailable(exc)
        self._accepted(env)
        loc = f"{self.base}/{rtype}/{env.message_id}/_history/1"
        return _json(operation_outcome([Problem("informational", f"accepted as samex message {env.message_id}",
                                                severity="information")]), 201,
                     {"Location": loc, "ETag": 'W/"1"', "X-Samex-Message-Id": env.message_id})

    def _accepted(self, env: Envelope) -> None:
        self._count("created")
        self.metrics.messages_in.labels(f"{CONNECTOR}:{self.system}", env.kind).inc()
        log.info("accepted", extra={"message_id": env.message_id, "trace_id": env.trace_id, "kind": env.kind})

    async def post_bundle(self, request: web.Request) -> web.Response:
        trace_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        try:
            got = await self._read(request)
            doc = got["doc"]
            if doc["resourceType"] != "Bundle":
                raise FhirInputError([Problem("invalid", "only a Bundle may be posted to the base URL",
                                              "resourceType")], 400)
            validate(doc)
            results = map_bundle(doc, self.system, int(time.time() * 1000), trace_id)
            btype = doc["type"]
            failed = [r for r in results if r.error is not None]
            if failed and btype != "batch":  # transaction and collection: all or nothing
                problems = [p for r in failed for p in r.error.problems]  # type: ignore[union-attr]
                raise FhirInputError(problems, max(r.error.status for r in failed))  # type: ignore[union-attr]
            good = [r.envelope for r in results if r.envelope is not None]
            if good:
                await self.produce(good)
        except FhirInputError as exc:
            return self._refuse(exc)
        except KafkaUnavailableError as exc:
            return self._unavailable(exc)
        for env in good:
            self._accepted(env)
        for _ in failed:
            self._count("invalid")
        return _json(self._response_bundle(btype, results), 200)

    def _response_bundle(self, btype: str, results: list[EntryResult]) -> dict[str, Any]:
        entries = []
        for r in results:
            if r.envelope is not None:
                resp: dict[str, Any] = {"status": "201 Created",
                                        "location": f"{self.base}/{r.resource_type}/{r.envelope.message_id}"
                                                    "/_history/1", "etag": 'W/"1"'}
            else:
                assert r.error is not None
                resp = {"status": f"{r.error.status}", "outcome": operation_outcome(r.error.problems)}
            entries.append({"response": resp})
        rtype = "batch-response" if btype == "batch" else "transaction-response"
        return {"resourceType": "Bundle", "type": rtype, "entry": entries}

    async def not_supported(self, request: web.Request) -> web.Response:
        self._count("invalid")
        return outcome_response([Problem("not-supported", f"{request.method} {request.path} is not supported; "
                                         "POST ServiceRequest, Task or a Bundle")], 404)

    async def metadata(self, request: web.Request) -> web.Response:
        return _json(capability_statement(), 200)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "kafka_connected": self._producer is not None})


def capability_statement() -> dict[str, Any]:
    def res(t: str) -> dict[str, Any]:
        return {"type": t, "interaction": [{"code": "create"}]}

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": {"name": "samex fhir-in"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "resource": [res("ServiceRequest"), res("Task")],
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    }


async def serve(settings: Settings, metrics: ConnectorMetrics, host: str, port: int, source_system: str,
                stop: asyncio.Event) -> None:
    """Run fhir-in until ``stop`` is set."""
    inbound = FhirInbound(settings, metrics, source_system)
    runner = web.AppRunner(inbound.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("fhir-in listening", extra={"host": host, "port": port})
    with contextlib.suppress(KafkaUnavailableError):
        await inbound._get_producer()  # connect early when Kafka is there; otherwise on the first request
    try:
        await stop.wait()
    finally:
        await runner.cleanup()

"""FHIR connectors on a real broker: fhir-in (201 only after the write, 4xx, 503) and fhir-out
against the Millennium FHIR simulator (exactly once across a SIGKILL, 503 retries, 4xx dead letter)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry

from connectors.fhir import map_resource
from connectors.fhir_dedup import DeliveredStore
from connectors.fhir_in import FhirInbound
from connectors.fhir_out import Backoff, FhirOutbound
from connectors.sim_fhir import SimFhir, start
from router.codec import default_codec
from router.envelope import Envelope
from router.metrics import ConnectorMetrics
from router.settings import Settings
from router.synth import test_personnummer
from router.topics import ensure_topics
from tests.kafka_helpers import REPO, free_port, produce_raw, read_topic, settings_env, topic_settings
from tests.test_fhir import bundle, service_request, task

SYSTEM = "millennium"
MID_SYSTEM = "urn:samex:message-id"


async def make_settings(bootstrap: str, prefix: str) -> Settings:
    s = topic_settings(bootstrap, prefix)
    await ensure_topics(bootstrap, [s.inbound_topic, s.deliveries_topic, s.deadletter_topic, s.out_topic(SYSTEM)],
                        partitions=3)
    return s


async def serve_inbound(inbound: FhirInbound) -> tuple[Any, str]:
    from aiohttp import web

    runner = web.AppRunner(inbound.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def post(url: str, body: bytes, ctype: str = "application/fhir+json") -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers={"Content-Type": ctype}) as r:
        return r.status, dict(r.headers), orjson.loads(await r.read())


def pnrs(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [test_personnummer(rng) for _ in range(n)]


# -- fhir-in ------------------------------------------------------------------------------------
@pytest.mark.kafka
async def test_fhir_in_answers_201_only_after_the_write(kafka_bootstrap: str, topic_prefix: str) -> None:
    s = await make_settings(kafka_bootstrap, topic_prefix)
    metrics = ConnectorMetrics(CollectorRegistry())
    runner, base = await serve_inbound(FhirInbound(s, metrics))
    codec = default_codec()
    try:
        pnr = pnrs(1)[0]
        sr = service_request(pnr, rid="in-1")
        status, headers, body = await post(f"{base}/fhir/ServiceRequest", orjson.dumps(sr))
        assert status == 201, body
        mid = headers["X-Samex-Message-Id"]
        assert headers["Location"] == f"/fhir/ServiceRequest/{mid}/_history/1"
        # the 201 came after acks=all: a fresh read_committed reader sees the record right away
        recs = await read_topic(kafka_bootstrap, s.inbound_topic, expect=1, timeout_s=10, idle_s=0.5)
        assert len(recs) == 1
        _, env = codec.decode(recs[0].value)
        assert env["message_id"] == mid and env["kind"] == "lab_order"
        assert recs[0].key == Envelope.from_record(env).key(s.patient_key_bytes)
        assert pnr.encode() not in recs[0].key
        # a client retry of the same resource keeps its message id
        status, headers2, _ = await post(f"{base}/fhir/ServiceRequest", orjson.dumps(sr))
        assert status == 201 and headers2["X-Samex-Message-Id"] == mid
        # a transaction Bundle: one envelope per ServiceRequest/Task, answered with a transaction-response
        b = bundle("transaction", pnr, service_request(pnr, rid="in-2"), task(pnr, "accepted", "t-2"))
        status, _, body = await post(f"{base}/fhir/", orjson.dumps(b))
        assert status == 200 and body["type"] == "transaction-response"
        assert [e["response"]["status"] for e in body["entry"]] == ["201 Created", "201 Created"]
        recs = await read_topic(kafka_bootstrap, s.inbound_topic, expect=4, timeout_s=10, idle_s=0.5)
        kinds = Counter(codec.decode(r.value)[1]["kind"] for r in recs)
        assert kinds == {"lab_order": 3, "remiss": 1}
        status, _, _ = await post(f"{base}/fhir/ServiceRequest", b"{}")  # sanity: still serving
        assert status == 400
        async with aiohttp.ClientSession() as http, http.get(f"{base}/fhir/metadata") as r:
            assert (await r.json(content_type=None))["resourceType"] == "CapabilityStatement"
        assert metrics.registry.get_sample_value("samex_inbound_total",
                                                 {"connector": "fhir-in", "outcome": "created"}) == 4
    finally:
        await runner.cleanup()


@pytest.mark.kafka
async def test_fhir_in_refuses_invalid_input_with_operation_outcome(kafka_bootstrap: str, topic_prefix: str) -> None:
    s = await make_settings(kafka_bootstrap, topic_prefix)
    metrics = ConnectorMetrics(CollectorRegistry())
    runner, base = await serve_inbound(FhirInbound(s, metrics))
    try:
        pnr = pnrs(1, seed=8)[0]
        cases = [
            (f"{base}/fhir/ServiceRequest", b"\x00\xffgarbage", 400),
            (f"{base}/fhir/ServiceRequest", orjson.dumps(service_request(pnr, note=pnr)), 400),  # not FHIR
            (f"{base}/fhir/ServiceRequest", orjson.dumps(service_request(pnr, category="1")), 422),
            (f"{base}/fhir/Task", orjson.dumps(service_request(pnr)), 400),  # wrong endpoint
            (f"{base}/fhir/ServiceRequest", orjson.dumps(service_request(pnr[:-1] + "x")), 422),
            (f"{base}/fhir/", orjson.dumps(bundle("transaction", pnr, service_request(pnr, category="1"))), 422),
        ]
        for url, body, want in cases:
            status, _, doc = await post(url, body)
            assert status == want, (url, doc)
            assert doc["resourceType"] == "OperationOutcome" and doc["issue"][0]["severity"] == "error"
            assert pnr not in orjson.dumps(doc).decode()
        status, _, doc = await post(f"{base}/fhir/ServiceRequest", b"<xml/>", "application/xml")
        assert status == 415 and doc["resourceType"] == "OperationOutcome"
        # nothing was written; the refusals are counted
        assert await read_topic(kafka_bootstrap, s.inbound_topic, timeout_s=3, idle_s=1) == []
        assert metrics.registry.get_sample_value("samex_inbound_total",
                                                 {"connector": "fhir-in", "outcome": "invalid"}) == len(cases) + 1
    finally:
        await runner.cleanup()


async def test_fhir_in_answers_503_when_kafka_is_unavailable() -> None:
    s = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", inbound_topic="never.written")
    runner, base = await serve_inbound(FhirInbound(s, ConnectorMetrics(CollectorRegistry()), produce_timeout_s=2,
                                                   max_body_bytes=4096))
    try:
        status, _, doc = await post(f"{base}/fhir/ServiceRequest", b" " * 5000 + b"{}")
        assert status == 413 and doc["resourceType"] == "OperationOutcome"
        status, _, doc = await post(f"{base}/fhir/Patient", b"{}")
        assert status == 404 and doc["issue"][0]["code"] == "not-supported"
        t0 = time.monotonic()
        status, headers, doc = await post(f"{base}/fhir/ServiceRequest", orjson.dumps(service_request(pnrs(1)[0])))
        assert status == 503 and "Location" not in headers
        assert doc["issue"][0]["code"] == "transient"
        assert time.monotonic() - t0 < 10
    finally:
        await runner.cleanup()


# -- fhir-out -----------------------------------------------------------------------------------
def out_items(s: Settings, patients: list[str],
              per_patient: int = 1) -> tuple[list[tuple[bytes | None, bytes]], list[str]]:
    codec = default_codec()
    items: list[tuple[bytes | None, bytes]] = []
    mids = []
    for i in range(per_patient):
        for j, pnr in enumerate(patients):
            sr = service_request(pnr, rid=f"o-{j}-{i}")
            env = map_resource(sr, orjson.dumps(sr), SYSTEM)
            items.append((env.key(s.patient_key_bytes), codec.encode("envelope", env.to_record())))
            mids.append(env.message_id)
    return items, mids


async def produce_out(s: Settings, items: list[tuple[bytes | None, bytes]],
                      headers: list[tuple[str, bytes]] | None = None) -> None:
    if not headers:
        await produce_raw(s.kafka_bootstrap, s.out_topic(SYSTEM), items)
        return
    from router.kafkaio import producer

    p = producer(s.kafka_bootstrap)
    await p.start()
    try:
        futs = [await p.send(s.out_topic(SYSTEM), v, key=k, headers=headers) for k, v in items]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


def delivered_ids(sim: SimFhir, types: tuple[str, ...] = ("ServiceRequest",)) -> list[str]:
    """samex message ids of the resources stored at the simulator, in arrival order per type."""
    out = []
    for t in types:
        for res in sim.resources(t):
            out.extend(i["value"] for i in res.get("identifier", []) if i.get("system") == MID_SYSTEM)
    return out


async def until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def run_out(s: Settings, base: str, store: DeliveredStore, group: str, metrics: ConnectorMetrics,
                  done: Callable[[], bool], timeout_s: float = 60) -> None:
    out = FhirOutbound(s, SYSTEM, base, metrics, store, group_id=group, timeout_s=2,
                       backoff=Backoff(base_s=0.05, cap_s=0.4))
    stop = asyncio.Event()
    task_ = asyncio.create_task(out.run(stop))
    try:
        await until(lambda: done() or task_.done(), timeout_s, "deliveries")
        await asyncio.sleep(0.3)  # let a commit land
    finally:
        stop.set()
        await asyncio.wait_for(task_, 20)


async def deliveries(s: Settings, expect: int) -> list[dict[str, Any]]:
    codec = default_codec()
    recs = await read_topic(s.kafka_bootstrap, s.deliveries_topic, expect=expect, timeout_s=15, idle_s=1)
    return [codec.decode(r.value)[1] for r in recs]


class OutProcess:
    def __init__(self, s: Settings, base: str, state_dir: Path, group: str) -> None:
        self.args = [sys.executable, "-m", "connectors.fhir_cli", "fhir-out", "--system", SYSTEM, "--base", base,
                     "--group", group, "--state-dir", str(state_dir), "--timeout", "2"]
        self.env = settings_env(s)
        self.log = state_dir / "fhir-out.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    async def wait(self, timeout_s: float = 20) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        return int(self.proc.returncode)


@pytest.mark.kafka
async def test_fhir_out_delivers_exactly_once_across_a_sigkill(kafka_bootstrap: str, topic_prefix: str,
                                                              tmp_path: Path) -> None:
    s = await make_settings(kafka_bootstrap, topic_prefix)
    sim = SimFhir()
    sim.set_fault(delay_s=0.02)  # slow enough that the kill lands mid-stream
    runner, port = await start(sim)
    n = 120
    items, mids = out_items(s, pnrs(40, seed=11), per_patient=3)
    assert len(set(mids)) == n
    await produce_out(s, items)
    proc = OutProcess(s, f"http://127.0.0.1:{port}", tmp_path, f"{topic_prefix}out-{SYSTEM}")
    try:
        proc.start()
        await until(lambda: len(sim.resources("ServiceRequest")) >= n // 3, 60, "first deliveries")
        proc.signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
        killed_at = len(sim.resources("ServiceRequest"))
        assert killed_at < n, "the kill came too late to test anything"
        proc.start()
        await until(lambda: len(sim.resources("ServiceRequest")) >= n, 90, "all deliveries")
        await asyncio.sleep(1.0)  # anything redelivered late would show up now
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0, proc.log.read_text()[-2000:]
    finally:
        proc.signal(signal.SIGKILL)
        await runner.cleanup()
    got = delivered_ids(sim)
    print("posts by status", Counter(r.status for r in sim.received), "killed after", killed_at)
    assert sorted(got) == sorted(mids), "every message exactly once at the simulator"
    # per-patient order: each patient's three orders arrived in the order they were produced
    order = {mid: i for i, mid in enumerate(mids)}
    stored = delivered_ids(sim)  # insertion order = arrival order of the first creation
    by_patient: dict[int, list[int]] = {}
    for mid in stored:
        by_patient.setdefault(order[mid] % 40, []).append(order[mid])
    assert all(v == sorted(v) for v in by_patient.values())
    recs = await deliveries(s, n)
    acked = {r["message_id"] for r in recs if r["outcome"] == "acknowledged"}
    assert acked == set(mids)
    assert {r["outcome"] for r in recs} <= {"acknowledged", "skipped_duplicate"}


@pytest.mark.kafka
async def test_fhir_out_dedup_layers_and_replay_redeliver(kafka_bootstrap: str, topic_prefix: str,
                                                          tmp_path: Path) -> None:
    s = await make_settings(kafka_bootstrap, topic_prefix)
    sim = SimFhir()
    runner, port = await start(sim)
    base = f"http://127.0.0.1:{port}"
    items, mids = out_items(s, pnrs(5, seed=21))
    await produce_out(s, items)
    metrics = ConnectorMetrics(CollectorRegistry())
    store = DeliveredStore(tmp_path / "a.sqlite")
    try:
        await run_out(s, base, store, f"{topic_prefix}g1", metrics, lambda: store.count() >= 5)
        assert sorted(delivered_ids(sim)) == sorted(mids)
        # 1) local store: a new group re-reads everything; nothing is posted again
        posts = len(sim.received)
        await run_out(s, base, store, f"{topic_prefix}g2", metrics,
                      lambda: metrics.deliveries.labels(SYSTEM, "skipped_duplicate")._value.get() >= 5)
        assert len(sim.received) == posts
        # 2) server side: a lost store (new file) and a new group: If-None-Exist answers 200, no duplicate
        fresh = DeliveredStore(tmp_path / "b.sqlite")
        await run_out(s, base, fresh, f"{topic_prefix}g3", metrics, lambda: fresh.count() >= 5)
        assert [r.status for r in sim.received[posts:]] == [200] * 5
        assert sorted(delivered_ids(sim)) == sorted(mids)
        # 3) a replay with samex-replay-redeliver: 1 is delivered again on purpose
        await produce_out(s, items[:1], headers=[("samex-replay-redeliver", b"1"), ("samex-replay-id", b"r-1")])
        before = len(sim.received)
        await run_out(s, base, store, f"{topic_prefix}g1", metrics, lambda: len(sim.received) > before)
        assert sim.received[-1].status == 201 and sim.received[-1].if_none_exist is None
        assert Counter(delivered_ids(sim))[mids[0]] == 2
        # 4) lost store again, new group: the doubled one matches twice (412 = already there), the others
        # once (200); the replay record, read again, creates again on purpose (201)
        lost = DeliveredStore(tmp_path / "d.sqlite")
        before = len(sim.received)
        await run_out(s, base, lost, f"{topic_prefix}g4", metrics, lambda: len(sim.received) >= before + 6)
        assert [r.status for r in sim.received[before:] if r.identifiers[-1].endswith(mids[0])] == [412, 201]
        assert Counter(r.status for r in sim.received[before:]) == {200: 4, 412: 1, 201: 1}
        assert lost.outcome(mids[0]) == "acknowledged" and len(delivered_ids(sim)) == 7
        recs = await deliveries(s, 22)
        assert [r["replay_id"] for r in recs if r["replay_id"]] == ["r-1", "r-1"]
        assert Counter(r["outcome"] for r in recs) == {"acknowledged": 17, "skipped_duplicate": 5}
    finally:
        await runner.cleanup()


@pytest.mark.kafka
async def test_fhir_out_retries_503_then_dead_letters_a_4xx(kafka_bootstrap: str, topic_prefix: str,
                                                            tmp_path: Path) -> None:
    s = await make_settings(kafka_bootstrap, topic_prefix)
    sim = SimFhir()
    runner, port = await start(sim)
    pnr = pnrs(1, seed=31)[0]
    items, mids = out_items(s, [pnr], per_patient=3)  # one patient: one partition, strict order
    await produce_out(s, items[:1])
    metrics = ConnectorMetrics(CollectorRegistry())
    store = DeliveredStore(tmp_path / "c.sqlite")
    codec = default_codec()
    try:
        sim.set_fault(503, count=3)
        await run_out(s, f"http://127.0.0.1:{port}", store, f"{topic_prefix}g", metrics, lambda: store.count() >= 1)
        assert [r.status for r in sim.received] == [503, 503, 503, 201]
        assert metrics.registry.get_sample_value("samex_delivery_refusals_total",
                                                 {"system": SYSTEM, "reason": "http_503"}) == 3
        sim.set_fault(422, count=1, detail=f"invalid subject {pnr}")
        await produce_out(s, items[1:])
        await run_out(s, f"http://127.0.0.1:{port}", store, f"{topic_prefix}g", metrics, lambda: store.count() >= 3)
        assert [r.status for r in sim.received[4:]] == [422, 201]
    finally:
        await runner.cleanup()
    assert store.outcome(mids[0]) == "acknowledged"
    assert store.outcome(mids[1]) == "rejected"
    assert store.outcome(mids[2]) == "acknowledged"
    assert sorted(delivered_ids(sim)) == sorted([mids[0], mids[2]])
    recs = await deliveries(s, 3)
    by_mid = {r["message_id"]: r for r in recs}
    assert by_mid[mids[0]]["outcome"] == "acknowledged" and by_mid[mids[0]]["attempts"] == 4
    assert by_mid[mids[1]]["outcome"] == "rejected" and by_mid[mids[1]]["ack_code"] == "422"
    dead = await read_topic(kafka_bootstrap, s.deadletter_topic, expect=1, timeout_s=10, idle_s=1)
    assert len(dead) == 1
    _, dl = codec.decode(dead[0].value)
    assert (dl["message_id"], dl["stage"], dl["reason_code"], dl["system"]) == (
        mids[1], "fhir-out", "rejected_by_destination", SYSTEM)
    assert "HTTP 422" in dl["reason"] and pnr not in dl["reason"] and "<pnr>" in dl["reason"]
    assert dl["original"] == items[1][1]
    assert metrics.registry.get_sample_value("samex_dead_letters_total",
                                             {"reason": "rejected_by_destination", "stage": "fhir-out"}) == 1


@pytest.mark.kafka
async def test_fhir_end_to_end_through_the_router(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """Simulated FHIR senders -> fhir-in -> router worker -> samex.out.millennium -> fhir-out -> simulator:
    every message the router sent to millennium arrives there exactly once."""
    from connectors.sim_fhir import send_resources, synthetic_resources
    from router.rules.engine import Engine
    from router.rules.load import load_rules
    from router.synth import load_units
    from router.topics import ensure_router_topics
    from tests.kafka_helpers import WorkerProcess, header

    s = topic_settings(kafka_bootstrap, topic_prefix)
    engine = Engine(load_rules(REPO / "rules"))
    await ensure_router_topics(s, engine.systems, engine.golive_ms)
    worker = WorkerProcess(s).start()
    sim = SimFhir()
    sim_runner, sim_port = await start(sim)
    in_runner, in_base = await serve_inbound(FhirInbound(s, ConnectorMetrics(CollectorRegistry())))
    metrics = ConnectorMetrics(CollectorRegistry())
    out = FhirOutbound(s, SYSTEM, f"http://127.0.0.1:{sim_port}", metrics, DeliveredStore(tmp_path / "e.sqlite"),
                       group_id=f"{topic_prefix}out", backoff=Backoff(base_s=0.05, cap_s=0.5))
    stop = asyncio.Event()
    out_task = asyncio.create_task(out.run(stop))
    try:
        await asyncio.to_thread(worker.wait_ready)
        rng = random.Random(12)
        answers = await send_resources(f"{in_base}/fhir", synthetic_resources(rng, load_units(), pnrs(30, seed=12)),
                                       count=80, rate=400)
        assert answers == {201: 80}
        routed = await read_topic(kafka_bootstrap, s.out_topic(SYSTEM), timeout_s=60, idle_s=3)
        want = {header(r, "samex-message-id") for r in routed}
        assert len(want) >= 10, "the example rules send a good share of FHIR traffic to millennium"
        await until(lambda: len(delivered_ids(sim, ("ServiceRequest", "Task"))) >= len(want), 60,
                    "deliveries to the simulator")
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.wait_for(out_task, 20)
        worker.stop()
        await in_runner.cleanup()
        await sim_runner.cleanup()
    assert sorted(delivered_ids(sim, ("ServiceRequest", "Task"))) == sorted(want)

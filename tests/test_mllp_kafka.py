"""mllp-in and mllp-out on the real broker, with simulated MLLP systems."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from connectors import hl7gen
from connectors.dedup import DedupStore
from connectors.hl7v2 import map_hl7, parse_ack
from connectors.mllp import FrameReader, MllpClient, frame
from connectors.mllp_in import InboundOptions, MllpInbound
from connectors.mllp_out import UNANSWERED, Backoff, MllpOutbound, OutboundOptions
from connectors.sim_mllp import SimMllp, send_traffic
from router.codec import default_codec
from router.metrics import ConnectorMetrics
from router.settings import DEV_PATIENT_KEY
from router.synth import load_units
from router.topics import ensure_topics
from tests.kafka_helpers import read_topic, topic_settings

pytestmark = pytest.mark.kafka
codec = default_codec()
SYSTEM = "melior"


def gen_messages(n: int, seed: int = 1, patients: int = 30) -> list[hl7gen.GenMessage]:
    g = hl7gen.traffic(random.Random(seed), load_units(), patients=patients, prefix=f"K{seed}-")
    return [next(g) for _ in range(n)]


def sample(metrics: ConnectorMetrics, counter: str, **labels: str) -> float:
    c = getattr(metrics, counter)
    total = 0.0
    for s in c.collect()[0].samples:
        if s.name.endswith(("_total", "_count")) and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


@pytest.fixture
async def inbound(kafka_bootstrap: str, topic_prefix: str):  # type: ignore[no-untyped-def]
    s = topic_settings(kafka_bootstrap, topic_prefix)
    await ensure_topics(kafka_bootstrap, [s.inbound_topic, s.deadletter_topic], partitions=3)
    metrics = ConnectorMetrics(CollectorRegistry())
    server = MllpInbound(s, metrics, InboundOptions(max_frame_bytes=20_000, produce_timeout_s=15))
    port = await server.start("127.0.0.1", 0)
    for _ in range(100):
        if server.producer is not None:
            break
        await asyncio.sleep(0.1)
    yield s, server, metrics, port
    await server.stop()


async def ask(port: int, *datas: bytes) -> list:  # type: ignore[type-arg]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    fr = FrameReader(r)
    w.write(b"".join(frame(d) for d in datas))
    await w.drain()
    acks = [parse_ack(await asyncio.wait_for(fr.read(), 30)) for _ in datas]  # type: ignore[arg-type]
    w.close()
    return acks


async def test_mllp_in_acks_aa_after_the_write_and_keys_by_patient_hash(inbound, kafka_bootstrap) -> None:  # type: ignore[no-untyped-def]
    s, _server, metrics, port = inbound
    msgs = gen_messages(6)
    acks = await ask(port, *(m.data for m in msgs))
    assert [(a.code, a.control_id) for a in acks] == [("AA", m.msh10) for m in msgs]
    # AA was answered only after Kafka acknowledged: every record is already readable
    recs = await read_topic(kafka_bootstrap, s.inbound_topic, expect=6, timeout_s=10, idle_s=0.5)
    envs = {codec.decode_as("envelope", r.value)["message_id"]: r for r in recs}
    for m in msgs:
        env = map_hl7(m.data)
        r = envs[env.message_id]
        assert r.key == env.key(DEV_PATIENT_KEY.encode()) and m.patient.encode() not in r.key
        decoded = codec.decode_as("envelope", r.value)
        assert decoded["payload"]["data"] == m.data and decoded["source"] == "mllp-in"
    # a retransmission after a lost ACK maps to the same message id
    again = await ask(port, msgs[0].data)
    assert again[0].code == "AA"
    recs = await read_topic(kafka_bootstrap, s.inbound_topic, expect=7, timeout_s=10, idle_s=0.5)
    ids = Counter(codec.decode_as("envelope", r.value)["message_id"] for r in recs)
    assert ids[map_hl7(msgs[0].data).message_id] == 2 and len(ids) == 6
    assert sample(metrics, "inbound", outcome="accepted") == 7


async def test_mllp_in_answers_ae_and_dead_letters_unmappable_input(inbound, kafka_bootstrap) -> None:  # type: ignore[no-untyped-def]
    s, _server, metrics, port = inbound
    good = gen_messages(1, seed=2)[0]
    pnr = good.patient
    no_pid = good.data.replace(b"PID|", b"ZZZ|")
    bad_pnr = good.data.replace(pnr.encode(), (pnr[:-1] + str((int(pnr[-1]) + 1) % 10)).encode())
    adt = good.data.replace(good.data.split(b"|")[8], b"ADT^A01", 1)
    acks = await ask(port, no_pid, bad_pnr, adt, b"garbage without MSH", good.data)
    assert [a.code for a in acks] == ["AE", "AE", "AE", "AE", "AA"]
    assert "PID" in acks[0].text and "Luhn" in acks[1].text and "unsupported message type" in acks[2].text
    assert all(pnr not in a.text for a in acks)
    dls = [codec.decode_as("deadletter", r.value) for r in
           await read_topic(kafka_bootstrap, s.deadletter_topic, expect=4, timeout_s=10, idle_s=0.5)]
    assert len(dls) == 4 and {d["stage"] for d in dls} == {"mllp-in"}
    assert {d["reason_code"] for d in dls} == {"invalid_patient", "unsupported_type", "undecodable"}
    assert all(pnr not in d["reason"] for d in dls)
    first = next(d for d in dls if d["original"] == no_pid)
    assert first["message_id"] == map_hl7(good.data).message_id  # stable id even for a broken message
    assert sample(metrics, "inbound", outcome="unmappable") == 4
    assert sample(metrics, "dead_letters", stage="mllp-in") == 4


async def test_mllp_in_oversized_frame_is_ar_and_the_connection_stays_usable(inbound) -> None:  # type: ignore[no-untyped-def]
    _s, _server, _metrics, port = inbound
    m = gen_messages(1, seed=3)[0]
    huge = m.data + b"OBX|1|TX|X||" + b"y" * 50_000 + b"\r"
    acks = await ask(port, huge, m.data)
    assert (acks[0].code, acks[0].control_id) == ("AR", m.msh10) and "exceeds" in acks[0].text
    assert (acks[1].code, acks[1].control_id) == ("AA", m.msh10)


async def test_mllp_in_serves_many_concurrent_connections(inbound, kafka_bootstrap) -> None:  # type: ignore[no-untyped-def]
    s, _server, _metrics, port = inbound
    msgs = gen_messages(600, seed=4, patients=200)
    stats = await send_traffic("127.0.0.1", port, msgs, connections=30)
    assert stats.answers == {"AA": 600}
    recs = await read_topic(kafka_bootstrap, s.inbound_topic, expect=600, timeout_s=20, idle_s=0.5)
    assert {codec.decode_as("envelope", r.value)["message_id"] for r in recs} == {
        map_hl7(m.data).message_id for m in msgs}


# ---- mllp-out ------------------------------------------------------------------------------


async def produce_out(s, msgs: list[hl7gen.GenMessage], extra_headers=None) -> list[str]:  # type: ignore[no-untyped-def]
    from router.kafkaio import producer

    p = producer(s.kafka_bootstrap)
    await p.start()
    ids = []
    try:
        for m in msgs:
            env = map_hl7(m.data)
            headers = [("samex-message-id", env.message_id.encode()), ("samex-rules-version", b"test")]
            headers += list(extra_headers or [])
            await p.send_and_wait(s.out_topic(SYSTEM), codec.encode("envelope", env.to_record()),
                                  key=env.key(DEV_PATIENT_KEY.encode()), headers=headers)
            ids.append(env.message_id)
    finally:
        await p.stop()
    return ids


class Out:
    """An in-process mllp-out that runs until ``done`` holds."""

    def __init__(self, s, sim: SimMllp, store_dir: Path, group: str | None = None, **opt) -> None:  # type: ignore[no-untyped-def]
        self.metrics = ConnectorMetrics(CollectorRegistry())
        self.store = DedupStore.for_system(store_dir, SYSTEM)
        self.out = MllpOutbound(s, SYSTEM, self.metrics, self.store,
                                OutboundOptions(port=sim.port or 0, ack_timeout_s=opt.pop("ack_timeout_s", 2.0),
                                                backoff=Backoff(0.05, 0.5), group_id=group, **opt))
        self.stop = asyncio.Event()

    async def run_until(self, done, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(self.out.run(self.stop))
        try:
            for _ in range(int(timeout_s * 10)):
                if done() or task.done():
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # let the last commit happen
        finally:
            self.stop.set()
            await task
            self.store.close()


async def deliveries(s, expect: int) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    return [codec.decode_as("delivery", r.value)
            for r in await read_topic(s.kafka_bootstrap, s.deliveries_topic, expect=expect, timeout_s=15, idle_s=0.5)]


@pytest.fixture
async def out_env(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    s = topic_settings(kafka_bootstrap, topic_prefix)
    await ensure_topics(kafka_bootstrap, [s.out_topic(SYSTEM), s.deliveries_topic, s.deadletter_topic], partitions=3)
    sim = SimMllp(SYSTEM)
    await sim.start()
    yield s, sim, tmp_path
    await sim.stop()


async def test_mllp_out_delivers_once_and_dedups_across_a_restart(out_env) -> None:  # type: ignore[no-untyped-def]
    s, sim, tmp = out_env
    msgs = gen_messages(40, seed=5, patients=8)
    ids = await produce_out(s, msgs)
    one = Out(s, sim, tmp)
    await one.run_until(lambda: len(sim.accepted()) >= 40)
    assert sorted(r["message_id"] for r in sim.received) == sorted(ids)
    # per-patient order at the destination = the order on the topic
    by_patient: dict[str, list[str]] = {}
    for m, mid in zip(msgs, ids, strict=True):
        by_patient.setdefault(m.patient, []).append(mid)
    got: dict[str, list[str]] = {}
    for r in sim.received:
        got.setdefault(r["patient_key"], []).append(r["message_id"])
    assert sorted(got.values()) == sorted(by_patient.values())
    # restart with a new consumer group (everything is consumed again) and the same store:
    # nothing is sent twice; a redelivery is reported as skipped_duplicate
    await produce_out(s, msgs[:5])
    two = Out(s, sim, tmp, group="other-group")
    await two.run_until(lambda: sample(two.metrics, "deliveries", outcome="skipped_duplicate") >= 45)
    assert len(sim.received) == 40
    recs = await deliveries(s, 40 + 45)
    outcomes = Counter(d["outcome"] for d in recs)
    assert outcomes == {"acknowledged": 40, "skipped_duplicate": 45}
    # a replay asking for redelivery is sent again, once
    await produce_out(s, msgs[:2], [("samex-replay-id", b"r1"), ("samex-replay-redeliver", b"1")])
    three = Out(s, sim, tmp)
    await three.run_until(lambda: len(sim.received) >= 42)
    assert len(sim.received) == 42 and {r["message_id"] for r in sim.received[40:]} == set(ids[:2])
    recs = await deliveries(s, 87)
    assert sum(1 for d in recs if d["replay_id"] == "r1" and d["outcome"] == "acknowledged") == 2


async def test_mllp_out_ae_goes_to_the_dead_letter_topic(out_env) -> None:  # type: ignore[no-untyped-def]
    s, sim, tmp = out_env
    msgs = gen_messages(6, seed=6, patients=3)
    ids = await produce_out(s, msgs)
    sim.behaviour.ae_fraction = 1.0
    out = Out(s, sim, tmp)
    await out.run_until(lambda: sample(out.metrics, "deliveries", outcome="rejected") >= 6)
    dls = [codec.decode_as("deadletter", r.value) for r in
           await read_topic(s.kafka_bootstrap, s.deadletter_topic, expect=6, timeout_s=10, idle_s=0.5)]
    assert sorted(d["message_id"] for d in dls) == sorted(ids)
    assert {(d["stage"], d["reason_code"], d["system"]) for d in dls} == {
        ("mllp-out", "rejected_by_destination", SYSTEM)}
    assert all("answered AE" in d["reason"] and "rejected (simulated)" in d["reason"] for d in dls)
    recs = await deliveries(s, 6)
    assert {(d["outcome"], d["ack_code"]) for d in recs} == {("rejected", "AE")}
    assert len(sim.received) == 6  # not retried


async def test_mllp_out_retries_ar_and_timeouts_in_order(out_env) -> None:  # type: ignore[no-untyped-def]
    s, sim, tmp = out_env
    msgs = gen_messages(30, seed=7, patients=4)
    ids = await produce_out(s, msgs)
    sim.answer_ar_for(1.5)
    sim.behaviour.drop_fraction = 0.05
    out = Out(s, sim, tmp)
    await out.run_until(lambda: len(sim.accepted()) >= 30)
    assert sorted(r["message_id"] for r in sim.accepted()) == sorted(ids)
    assert sample(out.metrics, "refusals", reason="AR") > 0
    order = {mid: i for i, mid in enumerate(ids)}
    by_patient: dict[str, list[int]] = {}
    for r in sim.accepted():
        by_patient.setdefault(r["patient_key"], []).append(order[r["message_id"]])
    assert all(seq == sorted(seq) for seq in by_patient.values())
    recs = await deliveries(s, 30)
    assert Counter(d["outcome"] for d in recs) == {"acknowledged": 30}
    assert max(d["attempts"] for d in recs) > 1
    # a dropped connection leaves the outcome unknown: such resends are flagged
    dropped = {r["message_id"] for r in sim.received if r["ack"] == "drop"}
    assert {d["message_id"] for d in recs if d["detail"] == UNANSWERED} == dropped


async def test_mllp_client_reconnects_after_the_endpoint_restarts(out_env) -> None:  # type: ignore[no-untyped-def]
    _s, sim, _tmp = out_env
    m = gen_messages(1, seed=8)[0]
    c = MllpClient("127.0.0.1", sim.port or 0)
    assert parse_ack(await c.request(m.data, 5)).code == "AA"
    await c.close()
    assert parse_ack(await c.request(m.data, 5)).code == "AA"
    await c.close()


async def test_mllp_out_dead_letters_a_payload_it_cannot_send_over_mllp(out_env) -> None:  # type: ignore[no-untyped-def]
    from router.envelope import Envelope, Payload
    from router.kafkaio import producer

    s, sim, tmp = out_env
    env = map_hl7(gen_messages(1, seed=9)[0].data)
    fhir = Envelope.model_validate({**env.model_dump(), "payload": Payload.of(b'{"resourceType": "Task"}',
                                                                              "fhir_r4_json")})
    p = producer(s.kafka_bootstrap)
    await p.start()
    try:
        await p.send_and_wait(s.out_topic(SYSTEM), codec.encode("envelope", fhir.to_record()),
                              key=fhir.key(DEV_PATIENT_KEY.encode()))
    finally:
        await p.stop()
    out = Out(s, sim, tmp)
    await out.run_until(lambda: sample(out.metrics, "dead_letters", reason="unsupported_type") >= 1)
    dls = [codec.decode_as("deadletter", r.value) for r in
           await read_topic(s.kafka_bootstrap, s.deadletter_topic, expect=1, timeout_s=10, idle_s=0.5)]
    assert [(d["message_id"], d["reason_code"], d["stage"]) for d in dls] == [
        (env.message_id, "unsupported_type", "mllp-out")]
    assert [d["outcome"] for d in await deliveries(s, 1)] == ["rejected"] and sim.received == []

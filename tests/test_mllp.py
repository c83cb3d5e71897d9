"""MLLP framing (partial, coalesced, oversized, broken frames), the client, the simulator, and
mllp-in's answers when Kafka cannot be reached (no broker needed for these)."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from connectors import hl7gen
from connectors.hl7v2 import build_ack, header_of, parse_ack
from connectors.mllp import Broken, FrameReader, MllpClient, MllpError, MllpTimeout, Oversized, frame
from connectors.mllp_in import InboundOptions, MllpInbound
from connectors.sim_mllp import Behaviour, SimMllp, send_traffic
from router.metrics import ConnectorMetrics
from router.settings import Settings
from router.synth import load_units
from tests.kafka_helpers import free_port


def reader_of(*chunks: bytes) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    for c in chunks:
        r.feed_data(c)
    r.feed_eof()
    return r


async def frames(*chunks: bytes, max_bytes: int = 1000) -> list[object]:
    fr = FrameReader(reader_of(*chunks), max_bytes)
    out = []
    while (got := await fr.read()) is not None:
        out.append(got)
    return out


async def test_coalesced_frames_in_one_chunk() -> None:
    assert await frames(frame(b"MSH|a") + frame(b"MSH|b") + frame(b"MSH|c")) == [b"MSH|a", b"MSH|b", b"MSH|c"]


async def test_partial_frames_split_byte_by_byte_and_at_the_end_marker() -> None:
    data = frame(b"MSH|one\rPID|1") + frame(b"MSH|two")
    assert await frames(*[data[i:i + 1] for i in range(len(data))]) == [b"MSH|one\rPID|1", b"MSH|two"]
    cut = data.index(b"\x1c") + 1  # between 0x1C and 0x0D
    assert await frames(data[:cut], data[cut:]) == [b"MSH|one\rPID|1", b"MSH|two"]


async def test_garbage_between_frames_is_skipped_and_counted() -> None:
    fr = FrameReader(reader_of(b"junk" + frame(b"MSH|a") + b"\r\n" + frame(b"MSH|b")))
    assert [await fr.read(), await fr.read(), await fr.read()] == [b"MSH|a", b"MSH|b", None]
    assert fr.garbage == 6


async def test_oversized_frame_is_skipped_to_its_end_and_the_stream_stays_usable() -> None:
    big = frame(b"MSH|" + b"x" * 5000)
    got = await frames(frame(b"MSH|before"), big[:1500], big[1500:3100], big[3100:] + frame(b"MSH|after"),
                       max_bytes=1000)
    assert got[0] == b"MSH|before" and isinstance(got[1], Oversized) and got[1].size >= 5000
    assert got[1].head.startswith(b"MSH|xxx")
    assert got[2:] == [b"MSH|after"]
    # oversized but complete in one chunk, and an end marker split right after the limit
    got = await frames(big + frame(b"MSH|x"), max_bytes=1000)
    assert isinstance(got[0], Oversized) and got[1] == b"MSH|x"
    cut = len(big) - 1
    got = await frames(big[:1200], big[1200:cut], big[cut:] + frame(b"MSH|y"), max_bytes=1000)
    assert isinstance(got[0], Oversized) and got[1] == b"MSH|y"


async def test_start_block_inside_a_frame_reports_the_broken_frame() -> None:
    got = await frames(b"\x0bMSH|no end marker" + frame(b"MSH|next"))
    assert isinstance(got[0], Broken) and got[0].head.startswith(b"MSH|no end") and got[1] == b"MSH|next"


async def test_unfinished_frame_at_eof_is_dropped() -> None:
    assert await frames(frame(b"MSH|a") + b"\x0bMSH|half") == [b"MSH|a"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=60).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")),
                min_size=1, max_size=8), st.lists(st.integers(1, 40), min_size=1, max_size=20))
def test_any_split_of_a_stream_yields_the_same_frames(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(p) for p in payloads)
    chunks, i = [], 0
    for c in cuts * 50:
        if i >= len(stream):
            break
        chunks.append(stream[i:i + c])
        i += c
    chunks.append(stream[i:])
    assert asyncio.run(frames(*chunks, max_bytes=100)) == payloads


async def test_client_and_simulator_ack_reject_retry_and_record() -> None:
    sim = SimMllp("melior")
    port = await sim.start()
    gen = hl7gen.traffic(random.Random(1), load_units(), patients=5)
    msgs = [next(gen) for _ in range(4)]
    c = MllpClient("127.0.0.1", port)
    try:
        assert parse_ack(await c.request(msgs[0].data, 5)).code == "AA"
        sim.answer_ar_for(30)
        ack = parse_ack(await c.request(msgs[1].data, 5))
        assert ack.code == "AR" and ack.control_id == msgs[1].msh10
        sim.behaviour.ar_until = 0
        sim.behaviour.ae_fraction = 1.0
        assert parse_ack(await c.request(msgs[2].data, 5)).code == "AE"
        sim.behaviour.ae_fraction = 0.0
        assert parse_ack(await c.request(msgs[0].data, 5)).code == "AA"  # a repeat: AA, marked duplicate
        sim.behaviour.delay_s = 1.0
        with pytest.raises(MllpTimeout):
            await c.request(msgs[3].data, 0.2)
        sim.behaviour.delay_s = 0.0
        sim.drop_for(30)
        with pytest.raises(MllpError):
            await c.request(msgs[3].data, 5)
    finally:
        await c.close()
        await sim.stop()
    answers = [(r["msh10"], r["ack"], r["duplicate"]) for r in sim.received]
    assert answers[:4] == [(msgs[0].msh10, "AA", False), (msgs[1].msh10, "AR", False), (msgs[2].msh10, "AE", False),
                           (msgs[0].msh10, "AA", True)]
    assert [r["msh10"] for r in sim.accepted()] == [msgs[0].msh10]
    assert sim.received[0]["message_id"] and len(sim.received[0]["patient_key"]) == 64


async def test_sender_retries_ar_until_accepted() -> None:
    sim = SimMllp("asynja", Behaviour(ar_fraction=0.3), seed=4)
    port = await sim.start()
    gen = hl7gen.traffic(random.Random(2), load_units(), patients=20)
    msgs = [next(gen) for _ in range(60)]
    try:
        stats = await send_traffic("127.0.0.1", port, msgs, connections=3)
    finally:
        await sim.stop()
    assert stats.answers["AA"] == 60 and stats.answers.get("AR", 0) == stats.retries > 0
    assert sorted(r["msh10"] for r in sim.accepted()) == sorted(m.msh10 for m in msgs)


async def test_mllp_in_answers_ar_while_kafka_is_unreachable_and_keeps_serving() -> None:
    dead = f"127.0.0.1:{free_port()}"
    metrics = ConnectorMetrics(CollectorRegistry())
    server = MllpInbound(Settings(kafka_bootstrap=dead), metrics, InboundOptions(produce_timeout_s=1.0,
                                                                                max_frame_bytes=2048))
    port = await server.start("127.0.0.1", 0)
    gen = hl7gen.traffic(random.Random(5), load_units(), patients=5)
    m = next(gen)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        fr = FrameReader(r)
        w.write(frame(m.data) + frame(b"MSH|" + b"x" * 5000) + b"garbage" + frame(b"not hl7 at all"))
        await w.drain()
        acks = [parse_ack(await asyncio.wait_for(fr.read(), 10)) for _ in range(3)]  # type: ignore[arg-type]
        first, second, third = acks
        w.close()
    finally:
        await server.stop()
    assert (first.code, first.control_id) == ("AR", m.msh10) and "Kafka" in first.text
    assert second.code == "AR" and "exceeds the limit" in second.text
    assert third.code == "AR"  # the dead letter of the unmappable message cannot be written either
    samples = {s.labels["outcome"]: s.value for s in metrics.inbound.collect()[0].samples
               if s.name.endswith("_total")}
    assert samples["kafka_unavailable"] == 2 and samples["oversized"] == 1 and samples["garbage"] == 1


async def test_mllp_in_answers_ar_to_a_frame_whose_end_marker_never_comes() -> None:
    server = MllpInbound(Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}"), ConnectorMetrics(CollectorRegistry()),
                         InboundOptions(frame_timeout_s=0.5))
    port = await server.start("127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"\x0bMSH|^~\\&|A|B|C|D|||ORU^R01|X1|P|2.5.1\rPID|1")  # no 0x1C 0x0D
        await w.drain()
        ack = parse_ack(await asyncio.wait_for(FrameReader(r).read(), 10))  # type: ignore[arg-type]
        w.close()
    finally:
        await server.stop()
    assert ack.code == "AR" and "no end marker" in ack.text


def test_ack_for_broken_input_has_empty_msa2() -> None:
    assert parse_ack(build_ack(header_of(b""), "AR", "x")).control_id == ""

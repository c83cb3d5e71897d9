"""RouterCore offline (no broker): one decision per input, outputs per outcome, headers, metrics."""

from __future__ import annotations

import random
import struct
import time
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from router.codec import MAGIC, default_codec
from router.identifiers import patient_key
from router.metrics import WorkerMetrics
from router.rules.engine import Engine
from router.rules.load import load_rules
from router.settings import load_settings
from router.synth import load_units, test_personnummer, traffic
from router.worker.core import SOURCE_LABELS_MAX, InRecord, RouterCore, observe_many, observe_since_ms
from router.worker.states import EtappChange, StateBook

REPO = Path(__file__).resolve().parent.parent
ENGINE = Engine(load_rules(REPO / "rules"))
CODEC = default_codec()


def make_core(states: StateBook | None = None) -> tuple[RouterCore, CollectorRegistry]:
    reg = CollectorRegistry()
    core = RouterCore(load_settings(), CODEC, WorkerMetrics(reg), ENGINE, states or StateBook(), "w-test")
    return core, reg


def records(n: int, seed: int = 3, bad_share: float = 0.0) -> list[dict]:
    gen = traffic(random.Random(seed), load_units(), int(time.time() * 1000), patients=40, bad_share=bad_share)
    return [next(gen) for _ in range(n)]


def as_inputs(values: list[bytes]) -> list[InRecord]:
    return [InRecord("samex.in", 0, i, None, v) for i, v in enumerate(values)]


def decisions_of(outputs) -> list[dict]:
    return [CODEC.decode_as("decision", o.value) for o in outputs if o.topic == "samex.decisions"]


def test_every_input_gets_exactly_one_decision_and_routed_outputs_match_it():
    recs = records(400, bad_share=0.05)
    values = [CODEC.encode("envelope", r) for r in recs]
    bad = [b"garbage", MAGIC + struct.pack("<Q", 5) + values[0][10:], values[0][:-5]]
    core, reg = make_core()
    now = int(time.time() * 1000)
    res = core.process(as_inputs(values + bad), now_ms=now)
    dec = decisions_of(res.outputs)
    assert len(dec) == len(values) + len(bad)
    assert [d["input"]["offset"] for d in dec] == list(range(len(values) + len(bad)))
    out_by_mid: dict[str, list[str]] = {}
    for o in res.outputs:
        if o.topic.startswith("samex.out."):
            mid = dict(o.headers)["samex-message-id"].decode()
            out_by_mid.setdefault(mid, []).append(o.topic.removeprefix("samex.out."))
            assert o.value in values  # the envelope bytes travel unchanged
    for r, d in zip(recs, dec[:len(recs)], strict=True):
        expected = ENGINE.decide(r, now, {})
        assert d["message_id"] == r["message_id"]
        assert d["rules_version"] == ENGINE.version
        if expected.outcome == "routed":
            assert d["outcome"] == "routed"
            assert sorted(out_by_mid[r["message_id"]]) == sorted(expected.destinations) == sorted(d["destinations"])
        else:
            assert d["outcome"] == "dead_letter" and r["message_id"] not in out_by_mid
    dead = [CODEC.decode_as("deadletter", o.value) for o in res.outputs if o.topic == "samex.deadletter"]
    codes = Counter(x["reason_code"] for x in dead)
    assert codes["undecodable"] + codes["unknown_schema"] + codes["truncated"] >= 3
    assert {x["source"]["offset"] for x in dead} >= {len(values), len(values) + 1, len(values) + 2}
    assert dead[-1]["original"] == bad[-1]
    # no patient identifier anywhere in decisions or dead-letter reasons
    pnrs = {r["patient"]["id"] for r in recs}
    blob = b"".join(o.value for o in res.outputs if o.topic in ("samex.decisions",)) + \
        " ".join(x["reason"] for x in dead).encode()
    assert not any(p.encode() in blob or p[2:].encode() in blob for p in pnrs)
    text = reg.get_sample_value("samex_messages_in_total", {"source": "synth", "kind": "remiss"})
    assert text == sum(1 for r in recs if r["kind"] == "remiss")


def test_source_labels_never_carry_identifiers_and_stay_few():
    recs = records(300)  # the first 100 keep source "synth", seen first
    pnr = test_personnummer(random.Random(5))  # a generated test number (serial 980-999)
    odd = [pnr, f"mllp-in:{pnr[:8]}-{pnr[8:]}", "3f2b8c1e-1d2a-4c1b-9f1e-2a3b4c5d6e7f", "x" * 5000,
           "MLLP-IN", *[f"sender-{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(100)]]
    for r, source in zip(recs[100:], odd, strict=False):
        r["source"] = source
    core, reg = make_core()
    keyed = [InRecord("samex.in", 0, i, b"k" * 64, CODEC.encode("envelope", r)) for i, r in enumerate(recs)]
    core.process([*keyed, InRecord("samex.in", 0, 999, b"k" * 64, b"garbage")])
    labels = {s.labels["source"] for m in reg.collect() for s in m.samples
              if s.name in ("samex_messages_in_total", "samex_last_message_timestamp_seconds")}
    assert labels <= {"synth", "invalid", "other", "unknown"} | {f"sender-{a}{b}" for a in "abcd" for b in
                                                                "abcdefghijklmnopqrstuvwxyz"}
    assert {"synth", "invalid", "other", "unknown"} <= labels  # "unknown": the undecodable record, counted in
    assert len(labels - {"synth", "invalid", "other", "unknown"}) == SOURCE_LABELS_MAX - 1  # synth took one
    assert sum(reg.get_sample_value("samex_messages_in_total", {"source": "invalid", "kind": k}) or 0
               for k in ("remiss", "lab_order", "lab_result", "info")) == 5
    total_in = sum(s.value for m in reg.collect() for s in m.samples if s.name == "samex_messages_in_total")
    assert total_in == len(keyed) + 1
    # an undecodable record's decision is keyed like the record when that key is a patient key (on the
    # patient's partition); any other key (binary, empty, a raw identifier) is not copied, and never fails
    patient = b"0123456789abcdef" * 4
    raw = test_personnummer(random.Random(6)).encode()  # a generated test number as a raw key
    odd_keys = [patient, b"\xff\xfe-x", b"", raw, b"k" * 64]
    big = b"x" * (core.settings.max_record_bytes + 1)
    res = core.process([InRecord("samex.in", 0, 1000 + i, k, v) for i, k in enumerate(odd_keys)
                        for v in (b"garbage", big)])
    keys = [o.key for o in res.outputs if o.topic == "samex.decisions"]
    assert keys == [patient, patient] + [None] * 8
    assert all(o.key in (patient, None) for o in res.outputs)  # dead letters too
    # a decodable envelope under such a key is keyed by its own patient key everywhere, never by the
    # inbound one
    env = records(1)[0]
    own = patient_key(env["patient"]["id"], core.settings.patient_key_bytes).encode()
    value = CODEC.encode("envelope", env)
    for k in (b"\xff\xfe-x", raw, b"", patient):
        outs = core.process([InRecord("samex.in", 0, 2000, k, value)]).outputs
        assert outs and all(o.key == (patient if k == patient else own) for o in outs), (k, [o.key for o in outs])


def test_kept_decision_bytes_equal_freshly_encoded_ones():
    # The hot path keeps each engine decision's headers and encoded decision fields; every output
    # must be byte for byte what encoding each message from scratch gives.
    recs = records(300, bad_share=0.05)
    inputs = as_inputs([CODEC.encode("envelope", r) for r in recs])
    now = int(time.time() * 1000)
    kept, _ = make_core()
    fresh, _ = make_core()
    fresh._kept_for = lambda d: (d, fresh._decision_headers(d), None)  # nothing kept: encode every time
    first = kept.process(inputs, now_ms=now).outputs
    again = kept.process(inputs, now_ms=now).outputs  # now from the kept entries
    expected = fresh.process(inputs, now_ms=now).outputs
    assert len(kept._kept) > 0
    for outs in (first, again):
        assert [(o.topic, o.key, o.value, o.headers) for o in outs] == \
            [(o.topic, o.key, o.value, o.headers) for o in expected]


def test_headers_and_keys_on_destination_records():
    recs = records(50)
    core, _ = make_core()
    res = core.process(as_inputs([CODEC.encode("envelope", r) for r in recs]), replay_id="rp-1")
    outs = [o for o in res.outputs if o.topic.startswith("samex.out.")]
    assert outs
    for o in outs:
        h = dict(o.headers)
        assert set(h) >= {"samex-message-id", "samex-rule", "samex-rules-version", "samex-etapp", "samex-trace-id",
                          "samex-replay-id"}
        assert h["samex-replay-id"] == b"rp-1"
        assert len(o.key) == 64  # hex HMAC, never the identifier


def test_hold_parks_in_order_and_oversized_is_dead_lettered():
    etapp = "etapp-2-sodra"
    book = StateBook()
    book.apply(EtappChange(etapp, "hold", 0, 0, "test", "test hold"))
    core, reg = make_core(book)
    recs = records(600)
    values = [CODEC.encode("envelope", r) for r in recs]
    big = b"\xc3\x01" + b"\x00" * (core.settings.max_record_bytes + 1)
    res = core.process(as_inputs([*values, big]))
    parked = [o for o in res.outputs if o.topic == f"samex.park.{etapp}"]
    assert parked, "traffic to etapp-2 units should be parked while it is on hold"
    parked_ids = [dict(o.headers)["samex-message-id"].decode() for o in parked]
    in_order = [r["message_id"] for r in recs if r["message_id"] in set(parked_ids)]
    assert parked_ids == in_order
    dec = decisions_of(res.outputs)
    assert sum(d["outcome"] == "parked" for d in dec) == len(parked)
    assert all(d["etapp_state"] == "hold" for d in dec if d["outcome"] == "parked")
    assert reg.get_sample_value("samex_parked_total", {"etapp": etapp}) == len(parked)
    dead = [CODEC.decode_as("deadletter", o.value) for o in res.outputs if o.topic == "samex.deadletter"]
    assert dead[-1]["reason_code"] == "oversized" and len(dead[-1]["original"]) == 64 * 1024


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=20, allow_nan=False), max_size=200))
def test_observe_many_equals_observe(values):
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "h", buckets=(0.001, 0.01, 0.1, 1, 5), registry=r1)
    h2 = Histogram("h", "h", buckets=(0.001, 0.01, 0.1, 1, 5), registry=r2)
    for v in values:
        h1.observe(v)
    observe_many(h2, values)
    s1 = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in r1.collect() for s in m.samples
          if not s.name.endswith("_created")}
    s2 = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in r2.collect() for s in m.samples
          if not s.name.endswith("_created")}
    assert s1.keys() == s2.keys()
    for k in s1:
        assert abs(s1[k] - s2[k]) < 1e-9, k


def _samples(reg: CollectorRegistry) -> dict:  # type: ignore[type-arg]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in reg.collect() for s in m.samples
            if not s.name.endswith("_created")}


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(min_value=-2_000, max_value=20_000), max_size=200),
       st.sampled_from([1_700_000_000_000, 1_700_000_000_000.5]))
def test_observe_since_ms_equals_observe_of_the_clamped_seconds(ages_ms, now_ms):
    # ages on and around the bucket bounds (1, 10, 100, 1,000, 5,000 ms) and negative ones (a sender's clock ahead)
    ages_ms = [*ages_ms, -1, 0, 1, 10, 100, 1000, 5000, 5001]
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "h", buckets=(0.001, 0.01, 0.1, 1, 5), registry=r1)
    h2 = Histogram("h", "h", buckets=(0.001, 0.01, 0.1, 1, 5), registry=r2)
    since = [now_ms - a for a in ages_ms]
    for t in since:
        h1.observe(max(0.0, (now_ms - t) / 1000))
    observe_since_ms(h2, now_ms, since)
    s1, s2 = _samples(r1), _samples(r2)
    assert s1.keys() == s2.keys()
    for k in s1:
        assert abs(s1[k] - s2[k]) < 1e-6, k


def test_an_oversized_envelope_is_dead_lettered_under_its_own_message_id():
    core, reg = make_core()
    limit = core.settings.max_record_bytes
    env = records(1, seed=11)[0]
    env = {**env, "payload": {**env["payload"], "data": b"x" * (limit + 10)}}
    whole = CODEC.encode("envelope", env)
    # the same record cut short inside its payload: still oversized, no longer a whole envelope
    cut = whole[:limit + 5]
    res = core.process(as_inputs([whole, cut]))
    dec = decisions_of(res.outputs)
    dead = [CODEC.decode_as("deadletter", o.value) for o in res.outputs if o.topic == "samex.deadletter"]
    assert [d["outcome"] for d in dec] == ["dead_letter", "dead_letter"]
    assert [d["reason_code"] for d in dead] == ["oversized", "oversized"]
    assert dec[0]["message_id"] == dead[0]["message_id"] == env["message_id"]
    assert dead[0]["kind"] == env["kind"] and dec[0]["kind"] == env["kind"]
    assert dec[0]["receiver_unit"] == env["receiver"]["unit_hsa_id"]
    assert dec[1]["message_id"] == "unknown:samex.in:0:1" and dead[1]["message_id"] is None
    assert reg.get_sample_value("samex_messages_in_total", {"source": env["source"], "kind": env["kind"]}) == 1
    assert reg.get_sample_value("samex_messages_in_total", {"source": "unknown", "kind": "unknown"}) == 1
    assert not [o for o in res.outputs if o.topic.startswith("samex.out.")]
    assert env["patient"]["id"].encode() not in b"".join(o.value for o in res.outputs if o.topic != "samex.deadletter")

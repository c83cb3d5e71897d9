"""The hot path's hand-written decision encoder is byte-identical to fastavro's, for any values."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from router.codec import default_codec
from router.envelopereader import RoutingReader
from router.synth import envelope_record, load_units, test_personnummer
from router.worker.decisionenc import DecisionEncoder

CODEC = default_codec()
ENC = DecisionEncoder(CODEC)
UNITS = load_units()
text = st.text(max_size=700)
opt = st.none() | text
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def test_layout_matches_the_schema():
    assert ENC.fast, "schemas/decision.avsc changed: update router/worker/decisionenc.py (it falls back meanwhile)"


@settings(max_examples=300, deadline=None)
@given(mid=text, smid=opt, kind=opt, outcome=st.sampled_from(["routed", "parked", "dead_letter"]),
       dests=st.lists(text, max_size=4), rule=opt, version=text, etapp=opt, state=opt, reason=text,
       as_of=longs, decided=longs, latency=st.floats(allow_nan=False), topic=text,
       partition=st.integers(min_value=0, max_value=2**31 - 1), offset=longs, pk=opt, su=opt, ru=opt, placer=opt,
       filler=opt, referral=opt, trace=opt, replay=opt, worker=opt, source=opt)
def test_byte_identical_to_fastavro(mid, smid, kind, outcome, dests, rule, version, etapp, state, reason, as_of,
                                    decided, latency, topic, partition, offset, pk, su, ru, placer, filler, referral,
                                    trace, replay, worker, source):
    fast = ENC.encode(mid, smid, kind, outcome, dests, rule, version, etapp, state, reason, as_of, decided, latency,
                      topic, partition, offset, pk, su, ru, placer, filler, referral, trace, replay, worker, source)
    record = {"message_id": mid, "source_message_id": smid, "kind": kind, "outcome": outcome, "destinations": dests,
              "rule": rule, "rules_version": version, "etapp": etapp, "etapp_state": state, "reason": reason,
              "as_of_ms": as_of, "decided_at_ms": decided, "latency_ms": latency,
              "input": {"topic": topic, "partition": partition, "offset": offset}, "patient_key": pk,
              "sender_unit": su, "receiver_unit": ru, "placer_order_number": placer, "filler_order_number": filler,
              "referral_id": referral, "trace_id": trace, "replay_id": replay, "worker": worker,
              "source": source}
    assert fast == CODEC.encode("decision", record)
    assert CODEC.decode_as("decision", fast) == record


@settings(max_examples=200, deadline=None)
@given(mid=st.text(min_size=1, max_size=300), smid=opt, placer=opt, filler=opt, referral=opt, trace=opt,
       source=opt, sender=st.text(min_size=1, max_size=200), receiver=st.text(min_size=1, max_size=200),
       kind=st.sampled_from(["remiss", "lab_order", "lab_result", "info"]),
       outcome=st.sampled_from(["routed", "parked", "dead_letter"]), reason=text,
       offset=st.integers(min_value=0, max_value=2**62), pk=opt, replay=opt, worker=opt)
def test_record_from_the_envelopes_own_bytes_equals_the_record_from_values(
        mid, smid, placer, filler, referral, trace, source, sender, receiver, kind, outcome, reason, offset, pk,
        replay, worker):
    """The hot path copies the envelope's encodings of the fields the decision record repeats
    (RoutingReader.decode_raw -> encode_raw); the bytes must equal encoding the decoded values."""
    rng = random.Random(1)
    e = envelope_record(rng, UNITS[0], UNITS[1], kind, test_personnummer(rng, False), 1_700_000_000_000)
    e.update(message_id=mid, source_message_id=smid, source=source, trace_id=trace)
    e["sender"] = {**e["sender"], "unit_hsa_id": sender}
    e["receiver"] = {**e["receiver"], "unit_hsa_id": receiver}
    e["correlation"] = {**e["correlation"], "placer_order_number": placer, "filler_order_number": filler,
                        "referral_id": referral}
    name, _env, raw = RoutingReader(CODEC).decode_raw(CODEC.encode("envelope", e))
    assert name == "envelope" and raw is not None
    block = ENC.block(outcome, ["millennium"], "r1", "v1", None, None, reason)
    pk_bytes = pk.encode() if pk is not None else None
    from_raw = ENC.encode_raw(raw, kind, block, 5, 5, 1.5, "samex.in", 3, offset, pk_bytes, replay, worker)
    from_values = ENC.encode(mid, smid, kind, outcome, ["millennium"], "r1", "v1", None, None, reason, 5, 5, 1.5,
                             "samex.in", 3, offset, pk, sender, receiver, placer, filler, referral, trace, replay,
                             worker, source)
    assert from_raw == from_values
    # again: the kept encodings (input coordinates, replay id and worker) give the same bytes
    assert ENC.encode_raw(raw, kind, block, 5, 5, 1.5, "samex.in", 3, offset, pk_bytes, replay, worker) == from_values
    assert CODEC.decode_as("decision", from_raw)["sender_unit"] == sender


def test_long_encoding_at_every_length_boundary():
    """_long is unrolled for up to four bytes: every length and both signs, against fastavro."""
    import io

    from fastavro import schemaless_writer

    from router.worker.decisionenc import _long

    values = {0, -1, 2**63 - 1, -(2**63)}
    for k in range(1, 63):
        values |= {2**k - 1, 2**k, 2**k + 1, -(2**k) - 1, -(2**k), -(2**k) + 1}
    for n in sorted(values):
        buf = io.BytesIO()
        schemaless_writer(buf, "long", n)
        assert _long(n) == buf.getvalue(), n

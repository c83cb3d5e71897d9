"""The hot path's hand-written decision encoder is byte-identical to fastavro's, for any values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router.codec import default_codec
from router.worker.decisionenc import DecisionEncoder

CODEC = default_codec()
ENC = DecisionEncoder(CODEC)
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

import contextlib
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.codec import HEADER_LEN, MAGIC, Codec, default_codec, schema_fingerprint
from router.envelope import KINDS, Envelope
from router.errors import CodecError, MalformedRecordError, TruncatedRecordError, UnknownSchemaError
from router.synth import envelope_record, load_units, test_personnummer

UNITS = load_units()
codec = default_codec()

opt_text = st.one_of(st.none(), st.text(max_size=30))


@st.composite
def envelopes(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    rec = envelope_record(
        rng,
        draw(st.sampled_from(UNITS)),
        draw(st.sampled_from(UNITS)),
        draw(st.sampled_from(KINDS)),
        test_personnummer(rng, draw(st.booleans())),
        draw(st.integers(0, 2**45)),
        payload=draw(st.binary(max_size=2000)),
    )
    rec["source_message_id"] = draw(opt_text)
    rec["status"] = draw(opt_text)
    rec["correlation"]["in_reply_to"] = draw(opt_text)
    rec["event_time_ms"] = draw(st.one_of(st.none(), st.integers(-(2**62), 2**62)))
    return rec


@settings(max_examples=200, deadline=None)
@given(envelopes())
def test_envelope_roundtrip_is_exact(rec):
    data = codec.encode("envelope", rec)
    assert data[:2] == MAGIC and data[2:HEADER_LEN] == codec.fingerprint("envelope")
    name, back = codec.decode(data)
    assert name == "envelope" and back == rec
    assert codec.encode("envelope", back) == data
    Envelope.from_record(back)  # still a valid envelope


@settings(max_examples=100, deadline=None)
@given(envelopes(), st.data())
def test_any_truncation_is_a_typed_error(rec, data):
    blob = codec.encode("envelope", rec)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(CodecError):
        codec.decode(blob[:cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(blob):
    with contextlib.suppress(CodecError):
        codec.decode(blob)


def test_fingerprint_is_crc64_avro_little_endian_of_canonical_form():
    import json

    from router.codec import SCHEMA_DIR

    raw = json.loads((SCHEMA_DIR / "envelope.avsc").read_text())
    fp = schema_fingerprint(raw)
    assert fp == codec.fingerprint("envelope") and len(fp) == 8
    # every record type has its own fingerprint
    fps = {codec.fingerprint(n) for n in ("envelope", "decision", "deadletter", "delivery", "control")}
    assert len(fps) == 5


def test_bad_inputs_have_clear_typed_errors():
    rec = envelope_record(random.Random(1), UNITS[0], UNITS[1], "remiss", test_personnummer(random.Random(2)), 0)
    good = codec.encode("envelope", rec)
    with pytest.raises(MalformedRecordError, match="single-object marker"):
        codec.decode(b"\x00\x01" + good[2:])
    with pytest.raises(UnknownSchemaError, match="unknown schema fingerprint"):
        codec.decode(MAGIC + struct.pack("<Q", 12345) + good[HEADER_LEN:])
    with pytest.raises(TruncatedRecordError):
        codec.decode(good[:-5])
    with pytest.raises(TruncatedRecordError):
        codec.decode(good[:6])
    with pytest.raises(MalformedRecordError, match="trailing"):
        codec.decode(good + b"\x00")
    with pytest.raises(UnknownSchemaError, match="expected a decision record"):
        codec.decode(good, expect="decision")
    with pytest.raises(MalformedRecordError):
        codec.decode("text")  # type: ignore[arg-type]


def test_encode_errors_do_not_leak_the_patient_number():
    pnr = test_personnummer(random.Random(3))
    rec = envelope_record(random.Random(1), UNITS[0], UNITS[1], "remiss", pnr, 0)
    rec["patient"]["id_type"] = pnr  # not an enum symbol; fastavro would echo the value
    with pytest.raises(CodecError) as err:
        codec.encode("envelope", rec)
    assert pnr not in str(err.value)


def test_codec_parses_schemas_once(tmp_path, monkeypatch):
    import router.codec as mod

    calls = []
    real = mod.parse_schema
    monkeypatch.setattr(mod, "parse_schema", lambda *a, **k: calls.append(1) or real(*a, **k))
    c = Codec()
    n = len(calls)
    rec = envelope_record(random.Random(1), UNITS[0], UNITS[1], "info", test_personnummer(random.Random(2)), 0)
    for _ in range(50):
        c.decode(c.encode("envelope", rec))
    assert len(calls) == n

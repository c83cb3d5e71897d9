"""HL7 v2 parsing, mapping to the envelope, character sets and ACKs (pure, no sockets)."""

from __future__ import annotations

import contextlib
import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors import hl7gen
from connectors.hl7v2 import (
    CharsetError,
    Delimiters,
    Hl7Error,
    NotHl7Error,
    PatientError,
    UnsupportedTypeError,
    build_ack,
    escape,
    header_of,
    map_hl7,
    map_hl7_record,
    message_id_of,
    parse,
    parse_ack,
    parse_ts,
    unescape,
)
from router.errors import MappingError, SamexError
from router.synth import load_units, test_personnummer

UNITS = {u.unit_type: u for u in load_units()}
SENDER = UNITS["primarvard"].hsa_id
LAB = UNITS["lab"].hsa_id


def pnr(seed: int = 1, samordning: bool = False) -> str:
    return test_personnummer(random.Random(seed), samordning=samordning)


def msg(mtype: str = "ORU^R01^ORU_R01", body: list[str] | None = None, *, msh4: str | None = None,
        msh6: str | None = None, charset: str = "UNICODE UTF-8", control: str = "C0001", pid: str | None = None,
        encoding: str = "utf-8") -> bytes:
    p = pnr()
    segs = [f"MSH|^~\\&|LIS|{msh4 if msh4 is not None else LAB}|SAMEX|{msh6 if msh6 is not None else SENDER}|"
            f"20261123101500+0100||{mtype}|{control}|P|2.5.1|||AL|NE|SWE|{charset}",
            pid if pid is not None else f"PID|1||{p}^^^&1.2.752.129.2.1.3.1&ISO^NNSWE||Testsson^Åsa"]
    segs += body if body is not None else ["ORC|RE|PO123^LIS|FL9", "OBR|1|PO123^LIS|FL9|NPU01685^P-Kalium|||"
                                           "20261123101500||||||||||||||||||F", "OBX|1|NM|NPU01685||4.1|mmol/L||N|||F"]
    return "\r".join(segs).encode(encoding)


def test_oru_maps_to_lab_result_with_order_numbers_and_status() -> None:
    env = map_hl7(msg(), received_ms=1_000)
    assert env.kind == "lab_result" and env.subtype == "ORU^R01" and env.status == "F"
    assert env.correlation.placer_order_number == "PO123" and env.correlation.filler_order_number == "FL9"
    assert env.sender.unit_hsa_id == LAB and env.receiver.unit_hsa_id == SENDER
    assert env.sender.system == "LIS" and env.source_message_id == "C0001"
    assert env.patient.value == pnr() and env.patient.type == "personnummer"
    assert env.received_time_ms == 1_000 and env.payload.format == "hl7v2" and env.payload.data == msg()
    assert env.event_time_ms == 1795425300000  # 2026-11-23 10:15:00 +01:00


def test_order_types_map_to_lab_order_with_orc_numbers() -> None:
    body = ["ORC|NW|PL77^ASYNJA|FI88", "OBR|1|PLX|FIX|NPU19748^P-CRP"]
    for mtype in ("OML^O21^OML_O21", "ORM^O01"):
        env = map_hl7(msg(mtype, body, msh4=SENDER, msh6=LAB))
        assert (env.kind, env.subtype) == ("lab_order", mtype.rsplit("^", 1)[0] if mtype.count("^") == 2 else mtype)
        assert env.correlation.placer_order_number == "PL77" and env.correlation.filler_order_number == "FI88"
    env = map_hl7(msg("ORM^O01", ["ORC|NW", "OBR|1|PLX|FIX|NPU19748^P-CRP"], msh4=SENDER, msh6=LAB))
    assert env.correlation.placer_order_number == "PLX"  # falls back to OBR-2


@pytest.mark.parametrize("trigger,rf1,status", [("I12", "P^Skickad", "skickad"), ("I13", "A", "accepterad"),
                                                ("I14", "", "avvisad"), ("I12", "", "skickad")])
def test_referrals_map_to_remiss_with_rf1(trigger: str, rf1: str, status: str) -> None:
    env = map_hl7(msg(f"REF^{trigger}^REF_{trigger}", [f"RF1|{rf1}|R|GRP|AMB|R|RF-42|20261123"], msh4=SENDER,
                      msh6=UNITS["sjukhus"].hsa_id))
    assert env.kind == "remiss" and env.subtype == f"REF^{trigger}"
    assert env.correlation.referral_id == "RF-42" and env.status == status


def test_mdm_is_info_and_hd2_facility_with_hsa_namespace() -> None:
    kommun = UNITS["kommun"].hsa_id
    env = map_hl7(msg("MDM^T02^MDM_T02", ["TXA|1|EPI|TX"], msh4=f"^{SENDER}^HSA", msh6=f"^{kommun}^HSA"))
    assert env.kind == "info" and env.sender.unit_hsa_id == SENDER and env.receiver.unit_hsa_id == kommun


def test_samordningsnummer_by_oid() -> None:
    s = pnr(5, samordning=True)
    env = map_hl7(msg(pid=f"PID|1||X1^^^LOCAL~{s}^^^&1.2.752.129.2.1.3.3&ISO^NNSWE"))
    assert env.patient.type == "samordningsnummer" and env.patient.value == s


def test_message_id_is_stable_for_a_retransmission_and_differs_by_control_id() -> None:
    a, b = map_hl7(msg(), received_ms=1), map_hl7(msg(), received_ms=999)
    assert a.message_id == b.message_id and uuid.UUID(a.message_id).version == 5
    assert map_hl7(msg(control="C0002")).message_id != a.message_id
    assert map_hl7(msg(msh4=f"^{LAB}^HSA")).message_id == a.message_id  # same facility, other HD layout
    assert message_id_of(msg()) == a.message_id


@pytest.mark.parametrize("charset,encoding", [("UNICODE UTF-8", "utf-8"), ("8859/1", "latin-1"), ("", "utf-8")])
def test_charsets_decode_per_msh18(charset: str, encoding: str) -> None:
    body = ["ORC|RE|PO1", "OBR|1|PO1|FL1||||||||||||||||||||||F", "OBX|1|TX|X||Åäö µmol/L||||||F"]
    data = msg(body=body, charset=charset, encoding=encoding)
    m = parse(data)
    assert m.get("OBX", 5) == "Åäö µmol/L" and m.get("PID", 5, 2) == "Åsa"
    assert map_hl7(data).payload.data == data  # original bytes unchanged


def test_default_charset_applies_when_msh18_is_empty() -> None:
    data = msg(charset="", encoding="latin-1")
    with pytest.raises(CharsetError):
        map_hl7(data)
    assert parse(data, default_charset="latin-1").get("PID", 5, 2) == "Åsa"


def test_wrong_or_unknown_charset_is_a_typed_error_without_patient_data() -> None:
    latin_as_utf8 = msg(charset="UNICODE UTF-8", encoding="latin-1")
    with pytest.raises(CharsetError) as exc:
        map_hl7(latin_as_utf8)
    assert pnr() not in str(exc.value)
    with pytest.raises(CharsetError, match="not supported"):
        map_hl7(msg(charset="ISO IR87"))


@pytest.mark.parametrize("data,error,text", [
    (b"hello world", NotHl7Error, "MSH"),
    (b"", NotHl7Error, "MSH"),
    (b"\x00\xff\xfe garbage", NotHl7Error, "MSH"),
    (msg("ADT^A01"), UnsupportedTypeError, "unsupported message type ADT^A01"),
    (msg("ACK^R01"), UnsupportedTypeError, "unsupported"),
    (msg("REF"), UnsupportedTypeError, r"unsupported message type REF \(MSH-9, no trigger event\)"),
    (msg(control=""), Hl7Error, "MSH-10"),
    (msg(msh4=""), Hl7Error, "MSH-4"),
    (msg(msh6="LABBET"), Hl7Error, "HSA-id"),
    (msg(msh6=f"LABBET^{LAB}^DNS"), Hl7Error, "HD.2 with HD.3 = HSA"),  # an HSA-id under another ID type
    (msg(msh6=f"^{LAB}"), Hl7Error, "HD.2 with HD.3 = HSA"),
    (msg(msh6="^LABBET^HSA"), Hl7Error, "HD.2 is not an HSA-id"),
    (msg(pid="PID|1||"), PatientError, "PID-3"),
    (msg(pid="EVN|A01"), PatientError, "no PID segment"),
])
def test_bad_input_raises_typed_mapping_errors(data: bytes, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text.replace("^", r"\^")) as exc:
        map_hl7(data)
    assert isinstance(exc.value, MappingError) and isinstance(exc.value, SamexError)


def test_invalid_personnummer_error_never_echoes_the_number() -> None:
    good = pnr()
    bad = good[:-1] + str((int(good[-1]) + 1) % 10)
    with pytest.raises(PatientError) as exc:
        map_hl7(msg(pid=f"PID|1||{bad}^^^&1.2.752.129.2.1.3.1&ISO"))
    assert bad not in str(exc.value) and bad[2:] not in str(exc.value) and "Luhn" in str(exc.value)
    assert str(exc.value).count("patient identifier") == 1, str(exc.value)  # said once, by the wrapper
    samordning = pnr(3, samordning=True)
    with pytest.raises(PatientError, match="samordningsnummer under the personnummer OID"):
        map_hl7(msg(pid=f"PID|1||{samordning}^^^&1.2.752.129.2.1.3.1&ISO"))
    # without an OID: the check digit is still the reason given, in every layout, never the number
    for shown in (bad, f"{bad[:8]}-{bad[8:]}", f"{bad[2:8]}-{bad[8:]}"):
        with pytest.raises(PatientError) as exc:
            map_hl7(msg(pid=f"PID|1||LOCAL-7^^^X~{shown}"))
        text = str(exc.value)
        assert "Luhn" in text and "invalid patient identifier" in text and bad[2:8] not in text, text
        assert text.count("patient identifier") == 1, text
    with pytest.raises(PatientError, match="no patient identifier"):
        map_hl7(msg(pid="PID|1||LOCAL-7^^^X"))


def test_escapes_round_trip_and_timestamps() -> None:
    d = Delimiters()
    assert unescape(escape("a|b^c&d~e\\f"), d) == "a|b^c&d~e\\f"
    assert parse_ts("20261123101500+0100") == 1795425300000
    assert parse_ts("20261123") is not None and parse_ts("notatime") is None and parse_ts("20261399") is None


def test_ack_echoes_control_id_and_carries_redacted_text() -> None:
    data = msg(charset="8859/1", encoding="latin-1")
    ack = build_ack(header_of(data), "AE", f"bad value {pnr()} | here")
    assert pnr() not in ack.decode("latin-1")
    parsed = parse_ack(ack)
    assert (parsed.code, parsed.control_id) == ("AE", "C0001") and parsed.text == "bad value <pnr> | here"
    m = parse(ack)
    assert m.get("MSH", 9) == "ACK" and m.get("MSH", 9, 2) == "R01" and m.get("MSH", 18) == "8859/1"
    assert m.get("MSH", 3) == "SAMEX" and m.get("MSH", 5) == "LIS" and m.get("MSH", 6) == LAB
    assert parse_ack(build_ack(header_of(msg()), "AA")).code == "AA"
    garbage = parse_ack(build_ack(header_of(b"\x01\x02junk"), "AR", "not HL7"))
    assert (garbage.code, garbage.control_id) == ("AR", "")
    with pytest.raises(Hl7Error):
        parse_ack(msg())


def test_generated_traffic_maps_completely() -> None:
    gen = hl7gen.traffic(random.Random(3), load_units(), patients=50)
    kinds: dict[str, int] = {}
    latin = 0
    for m in (next(gen) for _ in range(800)):
        env = map_hl7(m.data)
        assert env.kind == m.kind and env.source_message_id == m.msh10 and env.patient.value == m.patient
        kinds[env.kind] = kinds.get(env.kind, 0) + 1
        latin += b"8859/1" in m.data
    assert set(kinds) == {"remiss", "lab_order", "lab_result", "info"} and latin > 100


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_mapping_errors(data: bytes) -> None:
    for candidate in (data, b"MSH|^~\\&|" + data):
        with contextlib.suppress(MappingError):
            map_hl7(candidate)
        header_of(candidate)  # never raises


def test_fast_record_mapping_equals_the_validated_envelope_for_generated_traffic():
    """mllp-in maps to the Avro record without the pydantic model; it must give the same record as
    map_hl7 (which validates through Envelope) and the same ACK header as header_of."""
    gen = hl7gen.traffic(random.Random(17), load_units(), patients=50)
    for _ in range(400):
        m = next(gen)
        fast = map_hl7_record(m.data, received_ms=1_700_000_000_000)
        slow = map_hl7(m.data, received_ms=1_700_000_000_000)
        assert fast.record == slow.to_record()
        assert fast.header == header_of(m.data)

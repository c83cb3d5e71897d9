import contextlib
import datetime as dt
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from router.errors import IdentifierError, SamexError
from router.identifiers import (
    OID_SAMORDNINGSNUMMER,
    HsaId,
    PatientId,
    parse_patient_id,
    patient_key,
    redact,
    validate_hsa_id,
)
from router.synth import check_digit, test_personnummer

# 19640823-3234 is the public example from the domain brief (a test number).
EXAMPLE = "19640823-3234"


def test_known_personnummer_forms_normalise_to_12_digits():
    assert parse_patient_id(EXAMPLE) == ("196408233234", "personnummer")
    assert parse_patient_id("196408233234") == ("196408233234", "personnummer")
    assert parse_patient_id("640823-3234", today=dt.date(2026, 1, 1))[0] == "196408233234"


def test_plus_separator_means_a_hundred_years_more():
    nine = "150101980"  # serial 980: the test-number range
    pnr = nine[:6] + "+" + nine[6:] + check_digit(nine)
    assert parse_patient_id(pnr, today=dt.date(2026, 1, 1))[0].startswith("1915")
    assert parse_patient_id(pnr.replace("+", "-"), today=dt.date(2026, 1, 1))[0].startswith("2015")


def test_samordningsnummer_day_plus_60():
    nine = "640883983"  # test number: the public example's date + 60 days, serial 983 in the test range
    _value, kind = parse_patient_id("19" + nine + check_digit(nine))
    assert kind == "samordningsnummer"
    assert PatientId(value="19" + nine + check_digit(nine)).oid == OID_SAMORDNINGSNUMMER


@pytest.mark.parametrize(
    "bad, why",
    [
        ("19640823-3235", "Luhn"),
        ("19640230-" + "000" + check_digit("640230000"), "calendar date"),
        ("19641323-" + "000" + check_digit("641323000"), "calendar date"),
        ("19640823323", "layout"),
        ("abcdefgh-ijkl", "layout"),
        ("", "layout"),
    ],
)
def test_invalid_patient_ids_give_typed_errors_without_the_value(bad, why):
    with pytest.raises(IdentifierError) as err:
        parse_patient_id(bad)
    assert isinstance(err.value, SamexError)
    assert why in str(err.value)
    if bad:
        assert bad not in str(err.value)


@pytest.mark.parametrize(
    "hsa", ["SE2321000131-E000000001007", "SE5565189692-b1", "SE2321000131-S000000011352"]
)
def test_valid_hsa_ids(hsa):
    assert validate_hsa_id(hsa) == hsa


@pytest.mark.parametrize(
    "bad", ["SE2321000131_E0001", "SE232100013-E1", "se2321000131-E1", "SE2321000131-", "SE2321000131-E0å",
            "SE2321000131-" + "A" * 19]
)
def test_invalid_hsa_ids(bad):
    with pytest.raises(IdentifierError):
        validate_hsa_id(bad)


def test_hsa_type_in_a_pydantic_model():
    class M(BaseModel):
        unit: HsaId

    assert M(unit="SE2321000131-E000000001007").unit.startswith("SE")
    with pytest.raises(ValidationError):
        M(unit="SE2321000131 E1")


def test_patient_id_repr_never_shows_the_number():
    p = PatientId(value=EXAMPLE)
    assert "3234" not in repr(p) and "3234" not in str(p)


def test_patient_key_is_keyed_and_stable():
    a = patient_key("196408233234", b"k1")
    assert a == patient_key("196408233234", b"k1")
    assert a != patient_key("196408233234", b"k2")
    assert "196408233234" not in a and len(a) == 64


def test_redact_masks_personnummer_shapes_valid_or_mistyped():
    # 196408233234 is the public example from the domain brief (a test number); 196408233235 is it mistyped
    # (wrong check digit), 640883-9833 a samordningsnummer shape in the test range, 20241315... has no month 13
    text = ("pnr 196408233234 typo 196408233235 short 640823-3234 samordning 640883-9833 "
            "unit SE2321000131-E000000001007 order 1234567890 lot 202413150001")
    out = redact(text)
    for number in ("196408233234", "196408233235", "640823-3234", "640883-9833"):
        assert number not in out
    assert out.count("<pnr>") == 4
    assert "SE2321000131-E000000001007" in out and "1234567890" in out and "202413150001" in out


@given(st.integers(0, 2**32), st.booleans())
def test_generated_numbers_validate_and_roundtrip(seed, samordning):
    pnr = test_personnummer(random.Random(seed), samordning)
    value, kind = parse_patient_id(pnr)
    assert value == pnr
    assert kind == ("samordningsnummer" if samordning else "personnummer")
    short = pnr[2:8] + "-" + pnr[8:]
    assert parse_patient_id(short, today=dt.date(2026, 11, 23))[0] == pnr


@given(st.integers(0, 2**32), st.integers(1, 9))
def test_any_changed_check_digit_is_rejected(seed, delta):
    pnr = test_personnummer(random.Random(seed))
    wrong = pnr[:-1] + str((int(pnr[-1]) + delta) % 10)
    with pytest.raises(IdentifierError, match="Luhn"):
        parse_patient_id(wrong)


@given(st.text(max_size=40))
def test_arbitrary_text_never_crashes_the_validators(text):
    for fn in (parse_patient_id, validate_hsa_id):
        with contextlib.suppress(IdentifierError):
            fn(text)

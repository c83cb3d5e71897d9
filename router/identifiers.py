"""Swedish patient identifiers and HSA-ids: validation, normalisation, keyed hashing.

Error texts describe the defect and never echo the value (they reach logs and dead letters).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

from router.errors import IdentifierError

OID_PERSONNUMMER = "1.2.752.129.2.1.3.1"
OID_SAMORDNINGSNUMMER = "1.2.752.129.2.1.3.3"
OID_HSA = "1.2.752.129.2.1.4.1"
OID_HSA_FHIR = "1.2.752.29.4.19"

PatientIdType = Literal["personnummer", "samordningsnummer"]
OID_BY_TYPE: dict[str, str] = {
    "personnummer": OID_PERSONNUMMER,
    "samordningsnummer": OID_SAMORDNINGSNUMMER,
}
TYPE_BY_OID = {v: k for k, v in OID_BY_TYPE.items()}

_PNR_RE = re.compile(r"^(\d{2})?(\d{6})([-+]?)(\d{4})$")
_HSA_RE = re.compile(r"^SE\d{10}-[A-Za-z0-9]+$")


def luhn_ok(digits: str) -> bool:
    """Luhn check over a string of digits whose last digit is the check digit."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def parse_patient_id(text: str, today: dt.date | None = None) -> tuple[str, PatientIdType]:
    """Normalise a personnummer or samordningsnummer to 12 digits and tell which it is.

    Accepts ``YYYYMMDDNNNC``, ``YYYYMMDD-NNNC``, ``YYMMDD-NNNC`` and ``YYMMDD+NNNC`` (+ = 100 years
    or older). Raises :class:`IdentifierError` saying what is wrong, without echoing the value and
    without naming the subject (callers say "invalid patient identifier ...").
    """
    if not isinstance(text, str):
        raise IdentifierError("not text")
    m = _PNR_RE.match(text.strip())
    if not m:
        raise IdentifierError("not 10 or 12 digits in a personnummer layout")
    century, yymmdd, sep, tail = m.groups()
    if century is not None and sep == "+":
        raise IdentifierError("'+' separator only allowed with a 2-digit year")
    if not luhn_ok(yymmdd + tail):
        raise IdentifierError("Luhn check digit does not match")
    yy, mm, dd = int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:6])
    kind: PatientIdType = "personnummer"
    if dd > 60:
        kind, dd = "samordningsnummer", dd - 60
    today = today or dt.date.today()
    if century is None:
        # Born in the century that makes the person at most 99 (or 100+ with '+').
        year = (today.year // 100) * 100 + yy
        if year > today.year:
            year -= 100
        if sep == "+":
            year -= 100
    else:
        year = int(century) * 100 + yy
    try:
        dt.date(year, mm, dd)
    except ValueError:
        raise IdentifierError(f"{kind}: the date part is not a valid calendar date") from None
    return f"{year:04d}{yymmdd[2:]}{tail}", kind


def validate_hsa_id(text: str) -> str:
    """Check an HSA-id: ``SE`` + 10-digit organisation number + ``-`` + letters/digits, ≤ 31 chars."""
    if not isinstance(text, str):
        raise IdentifierError("HSA-id must be a string")
    if len(text) > 31:
        raise IdentifierError(f"HSA-id is {len(text)} characters, at most 31 are allowed")
    if not _HSA_RE.match(text):
        raise IdentifierError(
            "HSA-id must be 'SE', 10 digits, '-', then letters/digits only"
            + (f" (got {text!r})" if len(text) <= 31 and text.isprintable() else "")
        )
    return text


HsaId = Annotated[str, AfterValidator(validate_hsa_id)]


class PatientId(BaseModel):
    """A validated patient identifier, normalised to 12 digits, with its type and OID."""

    model_config = ConfigDict(frozen=True)

    value: str
    type: PatientIdType = "personnummer"
    oid: str = OID_PERSONNUMMER

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: object) -> object:
        if isinstance(data, str):
            data = {"value": data}
        if isinstance(data, dict) and "value" in data:
            value, kind = parse_patient_id(data["value"])
            declared = data.get("type")
            if declared is not None and declared != kind:
                raise IdentifierError(f"a {kind}, declared as {declared}")
            return {"value": value, "type": kind, "oid": OID_BY_TYPE[kind]}
        return data

    def __repr__(self) -> str:  # never print the number
        return f"PatientId(type={self.type!r}, value=<redacted>)"

    __str__ = __repr__


def patient_key(identifier: str, key: bytes) -> str:
    """Stable keyed hash of a (normalised) patient identifier: the Kafka key and index key."""
    return hmac.new(key, identifier.encode(), hashlib.sha256).hexdigest()


def redact(text: str) -> str:
    """Mask anything shaped like a personnummer/samordningsnummer in free text: 10 or 12 digits
    whose date part is a plausible birth date (day + 60 for a samordningsnummer), whether or not
    the check digit matches: a mistyped number still points at a person. Other digit runs (order
    numbers like 1234567890) stay."""
    return _PNR_SCAN.sub(_mask, text)


def _mask(m: re.Match[str]) -> str:
    century, mm, dd = m.group(1), int(m.group(3)), int(m.group(4))
    if century is not None and century not in ("18", "19", "20"):
        return m.group(0)
    if 1 <= mm <= 12 and (1 <= dd <= 31 or 61 <= dd <= 91):
        return "<pnr>"
    return m.group(0)


_PNR_SCAN = re.compile(r"(?<![\dA-Za-z])(\d{2})?(\d{2})(\d{2})(\d{2})[-+]?\d{4}(?![\dA-Za-z])")

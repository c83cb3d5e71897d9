"""The canonical envelope as a validated pydantic model, and its Avro record form.

Connectors build an :class:`Envelope` (validation of identifiers happens here, at the edge); the
hot path of the router works on the decoded Avro dict and never re-validates.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from router.identifiers import HsaId, PatientId, patient_key

Kind = Literal["remiss", "lab_order", "lab_result", "info"]
KINDS: tuple[Kind, ...] = ("remiss", "lab_order", "lab_result", "info")
PayloadFormat = Literal["hl7v2", "fhir_r4_json", "other"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Party(_Frozen):
    unit_hsa_id: HsaId
    care_provider_hsa_id: HsaId | None = None
    system: str | None = None


class Correlation(_Frozen):
    placer_order_number: str | None = None
    filler_order_number: str | None = None
    referral_id: str | None = None
    in_reply_to: str | None = None


class Payload(_Frozen):
    format: PayloadFormat
    content_type: str | None = None
    data: bytes
    sha256: str

    @classmethod
    def of(cls, data: bytes, format: PayloadFormat, content_type: str | None = None) -> Payload:
        return cls(format=format, content_type=content_type, data=data, sha256=hashlib.sha256(data).hexdigest())

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v


class Envelope(_Frozen):
    message_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source_message_id: str | None = None
    kind: Kind
    subtype: str | None = None
    status: str | None = None
    patient: PatientId
    sender: Party
    receiver: Party
    correlation: Correlation = Correlation()
    event_time_ms: int | None = None
    received_time_ms: int = Field(default_factory=lambda: int(time.time() * 1000))
    source: str | None = None
    trace_id: str | None = None
    payload: Payload

    @field_validator("message_id")
    @classmethod
    def _uuid(cls, v: str) -> str:
        return str(uuid.UUID(v))

    def to_record(self) -> dict[str, Any]:
        rec = self.model_dump()
        rec["patient"] = {"id": self.patient.value, "id_type": self.patient.type, "oid": self.patient.oid}
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Envelope:
        data = dict(rec)
        p = rec["patient"]
        data["patient"] = {"value": p["id"], "type": p["id_type"]}
        return cls.model_validate(data)

    def key(self, secret: bytes) -> bytes:
        """Kafka key: the keyed hash of the patient identifier (never the identifier)."""
        return patient_key(self.patient.value, secret).encode()

    def __repr__(self) -> str:
        return f"Envelope(message_id={self.message_id!r}, kind={self.kind!r}, patient=<redacted>)"


def record_key(record: dict[str, Any], secret: bytes) -> bytes:
    return patient_key(record["patient"]["id"], secret).encode()

"""Turn a file (HL7 v2 ER7 or an envelope as JSON) into an envelope record and a decision."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import ValidationError

from router.decision import Decision
from router.envelope import Envelope
from router.errors import IdentifierError, MappingError
from router.rules.engine import Engine


def dead_letter(engine: Engine, reason: str, code: str) -> Decision:
    return Decision("dead_letter", (), None, engine.version, None, None, reason, code)


def mapping_code(text: str) -> str:
    low = text.lower()
    if low.startswith("unsupported"):
        return "unsupported_type"
    if "patient" in low:
        return "invalid_patient"
    if "receiver" in low or "sender" in low or "hsa" in low:
        return "unknown_unit"
    return "unmappable"


def envelope_from_json(data: bytes) -> dict[str, Any]:
    obj = orjson.loads(data)
    if not isinstance(obj, dict):
        raise MappingError("the JSON is not an envelope object")
    obj = dict(obj)
    if isinstance(obj.get("patient"), dict) and "id" in obj["patient"]:
        obj["patient"] = {"value": obj["patient"]["id"], "type": obj["patient"].get("id_type")}
    for part in ("sender", "receiver", "correlation", "payload"):  # the patient may be a string too
        if part in obj and not isinstance(obj[part], dict) and not (part == "correlation" and obj[part] is None):
            raise MappingError(f"invalid envelope: {part}: must be an object, not {type(obj[part]).__name__}")
    if "payload" not in obj:
        obj["payload"] = {"format": "other", "data": data, "sha256": hashlib.sha256(data).hexdigest()}
    elif isinstance(obj["payload"].get("data"), str):
        raw = obj["payload"]["data"].encode()
        obj["payload"] = {**obj["payload"], "data": raw, "sha256": hashlib.sha256(raw).hexdigest()}
    try:
        return Envelope.model_validate(obj).to_record()
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if loc.startswith("patient"):
            raise MappingError(f"invalid patient identifier: {msg}") from None
        raise MappingError(f"invalid envelope: {loc}: {msg}") from None


def to_record(data: bytes, received_ms: int) -> dict[str, Any]:
    """Map file bytes to an envelope record; raises MappingError with a reason (no patient data)."""
    stripped = data.lstrip(b"\x0b \t\r\n\xef\xbb\xbf")
    if stripped.startswith(b"{"):
        try:
            return envelope_from_json(stripped)
        except orjson.JSONDecodeError as exc:
            raise MappingError(f"the file is not valid JSON: {exc}") from None
    if stripped.startswith(b"MSH"):
        from connectors.hl7v2 import map_hl7

        try:
            return map_hl7(stripped.rstrip(b"\x1c\r\n"), received_ms=received_ms, source="explain").to_record()
        except IdentifierError as exc:
            raise MappingError(f"invalid patient identifier: {exc}") from None
    raise MappingError("the file is neither HL7 v2 (starting with MSH) nor an envelope as JSON")


def explain(engine: Engine, data: bytes, as_of_ms: int, states: dict[str, str] | None = None) -> Decision:
    try:
        record = to_record(data, as_of_ms)
    except MappingError as exc:
        return dead_letter(engine, str(exc), mapping_code(str(exc)))
    return engine.decide(record, as_of_ms, states or {})

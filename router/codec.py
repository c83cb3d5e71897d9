"""Avro codec for every samex record: single-object encoding with a schema fingerprint.

Layout of every value samex writes to Kafka (Avro specification, "single object encoding"):

    0xC3 0x01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema | Avro binary

The fingerprint tells a reader which schema version wrote the record without a registry
service; the reader resolves old and new writer versions to its own schema. Schemas are parsed
once, when the codec is built.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from router.errors import (
    CodecError,
    MalformedRecordError,
    TruncatedRecordError,
    UnknownSchemaError,
)
from router.identifiers import redact

MAGIC = b"\xc3\x01"
HEADER_LEN = 10
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
RECORD_NAMES = ("envelope", "decision", "deadletter", "delivery", "control")


@dataclass(frozen=True)
class SchemaVersion:
    name: str  # envelope, decision, ...
    label: str  # "current" or "v1", "v2", ...
    parsed: Any
    fingerprint: bytes


def schema_fingerprint(schema: Mapping[str, Any]) -> bytes:
    hex_fp = fingerprint(to_parsing_canonical_form(dict(schema)), "CRC-64-AVRO")
    return struct.pack("<Q", int(hex_fp, 16))


def load_schema_file(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    except (OSError, json.JSONDecodeError) as exc:
        raise CodecError(f"{path}: cannot read Avro schema: {exc}") from exc


class Codec:
    """Encodes with the current schema of a record name; decodes any known version."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self._current: dict[str, SchemaVersion] = {}
        self._by_fp: dict[bytes, SchemaVersion] = {}
        for name in RECORD_NAMES:
            cur = self._add(name, "current", schema_dir / f"{name}.avsc")
            self._current[name] = cur
            reg = schema_dir / "registry" / name
            if reg.is_dir():
                for path in sorted(reg.glob("v*.avsc")):
                    self._add(name, path.stem, path)

    def _add(self, name: str, label: str, path: Path) -> SchemaVersion:
        raw = load_schema_file(path)
        try:
            parsed = parse_schema(raw)
        except Exception as exc:  # fastavro raises several types for bad schemas
            raise CodecError(f"{path}: invalid Avro schema: {exc}") from exc
        fp = schema_fingerprint(raw)
        version = SchemaVersion(name, label, parsed, fp)
        known = self._by_fp.get(fp)
        if known is None or label == "current":
            self._by_fp[fp] = version
        return version

    def fingerprint(self, name: str) -> bytes:
        return self._current[name].fingerprint

    def schema(self, name: str) -> Any:
        return self._current[name].parsed

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        version = self._current[name]
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(version.fingerprint)
        try:
            schemaless_writer(buf, version.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CodecError(f"{name} record does not match its schema: {_first_line(exc)}") from exc
        return buf.getvalue()

    def decode(self, data: bytes, expect: str | None = None) -> tuple[str, dict[str, Any]]:
        """Return ``(record name, record)``, resolved to the current schema of that name."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedRecordError("record value is not bytes")
        if len(data) < HEADER_LEN:
            if data[:2] == MAGIC[: len(data[:2])] and len(data) > 0:
                raise TruncatedRecordError(f"record is {len(data)} bytes, shorter than the 10-byte header")
            raise MalformedRecordError("record is empty or shorter than the single-object header")
        if data[:2] != MAGIC:
            raise MalformedRecordError("record does not start with the Avro single-object marker C3 01")
        fp = bytes(data[2:HEADER_LEN])
        writer = self._by_fp.get(fp)
        if writer is None:
            raise UnknownSchemaError(f"unknown schema fingerprint {fp[::-1].hex()}")
        if expect is not None and writer.name != expect:
            raise UnknownSchemaError(f"expected a {expect} record, got a {writer.name} record")
        reader = self._current[writer.name]
        buf = io.BytesIO(data)
        buf.seek(HEADER_LEN)
        try:
            if writer is reader:
                record = schemaless_reader(buf, reader.parsed, None)
            else:
                record = schemaless_reader(buf, writer.parsed, reader.parsed)
        except (EOFError, StopIteration) as exc:
            raise TruncatedRecordError(f"{writer.name} record ends early") from exc
        except Exception as exc:
            raise MalformedRecordError(f"{writer.name} record does not decode: {_first_line(exc)}") from exc
        if buf.tell() != len(data):
            raise MalformedRecordError(
                f"{writer.name} record has {len(data) - buf.tell()} trailing bytes after the Avro body"
            )
        return writer.name, record  # type: ignore[return-value]

    def decode_as(self, name: str, data: bytes) -> dict[str, Any]:
        return self.decode(data, expect=name)[1]


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return redact(text[:200])


@lru_cache(maxsize=4)
def default_codec(schema_dir: Path = SCHEMA_DIR) -> Codec:
    return Codec(schema_dir)

"""Static Avro schema-resolution check (Avro spec, "Schema Resolution"), both directions.

``problems(writer, reader)`` lists why data written with ``writer`` cannot be read with
``reader``. ``check_dir`` compares each current schema in ``schemas/`` with every released
version in ``schemas/registry/<name>/`` in both directions (full transitive compatibility), so
old readers keep reading new records and new readers keep reading old records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastavro.schema import parse_schema

from router.codec import RECORD_NAMES, SCHEMA_DIR

_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _norm(schema: Any) -> Any:
    if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES and "logicalType" not in schema:
        return schema["type"]
    if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES:
        return schema["type"]  # logical types resolve like their underlying type
    return schema


def _tname(schema: Any) -> str:
    schema = _norm(schema)
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    return str(schema["type"])


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def problems(writer: Any, reader: Any, path: str = "") -> list[str]:
    w, r = _norm(writer), _norm(reader)
    where = path or "<root>"
    if isinstance(w, list):
        out: list[str] = []
        for branch in w:
            out += problems(branch, r, path)
        return out
    if isinstance(r, list):
        for branch in r:
            if not problems(w, branch, path):
                return []
        return [f"{where}: writer type {_tname(w)} matches no branch of the reader's union"]
    wt, rt = _tname(w), _tname(r)
    if wt in _PRIMITIVES or rt in _PRIMITIVES:
        if wt == rt or rt in _PROMOTIONS.get(wt, set()):
            return []
        return [f"{where}: writer type {wt} cannot be read as {rt}"]
    if wt != rt:
        return [f"{where}: writer type {wt} cannot be read as {rt}"]
    if wt in ("record", "enum", "fixed") and _short(w["name"]) != _short(r["name"]) and _short(
        w["name"]
    ) not in [_short(a) for a in r.get("aliases", [])]:
        return [f"{where}: writer {wt} {w['name']} does not match reader {r['name']}"]
    if wt == "record":
        out = []
        wfields = {f["name"]: f for f in w["fields"]}
        for rf in r["fields"]:
            names = [rf["name"], *rf.get("aliases", [])]
            wf = next((wfields[n] for n in names if n in wfields), None)
            sub = f"{path}.{rf['name']}" if path else rf["name"]
            if wf is None:
                if "default" not in rf:
                    out.append(f"{sub}: reader field has no default and the writer does not write it")
            else:
                out += problems(wf["type"], rf["type"], sub)
        return out
    if wt == "enum":
        missing = [s for s in w["symbols"] if s not in r["symbols"]]
        if missing and "default" not in r:
            return [f"{where}: reader enum lacks symbols {missing} and has no default"]
        return []
    if wt == "fixed":
        return [] if w["size"] == r["size"] else [f"{where}: fixed size {w['size']} != {r['size']}"]
    if wt == "array":
        return problems(w["items"], r["items"], f"{path}[]")
    if wt == "map":
        return problems(w["values"], r["values"], f"{path}{{}}")
    return [f"{where}: unsupported type {wt}"]


def load(path: Path) -> Any:
    return parse_schema(json.loads(path.read_text(encoding="utf-8")), expand=True, _write_hint=False)


def check_pair(old: Any, new: Any) -> list[str]:
    """Problems with new readers on old data (backward) and old readers on new data (forward)."""
    return [f"backward (new reads old): {p}" for p in problems(old, new)] + [
        f"forward (old reads new): {p}" for p in problems(new, old)
    ]


def check_dir(schema_dir: Path = SCHEMA_DIR) -> list[str]:
    out: list[str] = []
    for name in RECORD_NAMES:
        current_path = schema_dir / f"{name}.avsc"
        try:
            current = load(current_path)
        except Exception as exc:
            out.append(f"{current_path}: cannot parse: {exc}")
            continue
        reg = schema_dir / "registry" / name
        versions = sorted(reg.glob("v*.avsc")) if reg.is_dir() else []
        if not versions:
            out.append(f"{reg}: no released version; copy {current_path.name} to {reg}/v1.avsc")
        for released in versions:
            try:
                old = load(released)
            except Exception as exc:
                out.append(f"{released}: cannot parse: {exc}")
                continue
            out += [f"{current_path} vs {released}: {p}" for p in check_pair(old, current)]
    return out

"""Schema evolution: the next envelope version and the current one read each other's records."""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from router.cli import cli
from router.codec import SCHEMA_DIR, Codec, default_codec
from router.schemacompat import check_dir, check_pair, load
from router.synth import envelope_record, load_units, test_personnummer

REPO = Path(__file__).resolve().parent.parent
UNITS = load_units()


def _next_envelope_schema() -> dict:
    """The plausible next version: a new optional field and a new optional correlation id."""
    schema = json.loads((SCHEMA_DIR / "envelope.avsc").read_text())
    schema["fields"].append({"name": "priority", "type": ["null", "string"], "default": None})
    corr = next(f for f in schema["fields"] if f["name"] == "correlation")
    corr["type"]["fields"].append({"name": "episode_id", "type": ["null", "string"], "default": None})
    return schema


def _schema_dir(tmp: Path, current: dict, released: list[dict]) -> Path:
    d = tmp / "schemas"
    shutil.copytree(SCHEMA_DIR, d)
    (d / "envelope.avsc").write_text(json.dumps(current))
    reg = d / "registry" / "envelope"
    shutil.rmtree(reg)
    reg.mkdir()
    for i, s in enumerate(released, 1):
        (reg / f"v{i}.avsc").write_text(json.dumps(s))
    return d


def _record(seed: int = 1) -> dict:
    rng = random.Random(seed)
    return envelope_record(rng, UNITS[0], UNITS[5], "lab_order", test_personnummer(rng), 1_700_000_000_000)


def test_next_version_reads_current_records(tmp_path):
    current = json.loads((SCHEMA_DIR / "envelope.avsc").read_text())
    nxt = _next_envelope_schema()
    new_reader = Codec(_schema_dir(tmp_path, nxt, [current]))
    written = default_codec().encode("envelope", _record())
    _, rec = new_reader.decode(written)
    assert rec["priority"] is None and rec["correlation"]["episode_id"] is None
    assert rec["correlation"]["placer_order_number"] == _record()["correlation"]["placer_order_number"]


def test_current_version_reads_next_records(tmp_path):
    current = json.loads((SCHEMA_DIR / "envelope.avsc").read_text())
    nxt = _next_envelope_schema()
    writer = Codec(_schema_dir(tmp_path / "w", nxt, [current]))
    rec = _record()
    rec["priority"] = "akut"
    rec["correlation"]["episode_id"] = "EP1"
    written = writer.encode("envelope", rec)
    # An old reader knows the next writer schema from the registry (released before use).
    old_reader = Codec(_schema_dir(tmp_path / "r", current, [current, nxt]))
    _, back = old_reader.decode(written)
    assert "priority" not in back and "episode_id" not in back["correlation"]
    assert back == _record()


def test_the_shipped_schemas_pass_the_check():
    assert check_dir(SCHEMA_DIR) == []
    result = CliRunner().invoke(cli, ["schemas", "check"])
    assert result.exit_code == 0, result.output


def test_a_breaking_change_is_caught_in_both_directions():
    current = load(SCHEMA_DIR / "envelope.avsc")
    # new required field without default: new readers cannot read old data
    broken = json.loads((SCHEMA_DIR / "envelope.avsc").read_text())
    broken["fields"].append({"name": "priority", "type": "string"})
    assert any("backward" in p and "priority" in p for p in check_pair(current, load_json(broken)))
    # removing a field that has no default: old readers cannot read new data
    removed = json.loads((SCHEMA_DIR / "envelope.avsc").read_text())
    removed["fields"] = [f for f in removed["fields"] if f["name"] != "received_time_ms"]
    assert any("forward" in p and "received_time_ms" in p for p in check_pair(current, load_json(removed)))
    # a new enum symbol without a default breaks old readers
    kind = json.loads((SCHEMA_DIR / "envelope.avsc").read_text())
    next(f for f in kind["fields"] if f["name"] == "kind")["type"]["symbols"].append("remissvar")
    assert any("forward" in p and "enum" in p for p in check_pair(current, load_json(kind)))


def load_json(schema: dict):
    from fastavro.schema import parse_schema

    return parse_schema(schema, expand=True, _write_hint=False)


def test_make_schemas_check_fails_on_a_deliberately_broken_schema(tmp_path):
    broken = json.loads((SCHEMA_DIR / "envelope.avsc").read_text())
    for f in broken["fields"]:
        if f["name"] == "received_time_ms":
            f["type"] = "string"  # long -> string: neither direction resolves
    d = _schema_dir(tmp_path, broken, [json.loads((SCHEMA_DIR / "envelope.avsc").read_text())])
    cli_run = CliRunner().invoke(cli, ["schemas", "check", "--dir", str(d)])
    assert cli_run.exit_code == 1
    assert "received_time_ms" in cli_run.output and "long cannot be read as string" in cli_run.output
    make = subprocess.run(
        ["make", "-s", "schemas-check", f"SCHEMAS_DIR={d}", f"PYTHON={sys.executable}"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert make.returncode != 0
    assert "received_time_ms" in make.stdout
    ok = subprocess.run(["make", "-s", "schemas-check"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr

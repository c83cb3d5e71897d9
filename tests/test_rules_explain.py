"""`samex rules explain` on envelopes as JSON and HL7 v2 files."""

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from router.cli import cli
from router.rules.load import load_rules
from router.synth import test_personnummer

REPO = Path(__file__).resolve().parent.parent
RULES = load_rules(REPO / "rules")
PNR = test_personnummer(random.Random(11))


def unit(utype: str, etapp: str | None):
    return next(u for u in RULES.units.values() if u.unit_type == utype and RULES.unit_etapp.get(u.hsa_id) == etapp)


def explain(tmp_path: Path, content: bytes | str, *args: str):
    f = tmp_path / "msg"
    f.write_bytes(content.encode() if isinstance(content, str) else content)
    result = CliRunner().invoke(cli, ["rules", "explain", "--rules", str(REPO / "rules"), *args, str(f)])
    return result


def envelope_json(kind: str, sender: str, receiver: str, patient: str = PNR) -> str:
    return json.dumps({"kind": kind, "patient": patient, "sender": {"unit_hsa_id": sender},
                       "receiver": {"unit_hsa_id": receiver}})


@pytest.mark.parametrize("as_of,expected", [("2026-04-21T05:59 Europe/Stockholm", "elvis"),
                                            ("2026-04-21T06:00 Europe/Stockholm", "millennium"),
                                            ("2026-04-21T04:00:00+00:00", "millennium"),
                                            ("2026-04-21 05:59:59", "elvis")])
def test_json_envelope_around_go_live(tmp_path, as_of, expected):
    recv = unit("sjukhus", "etapp-3-norra-ostra")
    r = explain(tmp_path, envelope_json("remiss", unit("primarvard", "etapp-4-vastra").hsa_id, recv.hsa_id),
                "--as-of", as_of)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["destinations"] == [expected]
    assert out["rule"] == "remiss-sjukhus" and out["etapp"] == "etapp-3-norra-ostra"
    assert out["rules_version"] == RULES.version and out["reason"]


def test_states_option(tmp_path):
    recv = unit("sjukhus", "etapp-1-sodra-pd1")
    body = envelope_json("lab_result", unit("lab", "etapp-1-sodra-pd1").hsa_id, recv.hsa_id)
    r = explain(tmp_path, body, "--as-of", "2025-01-01T12:00 Europe/Stockholm", "--state", "etapp-1-sodra-pd1=paused")
    assert json.loads(r.stdout)["destinations"] == ["melior"]
    r = explain(tmp_path, body, "--state", "etapp-1-sodra-pd1=hold")
    out = json.loads(r.stdout)
    assert out["outcome"] == "park" and out["destinations"] == ["park:etapp-1-sodra-pd1"]


@pytest.mark.parametrize("body,reason", [
    (lambda: envelope_json("remiss", unit("sjukhus", "etapp-2-sodra").hsa_id, "SE2321000131-E999999999999"),
     "not in the unit directory"),
    (lambda: envelope_json("remiss", unit("sjukhus", "etapp-2-sodra").hsa_id, unit("lab", "etapp-2-sodra").hsa_id),
     "no route"),
    (lambda: envelope_json("remiss", unit("sjukhus", "etapp-2-sodra").hsa_id,
                           unit("sjukhus", "etapp-2-sodra").hsa_id, patient=PNR[:-1] + str((int(PNR[-1]) + 1) % 10)),
     "invalid patient identifier"),
])
def test_unroutable_prints_dead_letter_with_reason(tmp_path, body, reason):
    r = explain(tmp_path, body())
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["destinations"] == ["dead-letter"] and reason in out["reason"]
    assert PNR[:8] not in r.output


def test_unreadable_file_exits_2(tmp_path):
    r = CliRunner().invoke(cli, ["rules", "explain", str(tmp_path / "missing.hl7")])
    assert r.exit_code == 2


def test_garbage_is_a_dead_letter_not_a_crash(tmp_path):
    r = explain(tmp_path, b"\x00\x01garbage")
    assert r.exit_code == 0 and json.loads(r.stdout)["destinations"] == ["dead-letter"]


@pytest.mark.parametrize("part,value", [("payload", "x"), ("payload", None), ("payload", [1]), ("sender", "x"),
                                        ("receiver", None), ("correlation", "x")])
def test_an_envelope_part_that_is_not_an_object_is_a_dead_letter(tmp_path, part, value):
    body = json.loads(envelope_json("remiss", unit("sjukhus", "etapp-2-sodra").hsa_id,
                                    unit("sjukhus", "etapp-2-sodra").hsa_id))
    body[part] = value
    r = explain(tmp_path, json.dumps(body))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["destinations"] == ["dead-letter"] and f"{part}: must be an object" in out["reason"], out
    assert PNR[:8] not in r.output


def test_a_patient_that_is_a_list_is_a_dead_letter(tmp_path):
    body = json.loads(envelope_json("remiss", unit("sjukhus", "etapp-2-sodra").hsa_id,
                                    unit("sjukhus", "etapp-2-sodra").hsa_id))
    body["patient"] = [PNR]
    r = explain(tmp_path, json.dumps(body))
    assert r.exit_code == 0 and json.loads(r.stdout)["destinations"] == ["dead-letter"], r.output
    assert PNR[:8] not in r.output


def test_a_failed_check_digit_is_said_once(tmp_path):
    bad = PNR[:-1] + str((int(PNR[-1]) + 1) % 10)
    body = envelope_json("remiss", unit("sjukhus", "etapp-2-sodra").hsa_id, unit("sjukhus", "etapp-2-sodra").hsa_id,
                         patient=bad)
    reason = json.loads(explain(tmp_path, body).stdout)["reason"]
    assert reason.count("patient identifier") == 1 and "Luhn" in reason, reason

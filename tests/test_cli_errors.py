"""Bad input and a missing broker give one clear line and exit 2, never a traceback (no broker needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kafka_helpers import REPO, SAMEX, free_port


def samex(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update({"SAMEX_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", **env})  # nothing listens there
    return subprocess.run([SAMEX, *args], env=full, capture_output=True, text=True, cwd=REPO, timeout=120)


def assert_clean_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.mark.parametrize("args", [
    ("etapp", "status"),
    ("etapp", "hold", "etapp-4-vastra", "--reason", "test"),
    ("rules", "publish", "rules", "--reason", "test"),
    ("simulate", "envelopes", "--count", "1"),
])
def test_no_broker_is_one_line_not_a_traceback(args):
    assert_clean_error(samex(*args), "samex: Kafka at 127.0.0.1:", "SAMEX_KAFKA_BOOTSTRAP")


def test_a_bad_setting_names_the_variable_and_not_its_value():
    r = samex("worker", SAMEX_WEB_PORT="not-a-port")
    assert_clean_error(r, "SAMEX_WEB_PORT")
    assert "not-a-port" not in r.stderr


def test_etapp_arguments_are_checked_before_the_broker_is_asked():
    r = samex("etapp", "hold", "etapp-4-vastra", "--reason", "test", "--at", "not a time")
    assert_clean_error(r, "cannot read the instant")


def test_replay_refuses_mixed_modes():
    for extra in (["--resend", "--reason", "x", "--dry-run"], ["--to-topic", "sandbox", "--dry-run"],
                  ["--to-topic", "sandbox", "--resend", "--reason", "x"]):
        assert_clean_error(samex("replay", "--from", "2026-11-20T08:00", *extra), "choose one of")


def test_explain_refuses_an_unknown_etapp_state(tmp_path: Path):
    env = tmp_path / "e.json"
    env.write_text("{}")
    r = samex("rules", "explain", "--state", "etapp-9=live", str(env))
    assert_clean_error(r, "unknown etapp etapp-9", "etapp-4-vastra")


def test_outbound_connectors_refuse_an_unknown_system_and_a_bad_url():
    assert_clean_error(samex("connector", "mllp-out", "--system", "melio", "--endpoint", "127.0.0.1:1"),
                       "unknown system 'melio'", "melior")
    assert_clean_error(samex("connector", "fhir-out", "--system", "millennium", "--base", "millennium:8080"),
                       "is not an http(s) URL")


def test_publish_names_the_file_in_the_folder_given(tmp_path: Path):
    rules = tmp_path / "my-rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "plan.yaml").write_text((rules / "plan.yaml").read_text() + "etapper: [\n")
    r = samex("rules", "publish", str(rules), "--reason", "test")
    assert r.returncode == 1 and f"{rules}/plan.yaml:" in r.stderr and "nothing was published" in r.stderr


def test_trace_refuses_an_index_path_in_a_missing_folder(tmp_path: Path):
    missing = tmp_path / "no" / "such"
    assert_clean_error(samex("trace", "abc", "--no-sync", SAMEX_INDEX_URL=str(missing / "x.sqlite")),
                       "does not exist")
    assert not missing.exists()

"""`samex settings`: every setting with its environment variable, the value in effect, the default and
what it does; the patient key is never printed."""

from __future__ import annotations

import json

from click.testing import CliRunner

from router.cli import cli
from router.settings import DEV_PATIENT_KEY, Settings

FAKE_KEY = "test-key-not-a-real-secret-0123456789"  # a test value, clearly not a deployment's key


def run(*args: str, **env: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["settings", *args], env=env)


def test_every_setting_is_listed_with_its_variable_and_description() -> None:
    r = run("--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert [x["env"] for x in rows] == [f"SAMEX_{n.upper()}" for n in Settings.model_fields]
    assert all(x["description"] for x in rows), [x["env"] for x in rows if not x["description"]]
    commit = next(x for x in rows if x["env"] == "SAMEX_COMMIT_INTERVAL_MS")
    assert commit["value"] == commit["default"] == 1000 and commit["changed"] is False


def test_a_value_from_the_environment_is_shown_and_marked() -> None:
    r = run(SAMEX_COMMIT_INTERVAL_MS="250")
    assert r.exit_code == 0, r.output
    assert "* SAMEX_COMMIT_INTERVAL_MS=250  (default 1000)" in r.output
    assert "  SAMEX_BATCH_MAX=2000" in r.output
    only = run("--changed", SAMEX_COMMIT_INTERVAL_MS="250")
    assert [ln for ln in only.output.splitlines() if ln.startswith(("*", "  SAMEX"))] == \
        ["* SAMEX_COMMIT_INTERVAL_MS=250  (default 1000)"]


def test_the_patient_key_is_never_printed() -> None:
    for args in ((), ("--json",), ("--changed",)):
        r = run(*args, SAMEX_PATIENT_KEY=FAKE_KEY)
        assert r.exit_code == 0, r.output
        assert FAKE_KEY not in r.output and DEV_PATIENT_KEY not in r.output
        assert "SAMEX_PATIENT_KEY" in r.output and "(set)" in r.output
    assert "SAMEX_PATIENT_KEY=(the development key)" in run().output


def test_an_invalid_value_names_the_variable_not_the_value() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    samex = str(Path(sys.executable).parent / "samex")
    p = subprocess.run([samex, "settings"], capture_output=True, text=True,
                       env={**os.environ, "SAMEX_BATCH_MAX": "-7"})
    assert p.returncode == 2, p.stderr
    assert "SAMEX_BATCH_MAX" in p.stderr and "-7" not in p.stderr

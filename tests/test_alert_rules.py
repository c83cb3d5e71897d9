"""The alert rules in deploy/prometheus/alerts.yml: valid for promtool, every alert unit-tested with
`promtool test rules`, every alert annotated and with a runbook section in docs/operations.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.prometheus
REPO = Path(__file__).resolve().parent.parent
PROM = REPO / "deploy" / "prometheus"
ALERTS = PROM / "alerts.yml"
ALERTS_TEST = PROM / "alerts_test.yml"
OPERATIONS = REPO / "docs" / "operations.md"
# The alerts issue 8 asks for, by what they watch.
REQUIRED = {
    "SamexDeadLetters": "samex_dead_letters_total",
    "SamexConsumerLagGrowing": "samex_consumer_lag",
    "SamexSourceSilent": "samex:source_silence_seconds:working_hours",
    "SamexDestinationRefusing": "samex_delivery_refusals_total",
    "SamexEtappHoldOverdue": "samex_etapp_hold_until_timestamp_seconds",
    "SamexRulesRefused": "samex_rules_refused_total",
    "SamexWorkerDown": 'up{job="samex-worker"}',
}


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool is missing: run scripts/ensure-prometheus (Debian package prometheus)", pytrace=False)
    return path


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_check_rules() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_pass() -> None:
    out = subprocess.run([promtool(), "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True,
                         cwd=PROM, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A test file expecting the wrong thing fails: the suite above is not vacuous."""
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    data = yaml.safe_load(ALERTS_TEST.read_text())
    case = next(t for t in data["tests"] if t["name"] == "worker down")
    for check in case["alert_rule_test"]:
        check["exp_alerts"] = [] if check["exp_alerts"] else [{"exp_labels": {"severity": "critical"}}]
    data["tests"] = [case]
    (tmp_path / "bad_test.yml").write_text(yaml.safe_dump(data))
    out = subprocess.run([promtool(), "test", "rules", "bad_test.yml"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.returncode != 0


def test_required_alerts_exist_and_watch_the_right_metric() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    for name, metric in REQUIRED.items():
        assert name in rules, f"missing alert {name}"
        assert metric in rules[name]["expr"], (name, metric)


def test_every_alert_is_annotated_and_has_a_runbook_section() -> None:
    doc = OPERATIONS.read_text()
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", doc, flags=re.M)}
    for rule in alert_rules():
        ann = rule.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), rule["alert"]
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), rule["alert"]
        url = ann.get("runbook_url", "")
        assert url.startswith("docs/operations.md#"), rule["alert"]
        anchor = url.split("#", 1)[1]
        assert anchor == rule["alert"].lower() and anchor in headings, (rule["alert"], anchor)


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for t in tests:
        for check in t.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), f"alerts never expected to fire in alerts_test.yml: {names - firing}"
    assert names - quiet == set(), f"alerts never expected to stay quiet in alerts_test.yml: {names - quiet}"


def test_promtool_check_config_of_the_compose_prometheus(tmp_path: Path) -> None:
    """deploy/prometheus/prometheus.yml is valid (with its rule file path pointed at the repository copy)."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(ALERTS)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = subprocess.run([promtool(), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr

"""deploy/grafana/samex.json: every metric its queries use is exported by a running samex process.

Worker metrics are checked against a running worker's /metrics after real traffic (routed, parked
while an etapp is on hold, released, dead-lettered). The delivery and inbound-connector metrics
(samex_deliveries_total, samex_delivery_refusals_total, samex_delivery_seconds, samex_outbound_lag,
samex_inbound_total) are checked against running `samex connector mllp-out` and `mllp-in`
processes' /metrics: their series exist from start-up at 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.kafka_helpers import SAMEX, WorkerProcess, free_port, settings_env
from tests.ops_helpers import publish_broken_rules, router_settings, run_flow

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = json.loads((REPO / "deploy" / "grafana" / "samex.json").read_text())
PROMETHEUS_OWN = {"up"}  # made by Prometheus itself for every scrape target
CONNECTOR_ONLY = {"samex_deliveries_total", "samex_delivery_refusals_total", "samex_delivery_seconds_bucket",
                  "samex_outbound_lag", "samex_inbound_total"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
            "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, keywords or variables)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    e = re.sub(r"\$\w+", "", e)  # dashboard variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def panel_queries() -> list[tuple[str, str]]:
    out = []
    for p in DASHBOARD["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def exported(text: str) -> set[str]:
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def scrape(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return r.read().decode()  # type: ignore[no-any-return]
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"no /metrics on port {port}: {log.read_text(errors='replace')[-3000:]}")


def connector_expositions(s, tmp_path: Path) -> str:
    """/metrics of a running mllp-out (for melior; nothing listens at its endpoint) and mllp-in."""
    env = settings_env(s)
    out_port, in_port = free_port(), free_port()
    commands = {
        "mllp-out": [SAMEX, "connector", "mllp-out", "--system", "melior", "--endpoint", f"127.0.0.1:{free_port()}",
                     "--state-dir", str(tmp_path / "state"), "--metrics-port", str(out_port)],
        "mllp-in": [SAMEX, "connector", "mllp-in", "--port", str(free_port()), "--metrics-port", str(in_port)],
    }
    procs = {}
    try:
        for name, args in commands.items():
            log = tmp_path / f"{name}.log"
            with open(log, "wb") as fh:
                procs[name] = (subprocess.Popen(args, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                                start_new_session=True), log)
        return "".join(scrape(port, *procs[name]) for name, port in (("mllp-out", out_port), ("mllp-in", in_port)))
    finally:
        for proc, _log in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)


def test_metric_name_extraction() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(samex_end_to_end_seconds_bucket[5m])))') == \
        {"samex_end_to_end_seconds_bucket"}
    assert metric_names('max by (etapp) (samex_etapp_state{state="hold"}) == 1 and on(etapp) x_y offset 5m') == \
        {"samex_etapp_state", "x_y"}
    assert metric_names('time() - max by (source) (samex_last_message_timestamp_seconds)') == \
        {"samex_last_message_timestamp_seconds"}
    assert metric_names('up{job=~"samex-.*"}') == {"up"}


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    exprs = " ".join(e for _, e in panel_queries())
    for needed in ("by (etapp) (rate(samex_routed_total", "by (kind) (rate(samex_routed_total",
                   "by (destination) (rate(samex_routed_total", "samex_dead_letters_total",
                   "histogram_quantile(0.5, sum by (le) (rate(samex_end_to_end_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le) (rate(samex_end_to_end_seconds_bucket",
                   "samex_consumer_lag", "samex_etapp_state", "samex_parked_messages", "samex_deliveries_total",
                   "samex_delivery_refusals_total"):
        assert needed in exprs, needed
    assert any(p["type"] == "state-timeline" and "samex_etapp_state" in p["targets"][0]["expr"]
               for p in DASHBOARD["panels"])
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.kafka
async def test_every_dashboard_metric_is_exported(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    s = await router_settings(kafka_bootstrap, topic_prefix)
    w = WorkerProcess(s).start()
    try:
        w.wait_ready()
        await run_flow(kafka_bootstrap, s, w)
        publish_broken_rules(s, tmp_path, w)
        worker = exported(w.get("/metrics").decode())
    finally:
        w.stop()
    connector = exported(connector_expositions(s, tmp_path))
    missing = []
    for title, expr in panel_queries():
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr}"
        for name in names - PROMETHEUS_OWN:
            source = connector if name in CONNECTOR_ONLY else worker
            if name not in source:
                missing.append((title, name))
    assert not missing, f"dashboard metrics no samex process exports: {missing}"

"""A real Prometheus (Debian package `prometheus`) scrapes a running worker; the test reads the routed
counter and the latency histograms back through Prometheus' HTTP API, sees the samex alert rules
loaded and evaluated (the dead letter of the flow makes SamexDeadLetters fire), and runs every query
of the Grafana dashboard against it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kafka_helpers import WorkerProcess, free_port, produce_raw, produce_records, read_topic, synth_records
from tests.ops_helpers import metric_sum, router_settings

pytestmark = [pytest.mark.kafka, pytest.mark.prometheus]
REPO = Path(__file__).resolve().parent.parent


class Prometheus:
    def __init__(self, tmp: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        if not binary:
            pytest.fail("prometheus is missing: run scripts/ensure-prometheus (Debian package prometheus)",
                        pytrace=False)
        self.binary = binary
        self.port = free_port()
        self.dir = tmp
        shutil.copy(REPO / "deploy" / "prometheus" / "alerts.yml", tmp / "alerts.yml")
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                  "rule_files": [str(tmp / "alerts.yml")],
                  "scrape_configs": [{"job_name": "samex-worker", "static_configs": [{"targets": [target]}]}]}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = tmp / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]  # type: ignore[no-any-return]

    def wait(self, what: str, pred: Any, timeout_s: float = 45) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-3000:]}")
            try:
                last = pred()
                if last:
                    return last
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what} (last: {last}); log: {self.log.read_text()[-2000:]}")


def value(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if result else None


async def test_real_prometheus_scrapes_a_worker(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    s = await router_settings(kafka_bootstrap, topic_prefix)
    w = WorkerProcess(s).start()
    prom = Prometheus(tmp_path, f"127.0.0.1:{w.port}")
    try:
        w.wait_ready()
        prom.start()
        prom.wait("the worker target to be up", lambda: value(prom.query('up{job="samex-worker"}')) == 1)
        records = synth_records(600, seed=31, patients=50, bad_share=0.02)
        await produce_records(kafka_bootstrap, s.inbound_topic, records, stamp_now=True)
        await produce_raw(kafka_bootstrap, s.inbound_topic, [(b"k", b"garbage, not an envelope")])
        await read_topic(kafka_bootstrap, s.decisions_topic, expect=len(records) + 1)
        routed = metric_sum(w, "samex_routed_total")
        assert routed > 0
        # the routed counter, as Prometheus scraped it, equals the worker's own count
        prom.wait("samex_routed_total in Prometheus", lambda: value(prom.query("sum(samex_routed_total)")) == routed)
        by_dest = prom.query("sum by (destination) (samex_routed_total)")
        assert {r["metric"]["destination"] for r in by_dest} >= {"millennium"}
        # the latency histograms: buckets stored, quantiles computable
        buckets = prom.query("samex_end_to_end_seconds_bucket")
        assert len(buckets) > 5 and any(r["metric"]["le"] == "+Inf" for r in buckets)
        assert value(prom.query("sum(samex_end_to_end_seconds_count)")) == routed
        p99 = prom.wait("end-to-end p99", lambda: value(prom.query(
            "histogram_quantile(0.99, sum by (le) (rate(samex_end_to_end_seconds_bucket[30s])))")))
        assert 0 < p99 <= 60
        p50 = value(prom.query("histogram_quantile(0.5, sum by (le) (rate(samex_decision_seconds_bucket[30s])))"))
        # a quantile Prometheus could compute from the buckets, in seconds (not a speed check)
        assert p50 is not None and 0 < p50 < 1
        assert value(prom.query("sum(samex_decision_seconds_count)")) >= len(records)
        # the samex rules are loaded and healthy; the dead letter fires SamexDeadLetters
        groups = prom.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert rules and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        alerts = prom.wait("SamexDeadLetters", lambda: [a for a in prom.api("alerts")["alerts"]
                                                         if a["labels"]["alertname"] == "SamexDeadLetters"
                                                         and a["labels"]["reason"] == "undecodable"])
        assert alerts[0]["state"] == "firing"
        assert value(prom.query("samex:source_silence_seconds")) is not None
        # every query of the Grafana dashboard is valid PromQL for this Prometheus, and the panels fed by the
        # worker have data (once a few scrapes are in, so that rate() has points)
        prom.wait("a few scrapes of the routed counter",
                  lambda: (value(prom.query("min(count_over_time(samex_routed_total[30s]))")) or 0) >= 3)
        dashboard = json.loads((REPO / "deploy" / "grafana" / "samex.json").read_text())
        empty = set()
        for panel in dashboard["panels"]:
            for t in panel.get("targets", []):
                if not prom.query(t["expr"].replace("$__rate_interval", "30s")):
                    empty.add((panel["title"], t["refId"]))
        worker_panels = {"Routed per etapp", "Routed per kind", "Routed per destination", "Inbound per source",
                         "Seconds since the last message per source", "Dead letters by reason",
                         "End-to-end latency p50 / p99", "Decision time p50 / p99", "Router consumer lag per topic",
                         "Etapp states over time", "Active rule set", "samex processes up"}
        assert worker_panels <= {p["title"] for p in dashboard["panels"]}
        assert not {(title, "A") for title in worker_panels} & empty, sorted(empty)
    finally:
        prom.stop()
        w.stop()

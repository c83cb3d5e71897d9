"""Traffic for the operations tests (dashboard, real Prometheus, status page, privacy): a worker that
has routed, parked (etapp on hold), released and dead-lettered messages."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from router.codec import default_codec
from router.kafkaio import consumer
from router.rules.engine import Engine
from router.rules.load import load_rules
from router.settings import Settings
from router.topics import ensure_router_topics
from tests.kafka_helpers import (
    REPO,
    SAMEX,
    WorkerProcess,
    produce_raw,
    produce_records,
    read_topic,
    settings_env,
    synth_records,
    topic_settings,
)

ENGINE = Engine(load_rules(REPO / "rules"))
HELD = "etapp-4-vastra"
codec = default_codec()


_coordinator_ready: set[str] = set()


async def warm_group_coordinator(bootstrap: str, topic: str, timeout_s: float = 60) -> None:
    """Join a consumer group once per broker, so that the group coordinator (and __consumer_offsets)
    exists before the first worker starts. On a brand-new broker a worker that meets
    GroupCoordinatorNotAvailable at start-up can stay not ready (seen with faust 0.15; reported)."""
    if bootstrap in _coordinator_ready:
        return
    c = consumer(bootstrap, topic, group_id="samex-ops-tests-warmup")
    await c.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not c.assignment() and time.monotonic() < deadline:
            await c.getmany(timeout_ms=200)
        assert c.assignment(), "the broker's group coordinator did not become available"
    finally:
        await c.stop()
    _coordinator_ready.add(bootstrap)


async def router_settings(bootstrap: str, prefix: str) -> Settings:
    s = topic_settings(bootstrap, prefix)
    await ensure_router_topics(s, ENGINE.systems, ENGINE.golive_ms)
    await warm_group_coordinator(bootstrap, s.inbound_topic)
    return s


def samex_cmd(s: Settings, *args: str) -> str:
    out = subprocess.run([SAMEX, *args], env=settings_env(s), capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def publish_broken_rules(s: Settings, tmp: Path, w: WorkerProcess) -> None:
    """Force an invalid rule set onto the control topic; the worker refuses it (samex_rules_refused_total)."""
    broken = tmp / "rules-broken"
    shutil.copytree(REPO / "rules", broken)
    (broken / "routes" / "base.yaml").write_text("routes: [")
    samex_cmd(s, "rules", "publish", str(broken), "--force-invalid")
    wait_until(lambda: metric_sum(w, "samex_rules_refused_total") >= 1, "the broken rule set refused")


def metric_sum(w: WorkerProcess, sample: str) -> float:
    """Sum of every sample called ``sample`` in the worker's /metrics."""
    text = w.get("/metrics").decode()
    return sum(x.value for fam in text_string_to_metric_families(text) for x in fam.samples if x.name == sample)


def status(w: WorkerProcess) -> dict[str, Any]:
    return json.loads(w.get("/status?json"))  # type: ignore[no-any-return]


def wait_until(pred: Any, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def etapp_state(w: WorkerProcess, etapp: str) -> str:
    return next(e["state"] for e in status(w)["etapper"] if e["etapp"] == etapp)


async def run_flow(bootstrap: str, s: Settings, w: WorkerProcess, records: list[dict] | None = None,
                   raw: list[tuple[bytes | None, bytes]] | None = None, release: bool = True,
                   until: str = "2099-01-01T00:00") -> list[dict]:
    """Hold HELD, send the records (default: 400 synthetic ones, some unroutable) and the raw bad
    records, wait for every decision, then (optionally) release HELD and wait for the parked ones.
    Returns the decoded decision records."""
    samex_cmd(s, "etapp", "hold", HELD, "--reason", "ops test: hold", "--until", until)
    wait_until(lambda: etapp_state(w, HELD) == "hold", f"{HELD} on hold")
    time.sleep(0.2)
    records = records if records is not None else synth_records(400, seed=8, patients=40, bad_share=0.05)
    await produce_records(bootstrap, s.inbound_topic, records, stamp_now=True)
    raw = raw if raw is not None else [(b"k-bad", b"this is not an envelope")]
    if raw:
        await produce_raw(bootstrap, s.inbound_topic, raw)
    total = len(records) + len(raw)
    decisions = [codec.decode_as("decision", r.value)
                 for r in await read_topic(bootstrap, s.decisions_topic, expect=total)]
    assert len(decisions) >= total, (len(decisions), total)
    if release:
        parked = sum(1 for d in decisions if d["outcome"] == "parked")
        assert parked, "no message was parked: the held etapp received nothing"
        samex_cmd(s, "etapp", "release", HELD, "--reason", "ops test: release")
        wait_until(lambda: metric_sum(w, "samex_released_total") >= parked, "parked messages released")
        # the batch's bookkeeping (counts, logs) runs after its outputs are acknowledged
        wait_until(lambda: status(w)["counts"]["in"] >= total + parked, "the release batches accounted")
    return decisions

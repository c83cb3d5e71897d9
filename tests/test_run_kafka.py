"""`samex run` (what `make run` starts) against the test broker: it routes traffic and stops cleanly."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.kafka_helpers import REPO, SAMEX, read_topic, settings_env, topic_settings

pytestmark = pytest.mark.kafka


async def test_samex_run_routes_and_stops_cleanly(kafka_bootstrap, topic_prefix, tmp_path):
    s = topic_settings(kafka_bootstrap, topic_prefix)
    env = settings_env(s, SAMEX_STATE_DIR=str(tmp_path))
    out = subprocess.run([SAMEX, "run", "--duration", "40", "--rate", "60", "--plain", "--workers", "2"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "exited with" not in out.stdout, out.stdout
    summary = [line for line in out.stdout.splitlines() if line.startswith("summary: ")]
    assert summary, out.stdout
    n_in = int(re.search(r"in=(\d+)", summary[-1]).group(1))
    routed = sum(int(x) for x in re.findall(r"routed\[[^\]]+\]=(\d+)", summary[-1]))
    assert n_in > 300 and routed > 0.9 * n_in, summary[-1]
    assert "rules=" in summary[-1] and "rules=-" not in summary[-1]
    # the etapper as they route (every go-live of the example plan is past), no systems with nothing delivered
    assert "etapp[etapp-4-vastra]=scheduled/live" in summary[-1] and "etapp[etapp-1-sodra-pd1]=" in summary[-1]
    assert not re.search(r"delivered\[[^\]]+\]=0\b", summary[-1]), summary[-1]
    # the traffic started only once the workers owned the inbound partitions
    lines = out.stdout.splitlines()
    waited = next(i for i, line in enumerate(lines) if line.startswith("waiting for the workers"))
    assert all(i > waited for i, line in enumerate(lines) if re.match(r"started (sender|traffic)", line)), out.stdout
    assert "not ready" not in out.stdout, out.stdout
    # every child was stopped: none of their process groups is left
    logs = list((tmp_path / "run-logs").glob("*/*.log"))
    assert {p.stem for p in logs} >= {"worker-1", "worker-2", "index", "mllp-in", "fhir-in", "sender-mllp",
                                      "sender-fhir", "sim-systems", "sim-millennium-fhir", "fhir-out-millennium",
                                      "mllp-out-millennium", "mllp-out-melior"}
    delivered = sum(int(x) for x in re.findall(r"delivered\[[^\]]+\]=(\d+)", summary[-1]))
    assert delivered > 0.8 * routed, summary[-1]  # the connectors delivered to the simulated systems
    pids = [int(p) for p in re.findall(r"started \S+ pid (\d+)", out.stdout)]
    assert len(pids) == len(logs), out.stdout
    # where each worker's /metrics is, also when stdout is not a terminal (no live table)
    assert len(re.findall(r"started worker-\d pid \d+, metrics http://127\.0\.0\.1:\d+/metrics", out.stdout)) == 2
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], pid
    # the index feeder ran with the stack: a decided message is in the trace index without a sync
    from router.codec import default_codec

    dec = await read_topic(kafka_bootstrap, s.decisions_topic, idle_s=1.0)
    mid = default_codec().decode_as("decision", dec[len(dec) // 2].value)["message_id"]
    tr = subprocess.run([SAMEX, "trace", mid, "--no-sync", "--json"], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=60)
    assert tr.returncode == 0 and mid in tr.stdout and "decided" in tr.stdout, tr.stdout + tr.stderr

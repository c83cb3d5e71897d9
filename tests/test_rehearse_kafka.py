"""`samex rehearse` on recorded traffic: no change under the same rules, the go-live's effect under
moved rules, messages that would become unroutable, and nothing produced."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest

from router.rules.engine import Engine
from router.rules.load import load_rules
from router.topics import ensure_router_topics
from tests.kafka_helpers import (
    REPO,
    SAMEX,
    WorkerProcess,
    produce_records,
    read_topic,
    settings_env,
    synth_records,
    topic_settings,
)

pytestmark = pytest.mark.kafka
ENGINE = Engine(load_rules(REPO / "rules"))


def rehearse(s, *args: str) -> dict:
    out = subprocess.run([SAMEX, "rehearse", "--json", *args], env=settings_env(s), capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


async def test_rehearse_shows_what_a_go_live_changes(kafka_bootstrap, topic_prefix, tmp_path):
    s = topic_settings(kafka_bootstrap, topic_prefix)
    await ensure_router_topics(s, ENGINE.systems, ENGINE.golive_ms)
    t_from = int(time.time() * 1000) - 1000
    recs = synth_records(1500, seed=91, patients=80)
    w = WorkerProcess(s).start()
    try:
        w.wait_ready()
        await produce_records(kafka_bootstrap, s.inbound_topic, recs, stamp_now=True)
        await read_topic(kafka_bootstrap, s.decisions_topic, expect=len(recs))
    finally:
        w.stop()
    frm = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t_from / 1000))
    sizes_before = {t: len(await read_topic(kafka_bootstrap, t, idle_s=0.5))
                    for t in (s.decisions_topic, s.out_topic("millennium"))}

    same = rehearse(s, "--from", frm)
    assert same["total"] == len(recs) and same["changed"] == 0 and same["same"] == len(recs), same

    # etapp 4 postponed: its units' messages would go to their legacy systems
    moved = tmp_path / "moved"
    shutil.copytree(REPO / "rules", moved)
    plan = moved / "plan.yaml"
    plan.write_text(plan.read_text().replace("2026-10-13T06:00 Europe/Stockholm", "2031-10-13T06:00 Europe/Stockholm"))
    r = rehearse(s, "--from", frm, "--rules", str(moved))
    to_e4 = [x for x in recs if ENGINE.units[x["receiver"]["unit_hsa_id"]].etapp == "etapp-4-vastra"]
    expected = sum(1 for x in to_e4
                   if ENGINE.decide(x, int(time.time() * 1000), {}).destinations !=
                   Engine(load_rules(moved)).decide(x, int(time.time() * 1000), {}).destinations)
    assert expected > 0 and r["changed"] == expected, (expected, r["changed"])
    assert all(c["before"] == "millennium" and c["after"] != "millennium" for c in r["changes"])
    assert all(len(c["examples"]) >= 1 for c in r["changes"])
    # ... and as of a date after the moved go-live, nothing changes again
    later = rehearse(s, "--from", frm, "--rules", str(moved), "--as-of", "2032-01-01T00:00")
    assert later["changed"] == 0

    # a route removed: its messages would become unroutable
    cut = tmp_path / "cut"
    shutil.copytree(REPO / "rules", cut)
    base = cut / "routes" / "base.yaml"
    base.write_text(re.sub(r"  - id: remiss-privat\n(    .*\n)+\n", "", base.read_text()))
    r = rehearse(s, "--from", frm, "--rules", str(cut))
    n_privat = sum(1 for x in recs if x["kind"] == "remiss" and ENGINE.units[x["receiver"]["unit_hsa_id"]].unit_type
                   == "privat")
    assert n_privat > 0 and r["would_become_unroutable"] == n_privat, r

    # rehearsal produces nothing
    for t, n in sizes_before.items():
        assert len(await read_topic(kafka_bootstrap, t, idle_s=0.5)) == n

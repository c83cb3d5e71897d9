"""The router worker against the real broker: routing, dead letters, order, hot reload, metrics."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from router.codec import MAGIC, default_codec
from router.rules.engine import Engine
from router.rules.load import load_rules
from router.topics import ensure_router_topics
from router.worker.control import etapp_record
from tests.kafka_helpers import (
    SAMEX,
    WorkerProcess,
    header,
    produce_raw,
    produce_records,
    read_topic,
    settings_env,
    synth_records,
    topic_settings,
)
from tests.ops_helpers import metric_sum

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parent.parent
ENGINE = Engine(load_rules(REPO / "rules"))
codec = default_codec()


async def setup(bootstrap: str, prefix: str):
    s = topic_settings(bootstrap, prefix)
    await ensure_router_topics(s, ENGINE.systems, ENGINE.golive_ms)
    return s


async def test_routing_dead_letters_decisions_order_and_metrics(kafka_bootstrap, topic_prefix):
    s = await setup(kafka_bootstrap, topic_prefix)
    w = WorkerProcess(s).start()
    try:
        w.wait_ready()
        recs = synth_records(3000, seed=21, patients=60, bad_share=0.03)
        await produce_records(kafka_bootstrap, s.inbound_topic, recs)
        good = codec.encode("envelope", recs[0])
        bad = [(b"k1", b"not avro at all"), (b"k2", MAGIC + struct.pack("<Q", 77) + good[10:]),
               (b"k3", good[:-7]), (b"k4", b"\xc3\x01" + b"\x00" * (s.max_record_bytes + 10))]
        await produce_raw(kafka_bootstrap, s.inbound_topic, bad)
        total = len(recs) + len(bad)
        decisions = await read_topic(kafka_bootstrap, s.decisions_topic, expect=total)
        assert len(decisions) == total
        dec = [codec.decode_as("decision", r.value) for r in decisions]
        by_id = {d["message_id"]: d for d in dec}
        assert len(by_id) == total  # exactly one decision per input
        # every envelope: routed to its engine destinations, or dead-lettered with a reason
        expected = Counter()
        for rec in recs:
            d = by_id[rec["message_id"]]
            assert d["rules_version"] == ENGINE.version and d["reason"]
            assert d["input"]["topic"] == s.inbound_topic and d["worker"] == "w1"
            if d["outcome"] == "routed":
                for dest in d["destinations"]:
                    expected[(dest, rec["message_id"])] += 1
        outs = {}
        for system in ENGINE.systems:
            outs[system] = await read_topic(kafka_bootstrap, s.out_topic(system), idle_s=1.0)
        got = Counter((system, header(r, "samex-message-id")) for system, rs in outs.items() for r in rs)
        assert got == expected
        # out records carry the original envelope bytes and the headers
        sent = {rec["message_id"]: rec for rec in recs}
        for _system, rs in outs.items():
            for r in rs[:50]:
                mid = header(r, "samex-message-id")
                assert codec.decode_as("envelope", r.value)["message_id"] == mid
                assert header(r, "samex-rules-version") == ENGINE.version and header(r, "samex-rule")
                assert header(r, "samex-trace-id") == sent[mid]["trace_id"]
        # per-patient order is kept on every destination topic
        order = {rec["message_id"]: i for i, rec in enumerate(recs)}
        for rs in outs.values():
            seq = defaultdict(list)
            for r in sorted(rs, key=lambda r: (r.partition, r.offset)):
                seq[r.key].append(order[header(r, "samex-message-id")])
            assert all(v == sorted(v) for v in seq.values())
        # dead letters: bad bytes with coordinates and reasons; unroutable envelopes with reason no_route
        dls = [codec.decode_as("deadletter", r.value) for r in
               await read_topic(kafka_bootstrap, s.deadletter_topic, expect=1)]
        codes = Counter(d["reason_code"] for d in dls)
        assert codes["undecodable"] == 1 and codes["unknown_schema"] == 1 and codes["truncated"] == 1
        assert codes["oversized"] == 1 and codes["no_route"] >= 1
        raw = next(d for d in dls if d["reason_code"] == "undecodable")
        assert raw["original"] == b"not avro at all" and raw["source"]["topic"] == s.inbound_topic
        routed_dead = sum(1 for d in dec if d["outcome"] == "dead_letter")
        assert len(dls) == routed_dead
        # metrics
        text = w.get("/metrics").decode()
        for name in ("samex_messages_in_total", "samex_routed_total", "samex_dead_letters_total",
                     "samex_decision_seconds_bucket", "samex_end_to_end_seconds_bucket", "samex_rules_info",
                     "samex_consumer_lag", "samex_last_message_timestamp_seconds", "samex_etapp_state",
                     "samex_batch_records_bucket"):
            assert name in text, name
        assert 'samex_dead_letters_total{reason="undecodable",stage="router"} 1.0' in text
        assert f'samex_rules_info{{version="{ENGINE.version}"}} 1.0' in text
        # one worker, no restart: every inbound record was in exactly one batch
        assert f"samex_batch_records_sum {float(total)}" in text, [x for x in text.splitlines() if "batch" in x]
        status = w.get("/status").decode()
        assert "etapp-1-sodra-pd1" in status and ENGINE.version in status
        assert w.proc.poll() is None  # bad input never stops the worker
    finally:
        w.stop()


def _moved_go_live(tmp: Path) -> Path:
    d = tmp / "rules-next"
    shutil.copytree(REPO / "rules", d)
    plan = d / "plan.yaml"
    plan.write_text(plan.read_text().replace("2026-10-13T06:00 Europe/Stockholm", "2031-10-13T06:00 Europe/Stockholm"))
    return d


async def test_hot_rule_reload_within_a_second_and_refusal(kafka_bootstrap, topic_prefix, tmp_path):
    s = await setup(kafka_bootstrap, topic_prefix)
    w = WorkerProcess(s).start()
    try:
        w.wait_ready()
        new_dir = _moved_go_live(tmp_path)
        new_version = Engine(load_rules(new_dir)).version
        stop = asyncio.Event()

        async def feed() -> None:
            i = 0
            while not stop.is_set():
                await produce_records(kafka_bootstrap, s.inbound_topic, synth_records(20, seed=1000 + i),
                                      stamp_now=True)
                i += 1
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(feed())
        await asyncio.sleep(2)
        t_publish = time.time() * 1000
        pub = subprocess.run([SAMEX, "rules", "publish", str(new_dir), "--reason", "postpone etapp 4"],
                             env=settings_env(s), capture_output=True, text=True)
        assert pub.returncode == 0, pub.stderr
        await asyncio.sleep(3)
        # an invalid rule set: refused by publish ...
        broken = tmp_path / "broken"
        shutil.copytree(new_dir, broken)
        (broken / "routes" / "base.yaml").write_text("routes: [")
        refused = subprocess.run([SAMEX, "rules", "publish", str(broken)], env=settings_env(s),
                                 capture_output=True, text=True)
        assert refused.returncode == 1 and "base.yaml" in refused.stderr
        # ... and, forced onto the topic anyway, refused by the worker, which keeps the previous set
        forced = subprocess.run([SAMEX, "rules", "publish", str(broken), "--force-invalid"], env=settings_env(s),
                                capture_output=True, text=True)
        assert forced.returncode == 0, forced.stderr
        # a rule file with a control character (pasted from a terminal): refused by publish with its
        # file and line, no traceback; forced anyway, refused by the worker
        pasted = tmp_path / "pasted"
        shutil.copytree(new_dir, pasted)
        with (pasted / "routes" / "etapp-4-vastra.yaml").open("a") as fh:
            fh.write("# pasted \x1b[0m\n")
        refused = subprocess.run([SAMEX, "rules", "publish", str(pasted)], env=settings_env(s),
                                 capture_output=True, text=True)
        assert refused.returncode == 1 and "etapp-4-vastra.yaml:" in refused.stderr + refused.stdout, refused
        assert "Traceback" not in refused.stderr + refused.stdout
        assert subprocess.run([SAMEX, "rules", "publish", str(pasted), "--force-invalid"], env=settings_env(s),
                              capture_output=True).returncode == 0
        # records no worker may stop on: bytes that are no control record, etapp changes with missing
        # fields or a detail that is not JSON
        bad_etapp = {**etapp_record("etapp-4-vastra", "hold", 0, "qa", "test"), "etapp": None, "state": None,
                     "effective_ms": None}
        bad_detail = {**etapp_record("etapp-4-vastra", "hold", 0, "qa", "test"), "detail": "{not json"}
        await produce_raw(kafka_bootstrap, s.control_topic, [
            (b"rules:garbage", b"\x00garbage"), (b"etapp:x:1", codec.encode("control", bad_etapp)),
            (b"etapp:x:2", codec.encode("control", bad_detail))])
        await asyncio.sleep(2)
        stop.set()
        await feeder
        decisions = [codec.decode_as("decision", r.value) for r in
                     await read_topic(kafka_bootstrap, s.decisions_topic, idle_s=2)]
        versions_after = [d for d in decisions if d["decided_at_ms"] >= t_publish]
        first_new = min(d["decided_at_ms"] for d in decisions if d["rules_version"] == new_version)
        # The requirement is 1 s from publish; the figure includes the publish CLI's own start-up. It is
        # printed (and quoted in the README); the bound here only catches a switch that never happens
        # or waits for a restart, not a slow machine.
        print(f"first decision under the new rule set {first_new - t_publish:.0f} ms after publish started")
        assert first_new - t_publish < 5000, first_new - t_publish
        late_old = [d for d in versions_after if d["rules_version"] == ENGINE.version
                    and d["decided_at_ms"] > first_new]
        assert not late_old
        assert {d["rules_version"] for d in decisions} == {ENGINE.version, new_version}
        metrics = w.get("/metrics").decode()
        assert 'samex_rules_refused_total{reason="invalid_rules"} 2.0' in metrics
        assert 'samex_rules_refused_total{reason="not_a_control_record"} 1.0' in metrics
        assert 'samex_rules_refused_total{reason="invalid_etapp_state"} 2.0' in metrics
        assert f'samex_rules_info{{version="{new_version}"}} 1.0' in metrics
        assert w.proc.poll() is None
        log = w.log.read_text()
        assert "rule set refused" in log and "control record refused" in log
        # a worker that starts now reads all of it again: it runs, with the last valid set, and does
        # not count those old refusals again (the alert would fire at every restart)
        w.stop()
        w = WorkerProcess(s, worker_id="w2").start()
        w.wait_ready()
        metrics = w.get("/metrics").decode()
        assert f'samex_rules_info{{version="{new_version}"}} 1.0' in metrics
        assert "samex_rules_refused_total{" not in metrics, [ln for ln in metrics.splitlines() if "refused" in ln]
        assert "refused at start-up" in w.log.read_text()
        await produce_records(kafka_bootstrap, s.inbound_topic, synth_records(50, seed=4242), stamp_now=True)
        await asyncio.sleep(3)
        assert metric_sum(w, "samex_messages_in_total") >= 50 and w.proc.poll() is None
    finally:
        w.stop()

"""The trace index without a broker: records made by the real RouterCore, fed through the same
row mapping the index feed uses, searched by every key, by patient hash, hops in time order."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from router.codec import default_codec
from router.identifiers import patient_key
from router.indexfeed import RowMaker
from router.metrics import WorkerMetrics
from router.rules.engine import Engine
from router.rules.load import load_rules
from router.settings import load_settings
from router.synth import load_units, test_personnummer, traffic
from router.traceindex import SqliteIndex, TraceIndex
from router.worker.control import control_key, replay_record
from router.worker.core import InRecord, RouterCore

REPO = Path(__file__).resolve().parent.parent
CODEC = default_codec()
SETTINGS = load_settings()


def scenario(n: int = 120, seed: int = 5) -> tuple[list[tuple[str, int, int, bytes]], dict[str, Any]]:
    """Encoded records of the four topics (topic, partition, offset, value) and what to look for."""
    rng = random.Random(seed)
    now = int(time.time() * 1000) - 60_000
    gen = traffic(rng, load_units(), now, patients=30, bad_share=0.05)
    envs = [next(gen) for _ in range(n)]
    pnr = test_personnummer(random.Random(99))
    for e in envs[:3]:  # one patient with three messages
        e["patient"] = {**e["patient"], "id": pnr, "id_type": "personnummer", "oid": "1.2.752.129.2.1.3.1"}
    lab = next(e for e in envs[3:] if e["kind"] == "lab_result")
    lab["correlation"] = {**lab["correlation"], "filler_order_number": "FILL-77"}
    envs_by_mid = {e["message_id"]: e for e in envs}
    core = RouterCore(SETTINGS, CODEC, WorkerMetrics(CollectorRegistry()), Engine(load_rules(REPO / "rules")))
    inputs = [InRecord(SETTINGS.inbound_topic, 0, i, None, CODEC.encode("envelope", e)) for i, e in enumerate(envs)]
    res = core.process(inputs, now_ms=now + 5)
    out: list[tuple[str, int, int, bytes]] = []
    off: dict[str, int] = {}

    def put(topic: str, value: bytes) -> None:
        off[topic] = off.get(topic, -1) + 1
        out.append((topic, 0, off[topic], value))

    for o in res.outputs:
        if o.topic in (SETTINGS.decisions_topic, SETTINGS.deadletter_topic):
            put(o.topic, o.value)
    routed = next(mid for mid, d in res.decisions
                  if d is not None and d.outcome == "routed" and mid != lab["message_id"])
    dead = next(mid for mid, d in res.decisions if d is not None and d.outcome == "dead_letter")
    system = next(d.destinations[0] for mid, d in res.decisions if mid == routed)
    put(SETTINGS.deliveries_topic, CODEC.encode("delivery", {
        "message_id": routed, "system": system, "outcome": "acknowledged", "ack_code": "AA", "detail": None,
        "attempts": 1, "at_ms": now + 900, "replay_id": None, "trace_id": None}))
    audit = replay_record("rp-test-1", "analyst", "lab result went to the wrong system",
                          {"mode": "resend", "message_ids": [routed]})
    audit["at_ms"] = now + 2000
    assert control_key(audit) == b"replay:rp-test-1"
    put(SETTINGS.control_topic, CODEC.encode("control", audit))
    put(SETTINGS.control_topic, CODEC.encode("control", {**audit, "type": "etapp_state", "detail": json.dumps({}),
                                                         "etapp": "etapp-1-sodra-pd1", "state": "live",
                                                         "effective_ms": now}))
    return out, {"envs": envs_by_mid, "pnr": pnr, "routed": routed, "dead": dead, "system": system,
                 "lab": lab, "first3": [e["message_id"] for e in envs[:3]], "n": n}


def load(index: TraceIndex, records: list[tuple[str, int, int, bytes]]) -> None:
    maker = RowMaker(SETTINGS, CODEC)
    for i in range(0, len(records), 50):  # several batches, positions stored with each
        chunk = records[i:i + 50]
        rows = [row for (t, p, o, v) in chunk for row in maker.rows(t, p, o, v)]
        index.add(rows, {(t, p): o + 1 for (t, p, o, _v) in chunk})
    assert maker.skipped == 0


def check_index(index: TraceIndex) -> None:
    records, x = scenario()
    load(index, records)
    envs = x["envs"]
    # positions kept with the rows
    offs = index.offsets()
    assert offs[(SETTINGS.decisions_topic, 0)] == x["n"]
    assert offs[(SETTINGS.control_topic, 0)] == 2

    # by message id: received, decided, delivered, replayed, in time order
    hops = index.find(x["routed"])
    kinds = [h.hop for h in hops]
    assert kinds == ["received", "decided", "delivered", "replayed"], kinds
    assert [h.at_ms for h in hops] == sorted(h.at_ms for h in hops)
    decided = hops[1].fields
    assert decided["rule"] and decided["rules_version"] and decided["reason"]
    assert hops[2].fields["systems"] == x["system"] and hops[2].fields["outcome"] == "AA"
    assert hops[3].fields["who"] == "analyst" and "wrong system" in hops[3].fields["reason"]
    env = envs[x["routed"]]
    assert hops[0].at_ms == env["received_time_ms"]

    # by the other keys
    assert {h.message_id for h in index.find(env["source_message_id"])} == {x["routed"]}
    lab = x["lab"]
    assert {h.message_id for h in index.find(lab["correlation"]["placer_order_number"])} >= {lab["message_id"]}
    assert {h.message_id for h in index.find("FILL-77")} == {lab["message_id"]}
    remiss = next(e for e in envs.values() if e["correlation"]["referral_id"])
    assert remiss["message_id"] in {h.message_id for h in index.find(remiss["correlation"]["referral_id"])}
    assert {h.message_id for h in index.find("rp-test-1")} == {x["routed"]}
    assert index.find("no-such-id") == [] and index.find("  ") == []

    # a dead letter: decided as dead letter, then dead-lettered with its reason code
    dh = index.find(x["dead"])
    assert [h.hop for h in dh] == ["received", "decided", "dead_lettered"]
    assert dh[2].fields["outcome"] and dh[2].fields["stage"] == "router"

    # by patient: only the hash is searched and stored
    key = patient_key(x["pnr"], SETTINGS.patient_key_bytes)
    assert {h.message_id for h in index.find_patient(key)} == set(x["first3"])
    # 196408233234: the public example personnummer (a test number), not in this index
    assert index.find_patient(patient_key("196408233234", SETTINGS.patient_key_bytes)) == []
    assert index.find(x["pnr"]) == []


def test_sqlite_index_every_key_patient_hash_and_hop_order(tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / "idx.sqlite")
    try:
        check_index(index)
        assert index.count() > 0
    finally:
        index.close()
    # the personnummer is nowhere in the database files
    pnr = scenario()[1]["pnr"]
    for f in tmp_path.iterdir():
        assert pnr.encode() not in f.read_bytes(), f
    # WAL mode, and indexes on every search key
    import sqlite3

    c = sqlite3.connect(tmp_path / "idx.sqlite")
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    for col in ("message_id", "source_message_id", "placer", "filler", "referral_id", "patient_key", "at_ms"):
        assert f"hops_{col}" in names
    plan = " ".join(str(r) for r in c.execute("EXPLAIN QUERY PLAN SELECT message_id FROM hops WHERE placer = 'x'"))
    assert "hops_placer" in plan, plan


def test_trace_command_patient_prompt_never_prints_the_number(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from router.cli import cli

    records, x = scenario()
    index = SqliteIndex(tmp_path / "idx.sqlite")
    load(index, records)
    index.close()
    env = {"SAMEX_INDEX_URL": str(tmp_path / "idx.sqlite"), "COLUMNS": "250"}
    r = CliRunner().invoke(cli, ["trace", "--patient", "--no-sync", "--json"], input=x["pnr"] + "\n", env=env)
    assert r.exit_code == 0, r.output
    assert x["pnr"] not in r.output and x["pnr"][2:] not in r.output
    got = json.loads("{" + r.output.split("{", 1)[1])
    assert set(got["messages"]) == set(x["first3"])
    # the public example test number with a wrong check digit
    bad = CliRunner().invoke(cli, ["trace", "--patient", "--no-sync"], input="19640823-3235\n", env=env)
    assert bad.exit_code == 2 and "Luhn" in bad.output and "3235" not in bad.output
    r = CliRunner().invoke(cli, ["trace", "--no-sync", x["envs"][x["routed"]]["source_message_id"]], env=env)
    assert r.exit_code == 0 and "delivered and acknowledged by" in r.output and "replayed by analyst" in r.output


def test_one_feeder_per_index(tmp_path: Path) -> None:
    a, b = SqliteIndex(tmp_path / "i.sqlite"), SqliteIndex(tmp_path / "i.sqlite")
    try:
        assert a.try_feed_lock() and a.try_feed_lock()
        assert not b.try_feed_lock()
        a.close()
        assert b.try_feed_lock()
    finally:
        b.close()


def test_parked_then_released_hops(tmp_path: Path) -> None:
    from router.indexfeed import decision_rows

    base = {"message_id": "m-1", "source_message_id": "MSH-1", "kind": "remiss", "rule": "r", "rules_version": "v1",
            "etapp": "etapp-4-vastra", "reason": "x", "latency_ms": 40.0, "patient_key": "k",
            "placer_order_number": None, "filler_order_number": None, "referral_id": "RF1", "replay_id": None,
            "worker": "w1", "destinations": []}
    parked = {**base, "outcome": "parked", "etapp_state": "hold", "decided_at_ms": 1_000, "destinations":
              ["samex.park.etapp-4-vastra"], "input": {"topic": "samex.in", "partition": 2, "offset": 7}}
    released = {**base, "outcome": "routed", "etapp_state": "live", "decided_at_ms": 5_000,
                "destinations": ["millennium"], "reason": "released from samex.park.etapp-4-vastra: live",
                "input": {"topic": "samex.park.etapp-4-vastra", "partition": 2, "offset": 0}}
    index = SqliteIndex(tmp_path / "p.sqlite")
    try:
        rows = [*decision_rows(released, "samex.in", "samex.park.", ("d", 0, 1)),
                *decision_rows(parked, "samex.in", "samex.park.", ("d", 0, 0))]
        index.add(rows, {("d", 0): 2})
        hops = index.find("RF1")
        assert [(h.hop, h.at_ms) for h in hops] == [("received", 960), ("parked", 1_000), ("released", 5_000)]
        assert hops[2].fields["systems"] == "millennium" and hops[1].fields["etapp_state"] == "hold"
    finally:
        index.close()

"""Cutover operations on the real broker: hold parks in order, release routes every parked message
once (even when the worker is killed during the release), pause routes as not live, and results
follow their orders across a switch."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections import Counter, defaultdict

import pytest

from router.codec import default_codec
from router.rules.engine import Engine
from router.rules.load import load_rules
from router.topics import ensure_router_topics
from tests.kafka_helpers import (
    REPO,
    SAMEX,
    WorkerProcess,
    header,
    produce_records,
    read_topic,
    settings_env,
    synth_records,
    topic_settings,
)

pytestmark = pytest.mark.kafka
ENGINE = Engine(load_rules(REPO / "rules"))
codec = default_codec()
ETAPP = "etapp-4-vastra"


async def setup(bootstrap: str, prefix: str):
    s = topic_settings(bootstrap, prefix)
    await ensure_router_topics(s, ENGINE.systems, ENGINE.golive_ms)
    return s


def etapp_cmd(s, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([SAMEX, "etapp", *args], env=settings_env(s), capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def wait_state(w: WorkerProcess, etapp: str, state: str, timeout_s: float = 15) -> float:
    """Seconds until the worker's status shows the state."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        st = json.loads(w.get("/status?json"))
        if any(e["etapp"] == etapp and e["state"] == state for e in st["etapper"]):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{etapp} never became {state}: {st['etapper']}")


async def out_records(bootstrap: str, s) -> list:
    recs = []
    for system in ENGINE.systems:
        recs.extend(await read_topic(bootstrap, s.out_topic(system), idle_s=1.0))
    return recs


async def etapp_order_checked(bootstrap: str, s, sent: list[dict]) -> int:
    """Assert that on every destination topic the first delivery of each of the etapp's messages
    comes in the order they were sent, per patient key; returns how many deliveries were checked."""
    order = {r["message_id"]: i for i, r in enumerate(sent)
             if ENGINE.units[r["receiver"]["unit_hsa_id"]].etapp == ETAPP}
    by_key: dict[tuple[str, bytes], list[str]] = defaultdict(list)
    for r in sorted(await out_records(bootstrap, s), key=lambda r: (r.topic, r.partition, r.offset)):
        by_key[(r.topic, r.key)].append(header(r, "samex-message-id"))
    checked = 0
    for (topic, _key), mids in by_key.items():
        seen: set[str] = set()
        firsts = [m for m in mids if not (m in seen or seen.add(m))]  # first delivery of each id
        idx = [order[m] for m in firsts if m in order]
        assert idx == sorted(idx), (topic, idx)
        checked += len(idx)
    return checked


async def test_hold_release_in_order_with_kill_during_release(kafka_bootstrap, topic_prefix):
    s = await setup(kafka_bootstrap, topic_prefix)
    w = WorkerProcess(s, SAMEX_RELEASE_BATCH_MAX="10").start()  # small steps: the kill lands mid-release
    try:
        w.wait_ready()
        etapp_cmd(s, "hold", ETAPP, "--reason", "test: go-live held", "--until", "2099-01-01T00:00")
        applied_s = wait_state(w, ETAPP, "hold")
        print(f"hold applied by the worker {applied_s * 1000:.0f} ms after the command returned")
        st = json.loads(etapp_cmd(s, "status", "--json").stdout)
        row = next(e for e in st["etapper"] if e["etapp"] == ETAPP)
        assert row["state"] == "hold" and row["why"] == "test: go-live held"

        first = synth_records(3000, seed=61, patients=40)
        await produce_records(kafka_bootstrap, s.inbound_topic, first, stamp_now=True)
        to_etapp = [r for r in first if ENGINE.units[r["receiver"]["unit_hsa_id"]].etapp == ETAPP]
        assert len(to_etapp) > 100
        decisions = await read_topic(kafka_bootstrap, s.decisions_topic, expect=len(first))
        dec = [codec.decode_as("decision", r.value) for r in decisions]
        parked_ids = {d["message_id"] for d in dec if d["outcome"] == "parked"}
        assert parked_ids == {r["message_id"] for r in to_etapp}
        assert all(d["etapp_state"] == "hold" for d in dec if d["outcome"] == "parked")

        # release, and kill -9 the worker while it releases; a restarted worker finishes the job
        second = synth_records(600, seed=62, patients=40)  # same patients: must come after their parked ones
        feeder = asyncio.create_task(produce_records(kafka_bootstrap, s.inbound_topic, second, stamp_now=True,
                                                     rate=1500))
        etapp_cmd(s, "release", ETAPP, "--reason", "test: go")
        released_before_kill = 0.0
        while released_before_kill < 50:
            m = re.search(rf'samex_released_total\{{etapp="{ETAPP}"\}} (\S+)', w.get("/metrics").decode())
            released_before_kill = float(m.group(1)) if m else 0.0
            await asyncio.sleep(0.005)
        w.kill9()
        print(f"killed the worker after it had released {released_before_kill:.0f}")
        await feeder
        w = WorkerProcess(s, worker_id="w2").start()
        w.wait_ready()
        total_in = len(first) + len(second)
        deadline = time.monotonic() + 60
        while True:
            dec = [codec.decode_as("decision", r.value) for r in
                   await read_topic(kafka_bootstrap, s.decisions_topic, idle_s=1.0)]
            released = [d for d in dec if d["input"]["topic"] == s.park_topic(ETAPP)]
            if {d["message_id"] for d in released} >= parked_ids and \
                    len({d["message_id"] for d in dec if d["input"]["topic"] == s.inbound_topic}) >= total_in:
                break
            assert time.monotonic() < deadline, (len(released), len(parked_ids))
            await asyncio.sleep(1)
        # nothing lost; duplicates (the kill) are identifiable by message id
        dup = Counter(d["message_id"] for d in released)
        doubled = sum(n - 1 for n in dup.values())
        # second-wave messages that arrived while the release ran were queued behind the parked ones
        queued = {d["message_id"] for d in dec if d["outcome"] == "parked" and d["input"]["topic"] == s.inbound_topic}
        print(f"parked {len(parked_ids)} while on hold, {len(queued - parked_ids)} queued behind them during the "
              f"release; released {len(dup)} distinct, {doubled} re-released after kill -9")
        assert queued >= parked_ids
        assert set(dup) == queued  # parked = released, nothing lost
        assert all(d["outcome"] == "routed" and d["reason"].startswith("released from") for d in released)

        # per-patient order on every destination among the etapp's messages: the parked ones before
        # later ones (traffic to other etapper is not held, so it may overtake parked messages)
        assert await etapp_order_checked(kafka_bootstrap, s, first + second) >= len(parked_ids)
        metrics = w.get("/metrics").decode()
        assert f'samex_parked_messages{{etapp="{ETAPP}"}} 0.0' in metrics  # nothing left waiting
    finally:
        w.stop()


async def test_pause_routes_as_not_live_and_results_follow_orders(kafka_bootstrap, topic_prefix):
    s = await setup(kafka_bootstrap, topic_prefix)
    w = WorkerProcess(s).start()
    try:
        w.wait_ready()
        units = {u: ENGINE.units[u] for u in ENGINE.units}
        ordering = next(u for u in units.values() if u.etapp == ETAPP and u.unit_type == "sjukhus")
        lab = next(u for u in units.values() if u.unit_type == "lab")
        base = synth_records(1, seed=70)[0]

        def msg(kind: str, i: int, sender, receiver, placer: str) -> dict:
            r = json.loads(json.dumps({**base, "payload": None}))
            r["payload"] = base["payload"]
            r["message_id"] = f"00000000-0000-4000-8000-{i:012d}"
            r["kind"] = kind
            r["sender"] = {"unit_hsa_id": sender.hsa_id, "care_provider_hsa_id": None, "system": None}
            r["receiver"] = {"unit_hsa_id": receiver.hsa_id, "care_provider_hsa_id": None, "system": None}
            r["correlation"] = {"placer_order_number": placer, "filler_order_number": None, "referral_id": None,
                                "in_reply_to": None}
            return r

        # an order placed while the etapp is live (Millennium) ...
        await produce_records(kafka_bootstrap, s.inbound_topic, [msg("lab_order", 1, ordering, lab, "PO-T-1")],
                              stamp_now=True)
        await read_topic(kafka_bootstrap, s.decisions_topic, expect=1)
        # ... then the etapp is paused: its units route as not live from now on
        etapp_cmd(s, "pause", ETAPP, "--reason", "test: paused after go-live")
        wait_state(w, ETAPP, "paused")
        await produce_records(kafka_bootstrap, s.inbound_topic, [
            msg("lab_result", 2, lab, ordering, "PO-T-1"),     # follows its order to Millennium
            msg("lab_result", 3, lab, ordering, "PO-UNKNOWN"),  # no known order: the rules (legacy)
        ], stamp_now=True)
        dec = {d["message_id"]: d for d in (codec.decode_as("decision", r.value) for r in
                                           await read_topic(kafka_bootstrap, s.decisions_topic, expect=3))}
        order_d = dec["00000000-0000-4000-8000-000000000001"]
        assert order_d["etapp_state"] in (None, "scheduled")
        followed = dec["00000000-0000-4000-8000-000000000002"]
        assert followed["destinations"] == ["millennium"], followed
        assert "follows its order PO-T-1" in followed["reason"] and "rules alone say melior" in followed["reason"]
        fallback = dec["00000000-0000-4000-8000-000000000003"]
        assert fallback["destinations"] == ["melior"] and "no known order" in fallback["reason"]
        assert fallback["etapp_state"] == "paused"
        # the open order shows up in inflight (placed in Millennium, the etapp now routes to melior)
        out = etapp_cmd(s, "inflight", ETAPP, "--json", "--all").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert any(r["key"] == "order:PO-T-1" and r["placed_in"] == "millennium" and r["now_routes_to"] == "melior"
                   for r in rows), rows
        # the order book survives a restart of the worker (recovered from the table's changelog)
        w.stop()
        w = WorkerProcess(s, worker_id="w2").start()
        w.wait_ready()
        await produce_records(kafka_bootstrap, s.inbound_topic, [msg("lab_result", 4, lab, ordering, "PO-T-1")],
                              stamp_now=True)
        dec = {d["message_id"]: d for d in (codec.decode_as("decision", r.value) for r in
                                           await read_topic(kafka_bootstrap, s.decisions_topic, expect=4))}
        assert dec["00000000-0000-4000-8000-000000000004"]["destinations"] == ["millennium"]
    finally:
        w.stop()



async def test_release_ends_while_traffic_keeps_coming(kafka_bootstrap, topic_prefix):
    """A release must end although the etapp's messages keep arriving: here a worker restarts into a
    release with a lag of the etapp's messages on the inbound topic, so every batch it polls holds
    some for every partition, and steady traffic follows. The parked ones go out first, then new
    ones route directly again. (Fails if a park partition only counts as drained when no batch in
    flight parked another message behind the release, or if a release step frees fewer than a batch
    parks: then every message of the lag queues behind the release.)"""
    s = await setup(kafka_bootstrap, topic_prefix)

    def etapp_only(n: int, seed: int) -> list[dict]:
        recs = synth_records(n, seed=seed, patients=600)
        return [r for r in recs if ENGINE.units[r["receiver"]["unit_hsa_id"]].etapp == ETAPP]

    held, lagged, steady = etapp_only(1500, 71), etapp_only(100000, 72), etapp_only(30000, 73)
    assert len(held) > 100 and len(lagged) > 15000 and len(steady) > 5000
    w = WorkerProcess(s).start()
    try:
        w.wait_ready()
        etapp_cmd(s, "hold", ETAPP, "--reason", "test: lagged release", "--until", "2099-01-01T00:00")
        wait_state(w, ETAPP, "hold")
        await produce_records(kafka_bootstrap, s.inbound_topic, held, stamp_now=True)
        await read_topic(kafka_bootstrap, s.decisions_topic, expect=len(held))
        w.stop()
        etapp_cmd(s, "release", ETAPP, "--reason", "test: go")
        await produce_records(kafka_bootstrap, s.inbound_topic, lagged, stamp_now=True)
        # small release steps: the release spans several of the hot path's batches of the lag
        w = WorkerProcess(s, worker_id="w2", SAMEX_RELEASE_BATCH_MAX="100").start()
        w.wait_ready()
        await produce_records(kafka_bootstrap, s.inbound_topic, steady, rate=1000, stamp_now=True, catch_up=False)
        total = len(held) + len(lagged) + len(steady)
        deadline = time.monotonic() + 60
        while True:
            dec = [codec.decode_as("decision", r.value) for r in
                   await read_topic(kafka_bootstrap, s.decisions_topic, idle_s=1.0)]
            first: dict[str, dict] = {}
            for d in dec:
                if d["input"]["topic"] == s.inbound_topic:
                    first.setdefault(d["message_id"], d)
            parked = {m for m, d in first.items() if d["outcome"] == "parked"}
            released = {d["message_id"] for d in dec if d["input"]["topic"] == s.park_topic(ETAPP)}
            if len(first) >= total and released >= parked:
                break
            assert time.monotonic() < deadline, (len(first), total, len(parked - released))
            await asyncio.sleep(1)
        assert {r["message_id"] for r in held} <= parked
        behind = [r for r in lagged if r["message_id"] in parked]
        late = Counter(first[r["message_id"]]["outcome"] for r in steady)
        print(f"parked {len(held)} on hold; of {len(lagged)} lagged messages {len(behind)} queued behind the "
              f"release; steady traffic after: {dict(late)}")
        assert 0 < len(behind) < len(lagged) // 2
        # the release ended on every partition: once one of the etapp's messages routes directly,
        # none after it on that partition is parked
        by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for d in first.values():
            by_partition[d["input"]["partition"]].append((d["input"]["offset"], d["outcome"]))
        for p, outcomes in by_partition.items():
            seq = [o for _off, o in sorted(outcomes)]
            assert "routed" in seq, f"partition {p}: the release never ended, {len(seq)} messages all parked"
            assert "parked" not in seq[seq.index("routed"):], p
            assert seq[-1] == "routed", p
        assert released == parked
        assert await etapp_order_checked(kafka_bootstrap, s, held + lagged + steady) >= len(held) + len(lagged)
    finally:
        w.stop()

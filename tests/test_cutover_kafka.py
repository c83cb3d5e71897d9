"""A whole cutover under flowing traffic on the real broker: hold etapp-3, go-live, rollback,
go-live again. Checked on the decision log and the destination topics:
  * in = routed + parked + dead-lettered, and every parked message is released;
  * every routed message went where the rules and the etapp state at its decision instant say
    (or, for a lab result, where its order was placed);
  * per-patient order holds within the etapp's traffic;
  * lab results whose orders were placed before a switch follow their orders.
Also: impossible transitions are refused and nothing is published."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import time
from collections import defaultdict

import pytest

from router.codec import default_codec
from router.commands.etapp import read_control
from router.rules.engine import Engine
from router.rules.load import load_rules
from router.synth import load_units, test_personnummer
from router.topics import ensure_router_topics
from router.worker.control import ControlState
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

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
codec = default_codec()
ETAPP = "etapp-3-norra-ostra"


def future_rules(tmp) -> tuple[Engine, str]:
    """The example rules with etapp 3's go-live in 2031, so 'scheduled' means not live."""
    d = tmp / "rules"
    shutil.copytree(REPO / "rules", d)
    plan = d / "plan.yaml"
    plan.write_text(plan.read_text().replace("2026-04-21T06:00 Europe/Stockholm", "2031-04-21T06:00 Europe/Stockholm"))
    return Engine(load_rules(d)), str(d)


def etapp(env: dict, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([SAMEX, "etapp", *args], env=env, capture_output=True, text=True, cwd=REPO)
    assert (out.returncode == 0) == ok, out.stdout + out.stderr
    return out


def order_pair(rng: random.Random, base: dict, unit, lab, placer: str, kind: str) -> dict:
    r = dict(base)
    r["message_id"] = str(__import__("uuid").UUID(int=rng.getrandbits(128), version=4))
    r["kind"] = kind
    pnr = test_personnummer(rng)
    r["patient"] = {**base["patient"], "id": pnr, "id_type": "personnummer"}
    a, b = (unit, lab) if kind == "lab_order" else (lab, unit)
    r["sender"] = {"unit_hsa_id": a.hsa_id, "care_provider_hsa_id": None, "system": None}
    r["receiver"] = {"unit_hsa_id": b.hsa_id, "care_provider_hsa_id": None, "system": None}
    r["correlation"] = {"placer_order_number": placer, "filler_order_number": None, "referral_id": None,
                        "in_reply_to": None}
    return r


async def test_cutover_hold_golive_rollback_golive_under_traffic(kafka_bootstrap, topic_prefix, tmp_path):
    engine, rules_dir = future_rules(tmp_path)
    s = topic_settings(kafka_bootstrap, topic_prefix)
    await ensure_router_topics(s, engine.systems, engine.golive_ms)
    env = settings_env(s, SAMEX_RULES_DIR=rules_dir)
    rng = random.Random(5)
    units = load_units(REPO / "rules" / "units.csv")
    e3_units = [u for u in units if engine.units[u.hsa_id].etapp == ETAPP and u.unit_type == "sjukhus"]
    lab = next(u for u in units if u.unit_type == "lab")
    base = synth_records(1, seed=3)[0]
    sent: dict[str, dict] = {}
    orders_by_phase: dict[str, list[dict]] = defaultdict(list)
    stop = asyncio.Event()

    async def feed() -> None:
        i = 0
        while not stop.is_set():
            batch = synth_records(40, seed=500 + i, patients=60)
            for r in batch:
                sent[r["message_id"]] = r
            await produce_records(kafka_bootstrap, s.inbound_topic, batch, stamp_now=True)
            i += 1
            await asyncio.sleep(0.1)

    async def place_orders(phase: str, n: int = 6) -> None:
        batch = [order_pair(rng, base, rng.choice(e3_units), lab, f"CUT-{phase}-{k}", "lab_order") for k in range(n)]
        for r in batch:
            sent[r["message_id"]] = r
        orders_by_phase[phase].extend(batch)
        await produce_records(kafka_bootstrap, s.inbound_topic, batch, stamp_now=True)

    async def send_results(phase: str) -> list[dict]:
        batch = []
        for o in orders_by_phase[phase]:
            unit = next(u for u in units if u.hsa_id == o["sender"]["unit_hsa_id"])
            r = order_pair(rng, base, unit, lab, o["correlation"]["placer_order_number"], "lab_result")
            r["patient"] = o["patient"]
            batch.append(r)
            sent[r["message_id"]] = r
        await produce_records(kafka_bootstrap, s.inbound_topic, batch, stamp_now=True)
        return batch

    async def decisions() -> list[dict]:
        return [codec.decode_as("decision", r.value) for r in
                await read_topic(kafka_bootstrap, s.decisions_topic, idle_s=1.0)]

    def parked_all_released(dec: list[dict]) -> tuple[set[str], set[str]]:
        parked = {d["message_id"] for d in dec if d["input"]["topic"] == s.inbound_topic and d["outcome"] == "parked"}
        released = {d["message_id"] for d in dec if d["input"]["topic"] == s.park_topic(ETAPP)}
        return parked, released

    async def wait_released(timeout_s: float = 60) -> None:
        """Until the park partitions are drained: a message of the etapp that arrives while parked
        ones wait is parked behind them (per-patient order), so results sent before the drain
        would be decided at their release, not on arrival."""
        deadline = time.monotonic() + timeout_s
        while True:
            parked, released = parked_all_released(await decisions())
            if parked and released >= parked:
                return
            assert time.monotonic() < deadline, (len(parked), len(parked - released))
            await asyncio.sleep(0.5)

    w = WorkerProcess(s, rules=REPO / rules_dir).start()
    try:
        w.wait_ready()
        # bad input: refused, nothing published
        etapp(env, "release", ETAPP, "--reason", "x", ok=False)            # not on hold
        etapp(env, "pause", ETAPP, "--reason", "x", ok=False)              # not live
        etapp(env, "hold", "etapp-9-nowhere", "--reason", "x", ok=False)   # unknown etapp
        etapp(env, "hold", ETAPP, "--reason", " ", ok=False)               # no reason
        etapp(env, "hold", ETAPP, "--reason", "x", "--at", "2020-01-01T00:00", ok=False)  # too far back
        assert [r for r in await read_control(s) if r["type"] == "etapp_state"] == []

        feeder = asyncio.create_task(feed())
        await place_orders("before")          # placed in the legacy systems (etapp 3 not live)
        await asyncio.sleep(2)
        etapp(env, "hold", ETAPP, "--reason", "cutover: freeze")
        await asyncio.sleep(3)
        etapp(env, "go-live", ETAPP, "--reason", "cutover: go")   # releases the parked messages
        await asyncio.sleep(2)
        await wait_released()
        results_after_golive = await send_results("before")       # must go to the legacy systems
        await place_orders("live")                                 # placed in Millennium
        await asyncio.sleep(2)
        etapp(env, "rollback", ETAPP, "--reason", "cutover: rollback")
        await asyncio.sleep(2)
        results_after_rollback = await send_results("live")       # must go to Millennium
        await asyncio.sleep(1)
        etapp(env, "go-live", ETAPP, "--reason", "cutover: second go")
        await asyncio.sleep(2)
        stop.set()
        await feeder

        # wait until every input has its decision and every parked message its release
        deadline = time.monotonic() + 90
        while True:
            dec = await decisions()
            first = {}
            for d in dec:
                if d["input"]["topic"] == s.inbound_topic:
                    first.setdefault(d["message_id"], d)
            parked = {m for m, d in first.items() if d["outcome"] == "parked"}
            released = {d["message_id"] for d in dec if d["input"]["topic"] == s.park_topic(ETAPP)}
            if len(first) >= len(sent) and released >= parked:
                break
            assert time.monotonic() < deadline, (len(first), len(sent), len(parked - released))
            await asyncio.sleep(1)
    finally:
        w.stop()

    # in = routed + parked + dead-lettered
    outcomes = defaultdict(int)
    for d in first.values():
        outcomes[d["outcome"]] += 1
    assert set(first) == set(sent)
    assert sum(outcomes.values()) == len(sent) and outcomes["parked"] > 0, outcomes
    assert released == parked

    # every routed decision: the destinations the rules give under the state at its decision instant
    changes = [r for r in await read_control(s) if r["type"] == "etapp_state"]
    assert [c["state"] for c in changes] == ["hold", "live", "rolled_back", "live"]
    book = ControlState(engine)
    for c in changes:
        book.apply(c)
    followed = 0
    for d in dec:
        if d["outcome"] != "routed":
            continue
        e = sent[d["message_id"]]
        expect = engine.decide(e, d["decided_at_ms"], book.states.at(d["decided_at_ms"]))
        if "follows its order" in d["reason"]:
            followed += 1
            continue
        assert expect.outcome == "routed" and sorted(expect.destinations) == sorted(d["destinations"]), (d, expect)
    assert followed >= len(results_after_golive) + len(results_after_rollback)

    # results follow their orders across the switches (the routed decision: a result parked behind
    # earlier parked messages is decided at its release)
    by_id = {d["message_id"]: d for d in dec if d["outcome"] == "routed"}
    for r in results_after_golive:
        d = by_id[r["message_id"]]
        assert d["destinations"] == ["melior"] and "rules alone say millennium" in d["reason"], d
    for r in results_after_rollback:
        d = by_id[r["message_id"]]
        assert d["destinations"] == ["millennium"] and "rules alone say melior" in d["reason"], d

    # per-patient order within the etapp's traffic, on every destination topic
    order = {m: i for i, m in enumerate(sent) if engine.units.get(sent[m]["receiver"]["unit_hsa_id"]) and
             engine.units[sent[m]["receiver"]["unit_hsa_id"]].etapp == ETAPP}
    checked = 0
    for system in engine.systems:
        per_key: dict[bytes, list[int]] = defaultdict(list)
        for r in sorted(await read_topic(kafka_bootstrap, s.out_topic(system), idle_s=0.5),
                        key=lambda r: (r.partition, r.offset)):
            m = header(r, "samex-message-id")
            if m in order:
                per_key[r.key].append(order[m])
        for seq in per_key.values():
            assert seq == sorted(seq), (system, seq)
            checked += len(seq)
    assert checked > 100
    print(json.dumps({"messages": len(sent), **outcomes, "released": len(released), "results_followed": followed}))

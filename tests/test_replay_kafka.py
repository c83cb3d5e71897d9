"""`samex replay` on a real broker: a worker routes traffic under a rule set with a route missing;
then dry runs (no diff under the rules in force, a diff as of before a go-live, nothing produced),
a sandbox copy of exactly the selection, a capped re-send with headers and an audit record that
trace shows, bad input refused before anything happens, and a dead-letter re-drive after the fix."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from router.codec import default_codec
from router.rules.engine import Engine
from router.rules.load import load_rules
from router.topics import ensure_router_topics, ensure_topics
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

pytestmark = [pytest.mark.kafka, pytest.mark.slow]  # ~30-60 s: one worker run, about twenty CLI calls
CODEC = default_codec()
ENGINE = Engine(load_rules(REPO / "rules"))


def samex(s, *args: str, ok: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([SAMEX, *args], env=settings_env(s, COLUMNS="250", **env), capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    if ok:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def replay(s, *args: str) -> dict:
    return json.loads(samex(s, "replay", "--json", *args).stdout)


async def read_many(bootstrap: str, topics: list[str]) -> dict[str, list]:
    """Every record of several topics up to their current end, with one consumer (no idle waits)."""
    from aiokafka import TopicPartition

    from router.kafkaio import consumer, partitions_of

    c = consumer(bootstrap, group_id=None)
    await c.start()
    out: dict[str, list] = {t: [] for t in topics}
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(await partitions_of(c, t))]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        todo = {tp for tp in tps if end[tp] > 0}
        while todo:
            got = await c.getmany(*todo, timeout_ms=500, max_records=20000)
            for tp, recs in got.items():
                out[tp.topic].extend(recs)
            for tp in list(todo):
                if await c.position(tp) >= end[tp]:
                    todo.discard(tp)
    finally:
        await c.stop()
    return out


async def sizes(bootstrap: str, topics: list[str]) -> dict[str, int]:
    return {t: len(v) for t, v in (await read_many(bootstrap, topics)).items()}


async def out_records(s, bootstrap: str, replay_id: str) -> list:
    got = await read_many(bootstrap, [s.out_topic(y) for y in ENGINE.systems])
    return [x for recs in got.values() for x in recs if header(x, "samex-replay-id") == replay_id]


async def test_replay_modes_on_routed_traffic(kafka_bootstrap, topic_prefix, tmp_path: Path):
    s = topic_settings(kafka_bootstrap, topic_prefix)
    await ensure_router_topics(s, ENGINE.systems, ENGINE.golive_ms)
    # the rule set in force has lost its route for remisser to private providers
    cut = tmp_path / "cut"
    shutil.copytree(REPO / "rules", cut)
    base = cut / "routes" / "base.yaml"
    base.write_text(re.sub(r"  - id: remiss-privat\n(    .*\n)+\n", "", base.read_text()))
    samex(s, "rules", "publish", str(cut), "--reason", "test: route removed")
    t_from = int(time.time() * 1000) - 1000
    recs = synth_records(300, seed=17, patients=60)
    w = WorkerProcess(s).start()
    try:
        w.wait_ready()
        await produce_records(kafka_bootstrap, s.inbound_topic, recs, stamp_now=True)
        decisions = await read_topic(kafka_bootstrap, s.decisions_topic, expect=len(recs))
    finally:
        w.stop()
    assert len(decisions) == len(recs)
    frm = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t_from / 1000))
    cut_engine = Engine(load_rules(cut))
    privat = {x["message_id"] for x in recs if x["kind"] == "remiss"
              and ENGINE.units[x["receiver"]["unit_hsa_id"]].unit_type == "privat"}
    assert privat
    watched = [s.decisions_topic, s.deadletter_topic, s.control_topic, *(s.out_topic(x) for x in ENGINE.systems)]
    before = await sizes(kafka_bootstrap, watched)

    # -- dry run under the rules in force (by version): no diff, nothing produced
    same = replay(s, "--from", frm)
    assert same["total"] == len(recs) and same["same"] == len(recs) and same["changed"] == 0, same

    # -- as of before etapp 4's go-live: its messages would have gone to legacy systems
    as_of_ms = 1_790_000_000_000  # 2026-09-21, before 2026-10-13
    r = replay(s, "--from", frm, "--as-of", "2026-09-21T00:00+00:00", "--no-orders")
    expected = sum(1 for x in recs if cut_engine.decide(x, as_of_ms, {}).destinations
                   != cut_engine.decide(x, int(time.time() * 1000), {}).destinations)
    assert expected > 0 and r["changed"] == expected, (expected, r)
    assert all(c["before"] == "millennium" for c in r["changes"]) and r["changes"][0]["examples"]
    # ... and under a rule folder with the route back, exactly the dead-lettered remisser change
    r = replay(s, "--from", frm, "--rules", str(REPO / "rules"))
    assert r["changed"] == len(privat) and {c["before"] for c in r["changes"]} == {"dead_letter"}, r
    assert await sizes(kafka_bootstrap, watched) == before

    # -- bad input: refused before anything is read or written
    for args, text in [(["--from", frm, "--to", "2020-01-01T00:00"], "--from must be before --to"),
                       (["--from", frm, "--etapp", "etapp-9"], "unknown etapp"),
                       (["--from", frm, "--system", "nosuch"], "unknown system"),
                       (["--from", frm, "--to-topic", f"{topic_prefix}nosuch"], "does not exist"),
                       (["--from", frm, "--resend"], "--reason"),
                       (["--from", frm, "--resend", "--reason", "x", "--max", "500"], "--yes-really")]:
        out = samex(s, "replay", *args, ok=False)
        assert out.returncode == 2 and text in out.stderr, (args, out.stderr)
    assert await sizes(kafka_bootstrap, watched) == before

    # -- copy to a sandbox topic: exactly the selection
    sandbox = f"{topic_prefix}sandbox"
    await ensure_topics(kafka_bootstrap, [sandbox], partitions=2)
    r = replay(s, "--from", frm, "--to-topic", sandbox, "--kind", "lab_order")
    want = {x["message_id"] for x in recs if x["kind"] == "lab_order"}
    copied = await read_topic(kafka_bootstrap, sandbox, expect=len(want))
    got = [CODEC.decode_as("envelope", c.value)["message_id"] for c in copied]
    assert sorted(got) == sorted(want) and r["written"] == len(want)

    # -- re-send, capped at --max, with replay headers; an audit record that trace shows
    r = replay(s, "--from", frm, "--resend", "--reason", "test: lab orders lost at the lab", "--kind", "lab_order",
               "--max", "7")
    rid = r["replay_id"]
    assert r["written"] == 7 and r["not_sent_over_cap"] == len(want) - 7, r
    out_recs = await out_records(s, kafka_bootstrap, rid)
    resent = {header(x, "samex-replay-of") for x in out_recs}
    assert len(resent) == 7 and resent <= want
    assert all(header(x, "samex-replay-reason") == "test: lab orders lost at the lab" and header(x, "samex-replay-by")
               and header(x, "samex-replay-redeliver") is None for x in out_recs)
    redecided = [d for d in (CODEC.decode_as("decision", x.value)
                             for x in (await read_many(kafka_bootstrap, [s.decisions_topic]))[s.decisions_topic])
                 if d["replay_id"] == rid]
    assert len(redecided) == 7
    env = {"SAMEX_INDEX_URL": str(tmp_path / "index.sqlite")}
    one = sorted(resent)[0]
    t = json.loads(samex(s, "trace", "--json", one, **env).stdout)
    hops = [h["hop"] for h in t["hops"]]
    assert hops[:2] == ["received", "decided"] and "re-decided" in hops and "replayed" in hops, hops
    replayed = next(h for h in t["hops"] if h["hop"] == "replayed" and h["replay_id"] == rid)
    assert "lab orders lost at the lab" in replayed["reason"] and replayed["replay_id"] == rid
    assert [h["at_ms"] for h in t["hops"]] == sorted(h["at_ms"] for h in t["hops"])
    by_rid = json.loads(samex(s, "trace", "--json", rid, **env).stdout)
    assert set(by_rid["messages"]) == resent
    # by MSH-10 and by order number, as an analyst would
    x = next(x for x in recs if x["message_id"] == one)
    assert one in json.loads(samex(s, "trace", "--json", "--no-sync", x["source_message_id"], **env).stdout)["messages"]
    placer = x["correlation"]["placer_order_number"]
    assert one in json.loads(samex(s, "trace", "--json", "--no-sync", placer, **env).stdout)["messages"]

    # -- a re-send that matches nothing (a mistyped message id): exit 1, nothing sent, no audit record
    before_none = await sizes(kafka_bootstrap, watched)
    out = samex(s, "replay", "--from", frm, "--resend", "--reason", "test: typo", "--message-id", one[:-3], ok=False)
    assert out.returncode == 1 and "nothing selected" in out.stderr, out.stdout + out.stderr
    assert "audit record on the control topic" not in out.stdout and "rp-" not in out.stdout, out.stdout
    assert await sizes(kafka_bootstrap, watched) == before_none

    # -- the rule fix is published; dead letters re-driven: what was dead-lettered is routed now
    samex(s, "rules", "publish", str(REPO / "rules"), "--reason", "test: route restored")
    dry = replay(s, "--from", frm, "--dead-letters")
    assert dry["total"] == len(privat) and dry["changed"] == 0  # under the rules in force then: still dead
    r = replay(s, "--from", frm, "--dead-letters", "--resend", "--reason", "test: route restored", "--redeliver")
    assert r["written"] == len(privat) and sum(r["outcomes"].values()) == len(privat), r
    assert "dead_letter" not in r["outcomes"] and set(r["outcomes"]) <= {"millennium", "privat-ehr"}, r
    routed = await out_records(s, kafka_bootstrap, r["replay_id"])
    assert {header(x, "samex-replay-of") for x in routed} == privat
    assert all(header(x, "samex-replay-redeliver") == "1" for x in routed)
    t = json.loads(samex(s, "trace", "--json", sorted(privat)[0], **env).stdout)
    hops = [h["hop"] for h in t["hops"]]
    assert hops[:3] == ["received", "decided", "dead_lettered"] and hops[-2:] in (["replayed", "re-decided"],
                                                                                  ["re-decided", "replayed"]), hops

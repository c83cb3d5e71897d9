"""At-least-once under kill -9, and scale-out with two workers in one consumer group."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.codec import default_codec
from router.kafkaio import records_in
from router.rules.engine import Engine
from router.rules.load import load_rules
from router.topics import ensure_router_topics
from tests.kafka_helpers import (
    WorkerProcess,
    header,
    produce_records,
    read_topic,
    synth_records,
    topic_settings,
    wait_stable_assignment,
)
from tests.ops_helpers import metric_sum

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
ENGINE = Engine(load_rules(REPO / "rules"))
codec = default_codec()


async def outputs_by_id(bootstrap: str, s, expect_decisions: int, ids: set[str] | None = None,
                        timeout_s: float = 120) -> tuple[Counter, Counter]:
    """(decision count per message id, output count per message id over destination/park/dead-letter topics).
    Waits until ``expect_decisions`` records are there and, if given, a decision for each of ``ids``
    (re-processed duplicates count towards the number, so the number alone can come too early)."""
    deadline = time.monotonic() + timeout_s
    while True:
        decisions = await read_topic(bootstrap, s.decisions_topic, expect=expect_decisions, timeout_s=timeout_s)
        dec = Counter(codec.decode_as("decision", r.value)["message_id"] for r in decisions)
        if ids is None or ids <= set(dec) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    out = Counter({mid: sum(per_topic.values()) for mid, per_topic in (await placements(bootstrap, s)).items()})
    return dec, out


async def placements(bootstrap: str, s) -> dict[str | None, Counter]:
    """Message id -> output records per topic, over the destination, park and dead-letter topics
    (the destination and park records' samex-message-id header, the dead letter's message_id)."""
    where: dict[str | None, Counter] = {}
    topics = [s.out_topic(x) for x in ENGINE.systems] + [s.park_topic(e) for e in ENGINE.golive_ms]
    for t in topics:
        for r in await read_topic(bootstrap, t, idle_s=1.0):
            where.setdefault(header(r, "samex-message-id"), Counter())[t] += 1
    for r in await read_topic(bootstrap, s.deadletter_topic, idle_s=1.0):
        mid = codec.decode_as("deadletter", r.value)["message_id"]
        where.setdefault(mid, Counter())[s.deadletter_topic] += 1
    return where


def lag_series(w: WorkerProcess, topic: str) -> dict[int, float]:
    """The worker's samex_consumer_lag samples of ``topic``: partition -> records behind."""
    text = w.get("/metrics").decode()
    return {int(x.labels["partition"]): x.value for fam in text_string_to_metric_families(text)
            for x in fam.samples if x.name == "samex_consumer_lag" and x.labels["topic"] == topic}


def named_topics(s, d: dict) -> set[str]:
    """The topics a decision record says its message went to."""
    if d["outcome"] == "routed":
        return {s.out_topic(x) for x in d["destinations"]}
    if d["outcome"] == "parked":
        return set(d["destinations"])  # the park topic itself
    return {s.deadletter_topic}


async def test_kill_minus_nine_three_times_loses_nothing(kafka_bootstrap, topic_prefix, capsys, tmp_path):
    s = topic_settings(kafka_bootstrap, topic_prefix)
    # the example rules with one fan-out: a remiss to a live hospital also goes to Melior, so that a
    # kill also lands between the two outputs of one message
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    base = rules / "routes" / "base.yaml"
    text = base.read_text()
    one = "    live: [millennium]\n    not_live: [elvis]"
    assert text.count(one) == 1
    base.write_text(text.replace(one, "    live: [millennium, melior]\n    not_live: [elvis]"))
    await ensure_router_topics(s, ENGINE.systems, ENGINE.golive_ms)
    recs = synth_records(50_000, seed=77, patients=2000, bad_share=0.01)
    ids = {r["message_id"] for r in recs}
    # The traffic runs only while the test sleeps (wait_ready blocks the loop) and makes nothing up
    # afterwards: at most 45,000 of the 50,000 messages are sent before the third kill, so each kill
    # lands while messages flow.
    producer = asyncio.create_task(produce_records(kafka_bootstrap, s.inbound_topic, recs, rate=6000,
                                                   catch_up=False))
    w = WorkerProcess(s, rules=rules).start()
    routed_when_killed = []
    decided_when_killed = []  # decision records in the log at each kill
    try:
        for _ in range(3):
            w.wait_ready()  # blocks the loop: the traffic waits for the worker, so every kill is mid-flow
            await asyncio.sleep(2.5)  # let messages flow, then kill in the middle of it
            routed_when_killed.append(metric_sum(w, "samex_messages_in_total"))
            decided_when_killed.append(await records_in(kafka_bootstrap, s.decisions_topic))
            assert not producer.done(), "the traffic ended before the kill"
            w.kill9()
            w = WorkerProcess(s, rules=rules).start()
        await producer
        w.wait_ready()
        dec, _out = await outputs_by_id(kafka_bootstrap, s, expect_decisions=len(recs), ids=ids)
        where = await placements(kafka_bootstrap, s)
        records = [codec.decode_as("decision", r.value) for r in
                   await read_topic(kafka_bootstrap, s.decisions_topic, idle_s=1.0)]
    finally:
        w.stop()
    # each of the three workers was routing when it was killed, and had written decisions of its own:
    # the log grew between kills (re-decisions count too, so it says nothing about the input left)
    assert len(routed_when_killed) == 3 and all(n > 0 for n in routed_when_killed), routed_when_killed
    assert 0 < decided_when_killed[0] < decided_when_killed[1] < decided_when_killed[2], decided_when_killed
    missing_decisions = ids - set(dec)
    missing_outputs = ids - set(where)
    assert not missing_decisions, f"{len(missing_decisions)} messages without a decision"
    assert not missing_outputs, f"{len(missing_outputs)} messages without an output"
    assert None not in where, f"{sum(where[None].values())} output records without a message id"
    # every output is where a decision of its message sent it, and the last decision of each message
    # (its partition's order: the one whose offset was committed) has all its outputs
    named: dict[str, set[str]] = {}
    last: dict[str, set[str]] = {}
    for d in records:
        topics = named_topics(s, d)
        named.setdefault(d["message_id"], set()).update(topics)
        last[d["message_id"]] = topics
    stray = {m: dict(c) for m, c in where.items() if not set(c) <= named.get(m, set())}
    assert not stray, f"{len(stray)} messages with an output no decision named, e.g. {next(iter(stray.items()))}"
    unfinished = [m for m in ids if not last[m] <= set(where[m])]
    assert not unfinished, f"{len(unfinished)} messages lack an output their last decision named"
    fanned = sum(1 for m in ids if len(last[m]) > 1)
    assert fanned > 1000, fanned  # the fan-out route was taken
    dup_decisions = sum(n - 1 for n in dec.values() if n > 1)
    dup_outputs = sum(n - 1 for c in where.values() for n in c.values() if n > 1)
    with capsys.disabled():
        print(f"\nkill -9 x3 over {len(recs)} messages (decision log at the kills: {decided_when_killed}): "
              f"{dup_decisions} duplicate decisions ({sum(1 for n in dec.values() if n > 1)} message ids "
              f"re-processed), {dup_outputs} duplicate output records, all carrying their message id; "
              f"{fanned} messages went to more than one topic")


async def test_two_workers_share_partitions_and_survive_one_dying(kafka_bootstrap, topic_prefix):
    s = topic_settings(kafka_bootstrap, topic_prefix)
    await ensure_router_topics(s, ENGINE.systems, ENGINE.golive_ms)
    a = WorkerProcess(s, worker_id="wa").start()
    b = WorkerProcess(s, worker_id="wb").start()
    try:
        a.wait_ready()
        b.wait_ready()
        # the group as its coordinator sees it: both members, each with its own partitions
        assigned = await wait_stable_assignment(kafka_bootstrap, s.group_id, s.inbound_topic, {"samex-wa", "samex-wb"})
        parts_a, parts_b = assigned["samex-wa"], assigned["samex-wb"]
        assert parts_a and parts_b and not parts_a & parts_b and parts_a | parts_b == set(range(s.partitions))
        first = synth_records(6000, seed=5, patients=600)
        await produce_records(kafka_bootstrap, s.inbound_topic, first, rate=3000)
        decisions = await read_topic(kafka_bootstrap, s.decisions_topic, expect=len(first))
        first_dec = [codec.decode_as("decision", r.value) for r in decisions]
        # each message decided once, by the worker that owns its partition
        assert len(first_dec) == len(first) and {d["message_id"] for d in first_dec} == {r["message_id"] for r in first}
        by_worker = {w: {d["input"]["partition"] for d in first_dec if d["worker"] == w} for w in ("wa", "wb")}
        assert by_worker == {"wa": parts_a, "wb": parts_b}, by_worker
        second = synth_records(6000, seed=6, patients=600)
        task = asyncio.create_task(produce_records(kafka_bootstrap, s.inbound_topic, second, rate=3000))
        await asyncio.sleep(0.7)
        a.kill9()
        t_kill = time.time() * 1000
        await task
        # the group now has wb alone, with every partition
        after = await wait_stable_assignment(kafka_bootstrap, s.group_id, s.inbound_topic, {"samex-wb"})
        assert after["samex-wb"] == set(range(s.partitions))
        ids = {r["message_id"] for r in first + second}
        dec, out = await outputs_by_id(kafka_bootstrap, s, expect_decisions=len(first) + len(second), ids=ids)
        assert ids <= set(dec) and ids <= set(out)
        later = [codec.decode_as("decision", r.value) for r in
                 await read_topic(kafka_bootstrap, s.decisions_topic, idle_s=1.0)]
        # every partition of wa's got decisions after the kill, all of them by wb
        moved = [d for d in later if d["input"]["partition"] in parts_a and d["decided_at_ms"] > t_kill]
        assert {d["input"]["partition"] for d in moved} == parts_a, Counter(d["input"]["partition"] for d in moved)
        assert {d["worker"] for d in moved} == {"wb"}, Counter(d["worker"] for d in moved)
        assert b.proc.poll() is None
    finally:
        a.stop()
        b.stop()


async def test_a_rebalance_commits_what_the_commit_interval_held_back(kafka_bootstrap, topic_prefix):
    """A worker that would commit only once a minute hands its partitions over without re-decisions:
    before they move (a second worker joins), it commits every acknowledged offset at once."""
    s = topic_settings(kafka_bootstrap, topic_prefix)
    await ensure_router_topics(s, ENGINE.systems, ENGINE.golive_ms)
    a = WorkerProcess(s, worker_id="wa", SAMEX_COMMIT_INTERVAL_MS="60000", SAMEX_LAG_REPORT_INTERVAL_S="0.5").start()
    b = None
    try:
        a.wait_ready()
        first = synth_records(3000, seed=8, patients=600)
        await produce_records(kafka_bootstrap, s.inbound_topic, first, rate=3000)
        assert len(await read_topic(kafka_bootstrap, s.decisions_topic, expect=len(first))) == len(first)
        # wa's first batch was committed at once; everything after it waits for the minute to pass
        b = WorkerProcess(s, worker_id="wb", SAMEX_LAG_REPORT_INTERVAL_S="0.5").start()
        b.wait_ready()
        assigned = await wait_stable_assignment(kafka_bootstrap, s.group_id, s.inbound_topic, {"samex-wa", "samex-wb"})
        second = synth_records(3000, seed=9, patients=600)
        await produce_records(kafka_bootstrap, s.inbound_topic, second, rate=3000)
        ids = {r["message_id"] for r in first + second}
        dec, out = await outputs_by_id(kafka_bootstrap, s, expect_decisions=len(ids), ids=ids)
        assert ids <= set(dec) and ids <= set(out)
        later = [codec.decode_as("decision", r.value) for r in
                 await read_topic(kafka_bootstrap, s.decisions_topic, idle_s=2.0)]
        assert {d["worker"] for d in later if d["message_id"] in {r["message_id"] for r in second}} == {"wa", "wb"}
        again = Counter(d["message_id"] for d in later)
        first_ids = {r["message_id"] for r in first}
        redecided = sorted(m for m, n in again.items() if n > 1 and m in first_ids)
        # every one of the first 3,000 was acknowledged before wb joined. Without the commit on
        # revocation, whichever worker got a partition re-decided it from wa's first commit on
        # (with the listener removed: 4,742 of all 6,000 messages decided twice)
        assert redecided == [], f"{len(redecided)} of the first {len(first)} messages decided twice"
        # samex_consumer_lag: each worker reports exactly the partitions it owns (wa dropped the ones
        # the rebalance took), so the series summed over workers are the group's lag; all caught up
        for w, client in ((a, "samex-wa"), (b, "samex-wb")):
            want = dict.fromkeys(assigned[client], 0.0)
            deadline = time.monotonic() + 20
            while (seen := lag_series(w, s.inbound_topic)) != want and time.monotonic() < deadline:
                await asyncio.sleep(0.3)
            assert seen == want, (client, seen, want)
    finally:
        a.stop()
        if b is not None:
            b.stop()

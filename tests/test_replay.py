"""Replay without a broker: the fast envelope reader equals the codec, filters, the engine per
rule-set version, the diff, and the guards that refuse a replay before it starts."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.codec import default_codec
from router.envelopereader import _NOT_ON_HOT_PATH as NOT_ON_HOT_PATH
from router.envelopereader import RoutingReader
from router.errors import CodecError
from router.replay import (
    Diff,
    Engines,
    Filters,
    Item,
    Redecider,
    ReplayError,
    cap_check,
    check_window,
    outcome_of_decision,
    read_control_records,
)
from router.rules.engine import Engine
from router.rules.load import load_rules, read_rule_texts
from router.synth import load_units, traffic
from router.worker.control import etapp_record, rules_record

REPO = Path(__file__).resolve().parent.parent
CODEC = default_codec()
ENGINE = Engine(load_rules(REPO / "rules"))
READER = RoutingReader(CODEC)


def envs(n: int, seed: int = 4) -> list[dict]:
    gen = traffic(random.Random(seed), load_units(), int(time.time() * 1000), patients=50, bad_share=0.1)
    return [next(gen) for _ in range(n)]


def routing_view(env: dict) -> dict:
    return {**{k: v for k, v in env.items() if k != "payload"}, "patient": None}


opt_text = st.one_of(st.none(), st.text(max_size=300))


@settings(max_examples=150, deadline=None)
@given(sub=opt_text, status=opt_text, system=opt_text, filler=opt_text, reply=opt_text, source=opt_text,
       event=st.one_of(st.none(), st.integers(-(2**62), 2**62)), received=st.integers(-(2**62), 2**62),
       data=st.binary(max_size=400), ctype=opt_text)
def test_routing_reader_equals_the_codec(sub, status, system, filler, reply, source, event, received, data, ctype):
    e = envs(1)[0]
    e.update(subtype=sub, status=status, source=source, event_time_ms=event, received_time_ms=received)
    e["sender"] = {**e["sender"], "system": system}
    e["correlation"] = {**e["correlation"], "filler_order_number": filler, "in_reply_to": reply}
    e["payload"] = {**e["payload"], "data": data, "content_type": ctype}
    value = CODEC.encode("envelope", e)
    name, got = READER.decode(value)
    assert name == "envelope" and got == routing_view(CODEC.decode(value)[1])
    assert "patient" in got and got["patient"] is None  # never decoded
    # the hot path's reader: the same, without the fields the worker never reads
    name, lean, raw = READER.decode_raw(value)
    assert name == "envelope" and raw is not None and lean == without(got, NOT_ON_HOT_PATH)


def without(env: dict, paths: frozenset[str]) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in env.items()}
    for p in paths:
        head, _, tail = p.partition(".")
        if tail:
            del out[head][tail]
        else:
            del out[head]
    return out


def test_routing_reader_refuses_what_the_codec_refuses():
    value = CODEC.encode("envelope", envs(1)[0])
    for bad in (value[:-3], value + b"x", b"garbage", value[:12]):
        with pytest.raises(CodecError):
            READER.decode(bad)
    name, _ = READER.decode(CODEC.encode("delivery", {"message_id": "m", "system": "s", "outcome": "acknowledged",
                                                      "ack_code": None, "detail": None, "attempts": 1, "at_ms": 1,
                                                      "replay_id": None, "trace_id": None}))
    assert name == "delivery"


def decided(env: dict, engine: Engine, at: int) -> dict:
    d = engine.decide(env, at, {})
    return {"message_id": env["message_id"], "outcome": {"park": "parked"}.get(d.outcome, d.outcome),
            "destinations": list(d.destinations) if d.outcome == "routed" else [], "rules_version": d.rules_version,
            "decided_at_ms": at, "etapp": d.etapp, "rule": d.rule}


def test_redecide_by_version_at_the_decided_instant_gives_no_diff_and_other_rules_do(tmp_path: Path):
    moved = tmp_path / "moved"
    shutil.copytree(REPO / "rules", moved)
    plan = moved / "plan.yaml"
    plan.write_text(plan.read_text().replace("2026-10-13T06:00 Europe/Stockholm", "2031-10-13T06:00 Europe/Stockholm"))
    old = Engine(load_rules(moved))
    at = int(time.time() * 1000)
    items = [Item(b"", None, [], "samex.in", 0, i, e, decided(e, old, at)) for i, e in enumerate(envs(400))]
    # decided under the "moved" version, which is published; the active set is the current folder
    control = read_control_records([rules_record(read_rule_texts(moved), "a", "old"),
                                    rules_record(read_rule_texts(REPO / "rules"), "a", "new")])
    assert set(control.published) == {old.version, ENGINE.version}
    engines = Engines(control.published, ENGINE)
    diff = Diff()
    rd = Redecider(engines, control.states)
    for it in items:
        diff.add(it, outcome_of_decision(rd.decide(it)))
    assert diff.same == len(items) and not diff.changes and not engines.missing
    # the active rules (etapp 4 live) change exactly the etapp-4 messages
    diff2 = Diff()
    rd2 = Redecider(engines, control.states, engine=ENGINE)
    for it in items:
        diff2.add(it, outcome_of_decision(rd2.decide(it)))
    want = sum(1 for it in items
               if ENGINE.decide(it.env, at, {}).destinations != old.decide(it.env, at, {}).destinations)
    assert want > 0 and sum(diff2.changes.values()) == want
    assert all(b == "millennium" or a == "millennium" for (_k, b, a) in diff2.changes)
    # a version not on the control topic falls back to the active set, and says so
    lost = Engines({}, ENGINE)
    Redecider(lost, control.states).decide(items[0])
    assert lost.missing == {old.version: 1}


def test_recorded_etapp_states_are_applied_at_the_decided_instant():
    at = int(time.time() * 1000)
    e4 = next(e for e in envs(400) if ENGINE.units[e["receiver"]["unit_hsa_id"]].etapp == "etapp-4-vastra")
    control = read_control_records([etapp_record("etapp-4-vastra", "hold", at - 1000, "a", "wait")])
    it = Item(b"", None, [], "samex.in", 0, 0, e4, {**decided(e4, ENGINE, at), "outcome": "parked",
                                                    "destinations": []})
    d = Redecider(Engines({}, ENGINE), control.states).decide(it)
    assert d.outcome == "park"
    before = Redecider(Engines({}, ENGINE), control.states, as_of_ms=at - 2000).decide(it)
    assert before.outcome == "routed"


def test_control_records_the_workers_refuse_are_skipped_as_they_are():
    """A replay reads the control topic as the workers do: a forced invalid rule set never becomes the
    active one, and an etapp change with missing fields or a detail that is not JSON is skipped."""
    good = read_rule_texts(REPO / "rules")
    broken = {**good, "routes/base.yaml": "routes: ["}
    at = int(time.time() * 1000)
    bad_fields = {**etapp_record("etapp-4-vastra", "hold", at, "a", "x"), "etapp": None, "effective_ms": None}
    bad_detail = {**etapp_record("etapp-4-vastra", "hold", at, "a", "x"), "detail": "{not json"}
    control = read_control_records([rules_record(good, "a", "ok"), rules_record(broken, "a", "forced"), bad_fields,
                                    bad_detail, etapp_record("etapp-4-vastra", "paused", at - 1000, "a", "ok")])
    assert control.active_texts == good and list(control.published) == [ENGINE.version]
    assert control.states.at(at) == {"etapp-4-vastra": "paused"}


def test_filters():
    e = envs(50)
    f = e[0]
    orig = {"destinations": ["millennium"], "etapp": "etapp-1-sodra-pd1", "rule": "r1"}
    assert Filters().matches(f, None, None)
    assert Filters(kinds=frozenset({f["kind"]})).matches(f, None, None)
    assert not Filters(kinds=frozenset(set(("remiss", "lab_order", "lab_result", "info")) - {f["kind"]})).matches(
        f, None, None)
    assert Filters(message_ids=frozenset({f["source_message_id"]})).matches(f, None, None)
    assert Filters(senders=frozenset({f["sender"]["unit_hsa_id"]})).matches(f, None, None)
    assert not Filters(receivers=frozenset({"SE0000000000-X"})).matches(f, None, None)
    assert Filters(systems=frozenset({"millennium"})).matches(f, orig, None)
    assert not Filters(systems=frozenset({"melior"})).matches(f, orig, None)
    assert Filters(etapper=frozenset({"etapp-1-sodra-pd1"}), rules=frozenset({"r1"})).matches(f, orig, None)
    assert not Filters(etapper=frozenset({"etapp-1-sodra-pd1"})).matches(f, None, None)
    assert Filters(reasons=frozenset({"no_route"})).matches(f, orig, {"reason_code": "no_route", "system": None})
    assert not Filters(reasons=frozenset({"no_route"})).matches(f, orig, None)
    with pytest.raises(ReplayError, match="unknown etapp 'etapp-9'"):
        Filters(etapper=frozenset({"etapp-9"})).validate([ENGINE])
    with pytest.raises(ReplayError, match="unknown system 'x'"):
        Filters(systems=frozenset({"x"})).validate([ENGINE])
    Filters(systems=frozenset({"millennium"}), etapper=frozenset({"etapp-4-vastra"})).validate([ENGINE])


def test_guards():
    with pytest.raises(ReplayError, match="before"):
        check_window(2000, 1000)
    with pytest.raises(ReplayError):
        check_window(1000, 1000)
    check_window(1000, 2000)
    cap_check(100, False)
    with pytest.raises(ReplayError, match="--yes-really"):
        cap_check(101, False)
    cap_check(5000, True)
    with pytest.raises(ReplayError):
        cap_check(0, True)

"""`samex rules diff OLD NEW`: which (unit × kind) destinations change, over which interval, and why."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from router.cli import cli
from router.envelope import KINDS
from router.rules.engine import Engine
from router.rules.load import load_rules
from router.timeutil import parse_cli_instant

REPO = Path(__file__).resolve().parent.parent
OLD_GO_LIVE = "go_live: 2026-04-21T06:00 Europe/Stockholm"
NEW_GO_LIVE = "go_live: 2026-06-02T06:00 Europe/Stockholm"


@pytest.fixture
def new(tmp_path) -> Path:
    d = tmp_path / "rules"
    shutil.copytree(REPO / "rules", d)
    return d


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def diff(new: Path):
    return CliRunner().invoke(cli, ["rules", "diff", str(REPO / "rules"), str(new)])


def change_lines(new: Path, exit_code: int) -> list[str]:
    """The diff's change lines, after checking its exit code; there must be some."""
    r = diff(new)
    assert r.exit_code == exit_code, r.output
    lines = [ln for ln in r.output.splitlines() if "because" in ln]
    assert lines, r.output
    return lines


def pairs_changing(new: Path) -> int:
    """From the summary line: how many (unit × kind) pairs change destinations."""
    m = re.search(r"^(\d+) \(unit × kind\) pair\(s\) change destinations", diff(new).output, re.M)
    assert m, diff(new).output
    return int(m.group(1))


def test_identical_rule_sets_change_nothing(new):
    r = diff(new)
    assert r.exit_code == 0, r.output
    assert "0 (unit × kind) pair(s) change destinations" in r.output and "because" not in r.output


def test_a_postponed_go_live_names_the_move_and_one_interval(new):
    edit(new / "plan.yaml", OLD_GO_LIVE, NEW_GO_LIVE)
    for ln in change_lines(new, 1):  # one merged interval per change, and the cause in words
        assert ln.startswith("from 2026-04-21T06:00+02:00 until 2026-06-02T06:00+02:00: "), ln
        assert "etapp-3-norra-ostra go-live moved from 2026-04-21T06:00+02:00 to 2026-06-02T06:00+02:00" in ln, ln
        assert "(same destinations)" not in ln and " -> " in ln
    # the count is every (unit × kind) of the etapp that routes otherwise while it is not yet live
    a, b = Engine(load_rules(REPO / "rules")), Engine(load_rules(new))
    at = parse_cli_instant("2026-05-01T12:00+02:00")
    expected = 0
    for hsa, unit in a.units.items():
        for kind in KINDS:
            env = {"kind": kind, "subtype": None, "receiver": {"unit_hsa_id": hsa},
                   "sender": {"unit_hsa_id": "", "care_provider_hsa_id": None}}
            if a.decide(env, at).destinations != b.decide(env, at).destinations:
                assert unit.etapp == "etapp-3-norra-ostra"
                expected += 1
    assert expected > 100 and pairs_changing(new) == expected


def test_a_unit_that_changes_etapp_says_from_which_to_which(new):
    edit(new / "plan.yaml", "      municipality: [Alingsås, Lerum]", "      municipality: [Alingsås]")
    edit(new / "plan.yaml", "      municipality: [Borås, Bollebygd", "      municipality: [Lerum, Borås, Bollebygd")
    lines = change_lines(new, 1)
    assert all("the unit moved from etapp-2-sodra to etapp-1-sodra-pd1" in ln for ln in lines), lines
    # etapp-1 went live a year before etapp-2: only that year changes
    assert all(ln.startswith("from 2024-11-12T06:00+01:00 until 2025-10-14T06:00+02:00: ") for ln in lines), lines


def test_a_renamed_rule_is_listed_apart_and_changes_no_destination(new):
    edit(new / "routes" / "base.yaml", "  - id: lab-order-lokalt-lab", "  - id: lokalt-lab")
    lines = change_lines(new, 0)
    assert all(ln.startswith("at all times: lab_order to lokalt_lab units") for ln in lines), lines
    assert all("labcenter (same destinations)" in ln and "rule lokalt-lab now decides instead of "
               "lab-order-lokalt-lab" in ln for ln in lines)
    assert pairs_changing(new) == 0


def test_a_rule_with_new_destinations_says_so(new):
    edit(new / "routes" / "base.yaml", "    to: [labcenter]", "    to: [labcenter, sectra-ids7]")
    lines = change_lines(new, 1)
    assert all(ln.startswith("at all times: lab_order to lokalt_lab units") for ln in lines), lines
    assert all("labcenter -> labcenter, sectra-ids7" in ln and "rule lab-order-lokalt-lab changed its "
               "destinations" in ln for ln in lines), lines


def test_a_destination_change_for_some_senders_is_not_hidden_by_a_rule_change_for_all(new):
    """A new catch-all rule with the old destinations, and above it a rule for private senders only
    that sends elsewhere: the diff must report the private senders' destination change."""
    with (new / "routes" / "base.yaml").open("a") as fh:
        fh.write("""
  - id: remiss-sjukhus-alla
    kind: remiss
    receiver: {unit_type: [sjukhus, forlossning]}
    priority: 200
    live: [millennium]
    not_live: [elvis]

  - id: remiss-sjukhus-fran-privat
    kind: remiss
    receiver: {unit_type: [sjukhus, forlossning]}
    sender: {unit_type: [privat]}
    priority: 300
    live: [millennium]
    not_live: [melior]
""")
    lines = change_lines(new, 1)
    moved = [ln for ln in lines if "elvis -> melior" in ln]
    assert moved and all("rule remiss-sjukhus-fran-privat now decides instead of remiss-sjukhus" in ln
                         for ln in moved), lines
    # and it says for which senders: not every remiss to those units changes
    assert all(" remiss (from senders with unit type privat) to " in ln for ln in moved), moved
    assert pairs_changing(new) > 0


def test_a_rule_for_one_subtype_is_found_and_named(new):
    """A rule for one subtype only (the example in the etapp file): the subtype's messages change."""
    edit(new / "routes" / "etapp-3-norra-ostra.yaml", "routes: []", """routes:
  - id: e3-remiss-akut
    kind: remiss
    subtype: [REF^I12]
    receiver: {unit_type: [sjukhus]}
    priority: 200
    live: [millennium]
    not_live: [melior]""")
    lines = change_lines(new, 1)
    assert all(ln.startswith("before 2026-04-21T06:00+02:00: remiss (subtype REF^I12) to sjukhus units "
                             "(etapp-3-norra-ostra; ") for ln in lines if "elvis -> melior" in ln), lines
    assert any("elvis -> melior" in ln and "rule e3-remiss-akut now decides instead of remiss-sjukhus" in ln
               for ln in lines), lines
    a, b = Engine(load_rules(REPO / "rules")), Engine(load_rules(new))
    at = parse_cli_instant("2026-04-01T12:00+02:00")
    sjukhus = [h for h, u in b.units.items() if u.etapp == "etapp-3-norra-ostra" and u.unit_type == "sjukhus"]
    assert pairs_changing(new) == len(sjukhus) > 0
    env = {"kind": "remiss", "subtype": "REF^I12", "receiver": {"unit_hsa_id": sjukhus[0]},
           "sender": {"unit_hsa_id": "", "care_provider_hsa_id": None}}
    assert a.decide(env, at).destinations == ("elvis",) and b.decide(env, at).destinations == ("melior",)


@pytest.mark.parametrize("field", ["live", "not_live"])
def test_a_change_of_one_phase_destinations_says_the_rule_changed_them(new, field):
    old_line = "    live: [millennium]\n    not_live: [elvis]"
    new_line = ("    live: [millennium, melior]\n    not_live: [elvis]" if field == "live"
                else "    live: [millennium]\n    not_live: [elvis, melior]")
    text = (new / "routes" / "base.yaml").read_text()
    first = text.index(old_line)  # remiss-sjukhus, the first route
    (new / "routes" / "base.yaml").write_text(text[:first] + new_line + text[first + len(old_line):])
    lines = change_lines(new, 1)
    assert all("because rule remiss-sjukhus changed its destinations (rule remiss-sjukhus)" in ln
               for ln in lines), lines
    assert any(("millennium -> millennium, melior" if field == "live" else "elvis -> elvis, melior") in ln
               for ln in lines), lines


SENDER_RULE = """
  - id: remiss-primarvard-fran-boras
    kind: remiss
    receiver: {unit_type: [primarvard]}
    sender: {municipality: [Borås]}
    priority: 200
    to: [melior]
"""


def test_a_sender_that_moves_into_a_sender_condition_is_seen(new, tmp_path):
    """A unit whose own attributes change (here: its municipality) must be tried as a sender too, not
    only through another unit that already had the new attributes."""
    old = tmp_path / "old"
    shutil.copytree(REPO / "rules", old)
    for d in (old, new):
        with (d / "routes" / "base.yaml").open("a") as fh:
            fh.write(SENDER_RULE)
    moved = "SE2321000131-E000000001266,Alingsås lasarett Akutmottagningen,SE2321000131-E000000000001," \
            "Västra Götalandsregionen,sodra,Alingsås,sjukhus"
    edit(new / "units.csv", moved, moved.replace(",Alingsås,sjukhus", ",Borås,sjukhus"))
    r = CliRunner().invoke(cli, ["rules", "diff", str(old), str(new)])
    assert r.exit_code == 1, r.output
    as_sender = [ln for ln in r.output.splitlines()
                 if ln.startswith(("at all times", "before", "from")) and "to primarvard units" in ln
                 and "-> melior" in ln]
    assert as_sender and all("remiss (from senders with municipality Borås)" in ln and
                             "rule remiss-primarvard-fran-boras now" in ln for ln in as_sender), r.output
    primarvard = sum(1 for u in Engine(load_rules(new)).units.values() if u.unit_type == "primarvard")
    assert sum(int(re.search(r"; (\d+) units?\)", ln).group(1)) for ln in as_sender) >= primarvard


def test_every_change_of_a_pair_is_listed_with_the_senders_it_concerns(new, tmp_path):
    """The sender condition moves from Borås to Alingsås: the Borås senders lose the route and the
    Alingsås senders gain it; both are changes, for different senders."""
    old = tmp_path / "old"
    shutil.copytree(REPO / "rules", old)
    with (old / "routes" / "base.yaml").open("a") as fh:
        fh.write(SENDER_RULE)
    with (new / "routes" / "base.yaml").open("a") as fh:
        fh.write(SENDER_RULE.replace("[Borås]", "[Alingsås]"))
    r = CliRunner().invoke(cli, ["rules", "diff", str(old), str(new)])
    assert r.exit_code == 1, r.output
    out = r.output.splitlines()
    lost = [ln for ln in out if "melior -> " in ln and "to primarvard units" in ln]
    gained = [ln for ln in out if "-> melior" in ln and "to primarvard units" in ln]
    assert lost and all("(from senders with municipality Borås)" in ln for ln in lost), r.output
    assert gained and all("(from senders with municipality Alingsås)" in ln for ln in gained), r.output

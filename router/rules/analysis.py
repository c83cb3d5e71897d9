"""Static checks of a compiled rule set, and the diff between two rule sets.

Both evaluate every (receiver unit × kind × phase) with every class of sender and subtype that
the candidate routes can tell apart, so a conflict or a gap is found before any message flows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from router.envelope import KINDS
from router.rules.engine import CompiledRoute, Engine, Unit
from router.rules.load import RuleSet, parse_rules
from router.rules.model import NO_ROUTE

UNKNOWN_SENDER = Unit("(unknown sender)", "", "", "", "", "", None)


def _sender_classes(engine: Engine) -> list[Unit]:
    """One representative sender per distinct attribute combination (plus an unknown sender)."""
    seen: dict[tuple[str, ...], Unit] = {}
    for u in engine.units.values():
        seen.setdefault((u.unit_type, u.area, u.municipality, u.care_provider, u.hsa_id), u)
    return [*seen.values(), UNKNOWN_SENDER]


def _applicable(cands: tuple[CompiledRoute, ...], receiver: Unit, senders: list[Unit]) -> Iterator[
        tuple[Unit | None, str | None, list[CompiledRoute]]]:
    """Yield (sender class, subtype class, routes applicable in priority order)."""
    if all(r.unconditional for r in cands):
        yield None, None, list(cands)
        return
    subtypes: list[str | None] = [None, *sorted({s for r in cands if r.subtypes for s in r.subtypes})]
    for sender in senders:
        known = None if sender is UNKNOWN_SENDER else sender
        provider = None if known is None else known.care_provider
        for st in subtypes:
            yield sender, st, [r for r in cands if r.unconditional or r.sender_ok(known, provider, receiver, st)]


def _fmt_ms(ms: int) -> str:
    from router.timeutil import STOCKHOLM

    return dt.datetime.fromtimestamp(ms / 1000, STOCKHOLM).isoformat(timespec="minutes")


def check_rules(rules: RuleSet, label_root: str = "rules") -> list[str]:
    """Problems of a loaded rule set beyond parsing: gaps, overlaps, routes to retired systems."""
    engine = Engine(rules)
    senders = _sender_classes(engine)
    problems: list[str] = []
    gaps: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    conflicts: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    retired: dict[tuple[str, str], list[str]] = defaultdict(list)
    for hsa, unit in sorted(engine.units.items()):
        phases = (False, True) if unit.etapp else (False,)
        for kind in KINDS:
            for live in phases:
                phase = "live" if live else "not live"
                cands = engine.candidates(hsa, kind, live)
                for sender, subtype, routes in _applicable(cands, unit, senders):
                    if not routes:
                        who = "" if sender is None else f" from {sender.unit_type} sender {sender.hsa_id}"
                        st = f" subtype {subtype}" if subtype else ""
                        gaps[(kind, unit.unit_type, phase)].append(f"{hsa}{who}{st}")
                        continue
                    top = [r for r in routes if r.priority == routes[0].priority]
                    if len({r.id for r in top}) > 1:
                        a, b = top[0], top[1]
                        conflicts[(a.source, a.id, b.id, phase)].append(f"{kind} to {hsa}")
                for r in cands:
                    if r.targets == (NO_ROUTE,):
                        continue
                    for t in r.targets:
                        sysid = engine._resolve(t, unit, live)
                        ret = engine.retired_ms.get(sysid)
                        if ret is None:
                            continue
                        end = None if live or not unit.etapp else engine.golive_ms[unit.etapp]
                        if end is None or ret < end:
                            retired[(r.source, f"route {r.id} sends to {sysid} after its retirement "
                                                f"({_fmt_ms(ret)})")].append(hsa)
    for (gap_kind, utype, phase), where in sorted(gaps.items()):
        problems.append(f"{label_root}/routes/base.yaml:1: no applicable route for {gap_kind} to {utype} units "
                        f"({phase}): {where[0]}" + (f" and {len(where) - 1} more" if len(where) > 1 else ""))
    for (source, rid_a, rid_b, phase), where in sorted(conflicts.items()):
        problems.append(f"{label_root}/{source}: routes {rid_a} and {rid_b} both apply at equal priority ({phase}): "
                        f"{where[0]}" + (f" and {len(where) - 1} more" if len(where) > 1 else ""))
    for (source, msg), units in sorted(retired.items()):
        problems.append(f"{label_root}/{source}: {msg}, e.g. for {units[0]}"
                        + (f" and {len(units) - 1} more units" if len(units) > 1 else ""))
    return problems


def check_texts(texts: dict[str, str], label_root: str = "rules") -> list[str]:
    rules, problems = parse_rules(texts, label_root)
    if problems or rules is None:
        return problems
    return check_rules(rules, label_root)


@dataclass(frozen=True)
class Change:
    """One (unit × kind) whose routing differs between two rule sets over [since_ms, until_ms)
    (None: before the first instant / open-ended). ``dest_change`` is False when the destinations
    stay and only the deciding rule differs. ``causes`` say why, in words."""
    kind: str
    unit: str
    unit_type: str
    etapp: str | None
    since_ms: int | None
    until_ms: int | None
    before: str
    after: str
    before_rule: str | None
    after_rule: str | None
    causes: tuple[str, ...] = ()
    dest_change: bool = True


def _outcome(engine: Engine, hsa: str, kind: str, at_ms: int, sender: Unit | None) -> tuple[str, str | None]:
    env = {"kind": kind, "receiver": {"unit_hsa_id": hsa},
           "sender": {"unit_hsa_id": sender.hsa_id if sender else "", "care_provider_hsa_id": None},
           "subtype": None}
    d = engine.decide(env, at_ms, {})
    if d.outcome == "routed":
        return ", ".join(d.destinations), d.rule
    return f"{d.outcome} ({d.reason_code})", d.rule


def _route_targets(engine: Engine) -> dict[str, tuple[str, ...]]:
    return {r.id: r.targets for c in engine._index.values() for r in c}


def _causes(a: Engine, b: Engine, hsa: str, before_rule: str | None, after_rule: str | None,
            targets: tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]) -> tuple[str, ...]:
    """Why a unit's routing differs: what changed in the plan, the directory, the systems or the rules."""
    old, new = a.units.get(hsa), b.units.get(hsa)
    out: list[str] = []
    if old is None:
        out.append("the unit is new in the directory")
    elif new is None:
        out.append("the unit left the directory")
    else:
        if old.etapp != new.etapp:
            out.append(f"the unit moved from {old.etapp or 'no etapp'} to {new.etapp or 'no etapp'}")
        elif new.etapp and a.golive_ms.get(new.etapp) != b.golive_ms.get(new.etapp):
            was, now = (e.golive_ms.get(new.etapp) for e in (a, b))
            out.append(f"{new.etapp} go-live moved from {_fmt_ms(was) if was else '-'} to "
                       f"{_fmt_ms(now) if now else '-'}")
        if old.unit_type != new.unit_type:
            out.append(f"the unit's type changed from {old.unit_type} to {new.unit_type}")
        if old.care_provider != new.care_provider:
            out.append("the unit's care provider changed")
    if before_rule != after_rule:
        if after_rule is None:
            out.append(f"rule {before_rule} no longer applies")
        elif before_rule is None:
            out.append(f"rule {after_rule} now applies")
        else:
            out.append(f"rule {after_rule} now decides instead of {before_rule}")
    elif after_rule is not None and targets[0].get(after_rule) != targets[1].get(after_rule):
        out.append(f"rule {after_rule} changed its destinations")
    if a.retired_ms != b.retired_ms:
        changed = sorted(x for x in {*a.retired_ms, *b.retired_ms} if a.retired_ms.get(x) != b.retired_ms.get(x))
        out.append(f"retirement dates changed for {', '.join(changed)}")
    if a.journals != b.journals or a.target != b.target:
        out.append("the systems' journal or target mapping changed")
    return tuple(out) or ("the rule set's other changes (conditions or priorities)",)


def diff_rules(old: RuleSet, new: RuleSet) -> list[Change]:
    """Which (unit × kind) routings change, over which interval between instants, and why.
    Consecutive intervals with the same change are merged into one."""
    a, b = Engine(old), Engine(new)
    instants = sorted({*a.instants(), *b.instants()})
    probes: list[tuple[int | None, int, int | None]] = [(None, (instants[0] - 1) if instants else 0,
                                                         instants[0] if instants else None)]
    probes += [(t, t, instants[i + 1] if i + 1 < len(instants) else None) for i, t in enumerate(instants)]
    changes: list[Change] = []
    conditional = any(not r.unconditional for e in (a, b) for c in e._index.values() for r in c)
    senders: list[Unit | None] = list(_sender_classes(b)) if conditional else [None]
    targets = (_route_targets(a), _route_targets(b))
    for hsa in sorted(set(a.units) | set(b.units)):
        unit = b.units.get(hsa) or a.units[hsa]
        for kind in KINDS:
            open_change: Change | None = None
            for since, at, until in probes:
                found: Change | None = None
                for sender in senders:  # every class of sender: a destination change wins over a rule-only one
                    before = _outcome(a, hsa, kind, at, sender)
                    after = _outcome(b, hsa, kind, at, sender)
                    if before != after and (found is None or (not found.dest_change and before[0] != after[0])):
                        found = Change(kind, hsa, unit.unit_type, unit.etapp, since, until, before[0], after[0],
                                       before[1], after[1], _causes(a, b, hsa, before[1], after[1], targets),
                                       before[0] != after[0])
                        if found.dest_change:
                            break
                if open_change is not None and found is not None and _same_change(open_change, found):
                    open_change = dataclasses.replace(open_change, until_ms=found.until_ms)  # one interval
                    continue
                if open_change is not None:
                    changes.append(open_change)
                open_change = found
            if open_change is not None:
                changes.append(open_change)
    return changes


def _same_change(x: Change, y: Change) -> bool:
    return (x.before, x.after, x.before_rule, x.after_rule, x.causes) == (y.before, y.after, y.before_rule,
                                                                          y.after_rule, y.causes)


def format_changes(changes: list[Change]) -> list[str]:
    """One line per group of units whose routing changes alike: destination changes first, then
    (marked) the ones where only the deciding rule differs."""
    groups: dict[tuple[object, ...], list[Change]] = defaultdict(list)
    for c in changes:
        groups[(not c.dest_change, c.since_ms or 0, c.until_ms or 0, c.kind, c.unit_type, c.etapp or "", c.before,
                c.after, c.before_rule or "", c.after_rule or "", c.causes)].append(c)
    lines = []
    for key, items in sorted(groups.items(), key=lambda kv: kv[0]):
        same, since, until, kind, utype, etapp, before, after, rb, ra, causes = key
        if since and until:
            when = f"from {_fmt_ms(int(since))} until {_fmt_ms(int(until))}"  # type: ignore[call-overload]
        elif since:
            when = f"from {_fmt_ms(int(since))} on"  # type: ignore[call-overload]
        elif until:
            when = f"before {_fmt_ms(int(until))}"  # type: ignore[call-overload]
        else:
            when = "at all times"
        units = ", ".join(c.unit for c in items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
        what = f"{before} (same destinations)" if same else f"{before} -> {after}"
        rules = f"rule {rb or '-'}" if rb == ra else f"rule {rb or '-'} -> {ra or '-'}"
        lines.append(f"{when}: {kind} to {utype} units ({etapp or 'no etapp'}; {len(items)} "
                     f"unit{'s' if len(items) != 1 else ''}): {what}, because {'; '.join(causes)} "  # type: ignore[arg-type]
                     f"({rules}); units {units}")
    return lines

"""Static checks of a compiled rule set, and the diff between two rule sets.

Both evaluate every (receiver unit × kind × phase) with every class of sender and subtype that
the candidate routes can tell apart, so a conflict or a gap is found before any message flows.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from router.envelope import KINDS
from router.rules.engine import CompiledRoute, Engine, Unit
from router.rules.load import RuleSet, parse_rules
from router.rules.model import NO_ROUTE
from router.timeutil import fmt_minute as _fmt_ms

UNKNOWN_SENDER = Unit("(unknown sender)", "", "", "", "", "", None)


def _named_senders(*engines: Engine) -> set[str]:
    """HSA-ids that some route's sender selector names."""
    return {h for e in engines for cands in e._index.values() for r in cands if r.sender is not None
            for h in r.sender.hsa_id}


def _attrs(u: Unit) -> tuple[str, ...]:
    return u.unit_type, u.area, u.municipality, u.care_provider


def _sender_classes(engine: Engine) -> list[Unit]:
    """One representative sender per class of units that no route's conditions can tell apart (same
    type, area, municipality and care provider; a unit named in a sender selector's HSA-id list is a
    class of its own), plus an unknown sender. Grouping keeps a directory of thousands of units cheap."""
    named = _named_senders(engine)
    seen: dict[tuple[str, ...], Unit] = {}
    for u in engine.units.values():
        seen.setdefault((*_attrs(u), u.hsa_id if u.hsa_id in named else ""), u)
    return [*seen.values(), UNKNOWN_SENDER]


def _sender_pairs(a: Engine, b: Engine) -> list[Unit]:
    """Sender classes for comparing two rule sets: units alike in both directories (the same attributes
    in the old one and the same in the new one, or absent from one) form one class, so a unit whose
    attributes change, or that joins or leaves the directory, is tried on its own."""
    named = _named_senders(a, b)
    seen: dict[tuple[object, ...], Unit] = {}
    for h in sorted(set(a.units) | set(b.units)):
        old, new = a.units.get(h), b.units.get(h)
        key = (_attrs(old) if old else None, _attrs(new) if new else None, h if h in named else "")
        seen.setdefault(key, new or old)  # type: ignore[arg-type]
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


def check_rules(rules: RuleSet, label_root: str = "rules") -> list[str]:
    """Problems of a loaded rule set beyond parsing: gaps, overlaps, routes to retired systems."""
    engine = Engine(rules)
    senders = _sender_classes(engine)
    problems: list[str] = []
    gaps: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    conflicts: dict[tuple[str, str, str, str, str], list[str]] = defaultdict(list)
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
                        # reported where the later of the two stands (usually the rule just added),
                        # naming where the other one is
                        a, b = sorted(top[:2], key=lambda r: r.order)
                        conflicts[(b.source, a.id, a.source, b.id, phase)].append(f"{kind} to {hsa}")
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
    for (source, rid_a, source_a, rid_b, phase), where in sorted(conflicts.items()):
        problems.append(f"{label_root}/{source}: routes {rid_a} ({label_root}/{source_a}) and {rid_b} both apply at "
                        f"equal priority ({phase}): {where[0]}" + (f" and {len(where) - 1} more" if len(where) > 1
                                                                   else ""))
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
    stay and only the deciding rule differs. ``causes`` say why, in words. ``scope`` says which
    messages of that kind it concerns when not all of them: "subtype REF^I12", "from senders with
    unit type privat" (empty: every message of the kind to that unit)."""
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
    scope: str = ""


Outcome = tuple[str, str | None]  # (destinations or outcome in words, deciding rule)


def _outcome(engine: Engine, hsa: str, kind: str, at_ms: int, sender: Unit | None,
             subtype: str | None = None) -> Outcome:
    env = {"kind": kind, "receiver": {"unit_hsa_id": hsa},
           "sender": {"unit_hsa_id": sender.hsa_id if sender else "",
                      "care_provider_hsa_id": (sender.care_provider or None) if sender else None},
           "subtype": subtype}
    d = engine.decide(env, at_ms, {})
    if d.outcome == "routed":
        return ", ".join(d.destinations), d.rule
    return f"{d.outcome} ({d.reason_code})", d.rule


def _routes_by_id(engine: Engine) -> dict[str, list[CompiledRoute]]:
    """Every compiled variant of each rule (a rule with live and not_live destinations has two)."""
    out: dict[str, dict[int, CompiledRoute]] = defaultdict(dict)
    for cands in engine._index.values():
        for r in cands:
            out[r.id][r.order] = r
    return {k: list(v.values()) for k, v in out.items()}


def _targets(routes: dict[str, list[CompiledRoute]]) -> dict[str, frozenset[tuple[str, tuple[str, ...]]]]:
    """Each rule's destinations, per phase (``when``): a change of ``live:`` alone is a change."""
    return {rid: frozenset((r.when, r.targets) for r in rs) for rid, rs in routes.items()}


def _causes(a: Engine, b: Engine, hsa: str, before_rule: str | None, after_rule: str | None,
            targets: tuple[dict[str, frozenset[tuple[str, tuple[str, ...]]]], ...]) -> tuple[str, ...]:
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


def _listed(values: list[str] | tuple[str, ...], most: int = 3) -> str:
    vals = list(values)
    return ", ".join(vals[:most]) + (f" and {len(vals) - most} more" if len(vals) > most else "")


def _sender_words(routes: list[CompiledRoute]) -> str:
    """The sender condition of the deciding rules, in words."""
    parts: list[str] = []
    for r in routes:
        sel = r.sender
        if sel is not None:
            words = [f"{attr.replace('_', ' ')} {_listed(getattr(sel, attr))}"
                     for attr in ("unit_type", "area", "municipality", "care_provider", "hsa_id") if getattr(sel, attr)]
            parts.append("from senders with " + " and ".join(words))
        if r.cross_provider is not None:
            parts.append("from another care provider" if r.cross_provider else "from the same care provider")
    return "; ".join(dict.fromkeys(parts))


def _scope(group: list[tuple[Unit | None, str | None]], senders: list[Unit | None], subtypes: list[str | None],
           deciding: list[CompiledRoute]) -> str:
    """Which messages of the kind a change concerns, when not all: by subtype, by sender."""
    words: list[str] = []
    group_st = {st for _s, st in group}
    if group_st != set(subtypes):
        named = sorted(x for x in group_st if x is not None)
        if None in group_st:
            words.append("subtypes other than " + _listed(sorted(x for x in subtypes if x and x not in group_st)))
        else:
            words.append(f"subtype{'s' if len(named) > 1 else ''} {_listed(named)}")
    group_senders = {id(s) for s, _st in group}
    if len(group_senders) < len(senders):
        words.append(_sender_words(deciding) or f"from {len(group_senders)} of {len(senders)} sender classes")
    return "; ".join(words)


def diff_rules(old: RuleSet, new: RuleSet) -> list[Change]:
    """Which (unit × kind) routings change, over which interval between instants, and why.
    Every class of sender and every subtype that a candidate route of either set tells apart is
    tried; each distinct change is one ``Change`` whose ``scope`` names the messages it concerns
    when not all. Consecutive intervals with the same change are merged into one."""
    a, b = Engine(old), Engine(new)
    instants = sorted({*a.instants(), *b.instants()})
    probes: list[tuple[int | None, int, int | None]] = [(None, (instants[0] - 1) if instants else 0,
                                                         instants[0] if instants else None)]
    probes += [(t, t, instants[i + 1] if i + 1 < len(instants) else None) for i, t in enumerate(instants)]
    changes: list[Change] = []
    all_senders: list[Unit | None] = list(_sender_pairs(a, b))
    routes = (_routes_by_id(a), _routes_by_id(b))
    targets = (_targets(routes[0]), _targets(routes[1]))
    for hsa in sorted(set(a.units) | set(b.units)):
        unit = b.units.get(hsa) or a.units[hsa]
        for kind in KINDS:
            cands = [r for e in (a, b) for live in (True, False) for r in e.candidates(hsa, kind, live)]
            by_sender = any(r.sender is not None or r.cross_provider is not None for r in cands)
            senders: list[Unit | None] = all_senders if by_sender else [None]
            subtypes: list[str | None] = [None, *sorted({s for r in cands if r.subtypes for s in r.subtypes})]
            open_changes: list[Change] = []
            for since, at, until in probes:
                found = _probe(a, b, hsa, unit, kind, since, at, until, senders, subtypes, routes, targets)
                still: list[Change] = []
                for f in found:
                    prev = next((o for o in open_changes if _same_change(o, f)), None)
                    if prev is not None:  # the same change goes on: one interval
                        open_changes.remove(prev)
                        still.append(dataclasses.replace(prev, until_ms=f.until_ms))
                    else:
                        still.append(f)
                changes.extend(open_changes)  # those that ended at this instant
                open_changes = still
            changes.extend(open_changes)
    return changes


def _probe(a: Engine, b: Engine, hsa: str, unit: Unit, kind: str, since: int | None, at: int, until: int | None,
           senders: list[Unit | None], subtypes: list[str | None],
           routes: tuple[dict[str, list[CompiledRoute]], dict[str, list[CompiledRoute]]],
           targets: tuple[dict[str, frozenset[tuple[str, tuple[str, ...]]]], ...]) -> list[Change]:
    """The changes of one (unit × kind) at one instant: one per distinct (before, after), each with
    the messages it concerns; destination changes first."""
    groups: dict[tuple[Outcome, Outcome], list[tuple[Unit | None, str | None]]] = defaultdict(list)
    for sender in senders:
        for st in subtypes:
            before = _outcome(a, hsa, kind, at, sender, st)
            after = _outcome(b, hsa, kind, at, sender, st)
            if before != after:
                groups[(before, after)].append((sender, st))
    out = []
    for (before, after), group in sorted(groups.items(), key=lambda kv: (kv[0][0][0] == kv[0][1][0], -len(kv[1]),
                                                                        str(kv[0]))):
        deciding = [*routes[1].get(after[1] or "", ()), *routes[0].get(before[1] or "", ())]
        out.append(Change(kind, hsa, unit.unit_type, unit.etapp, since, until, before[0], after[0], before[1],
                          after[1], _causes(a, b, hsa, before[1], after[1], targets), before[0] != after[0],
                          _scope(group, senders, subtypes, deciding)))
    return out


def _same_change(x: Change, y: Change) -> bool:
    return (x.before, x.after, x.before_rule, x.after_rule, x.causes, x.scope) == (
        y.before, y.after, y.before_rule, y.after_rule, y.causes, y.scope)


def format_changes(changes: list[Change]) -> list[str]:
    """One line per group of units whose routing changes alike: destination changes first, then
    (marked) the ones where only the deciding rule differs."""
    groups: dict[tuple[object, ...], list[Change]] = defaultdict(list)
    for c in changes:
        groups[(not c.dest_change, c.since_ms or 0, c.until_ms or 0, c.kind, c.unit_type, c.etapp or "", c.before,
                c.after, c.before_rule or "", c.after_rule or "", c.causes, c.scope)].append(c)
    lines = []
    for key, items in sorted(groups.items(), key=lambda kv: kv[0]):
        same, since, until, kind, utype, etapp, before, after, rb, ra, causes, scope = key
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
        lines.append(f"{when}: {kind}{f' ({scope})' if scope else ''} to {utype} units ({etapp or 'no etapp'}; "
                     f"{len(items)} "
                     f"unit{'s' if len(items) != 1 else ''}): {what}, because {'; '.join(causes)} "  # type: ignore[arg-type]
                     f"({rules}); units {units}")
    return lines

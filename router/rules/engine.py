"""Compiled rules: an immutable index from (receiver unit, kind, live?) to candidate routes.

``decide`` is pure: the same envelope, instant and etapp states always give the same decision.
Its cost is a dict lookup plus a scan of the few candidates for that receiver and kind, so it
does not grow with the number of rules or units.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.decision import Decision
from router.rules.load import RuleSet, UnitRow
from router.rules.model import NO_ROUTE, PartySelector, RouteSpec, parse_instant

LIVE_STATES = {"live"}
NOT_LIVE_STATES = {"paused", "rolled_back"}


@dataclass(frozen=True, slots=True)
class Unit:
    hsa_id: str
    name: str
    care_provider: str
    area: str
    municipality: str
    unit_type: str
    etapp: str | None


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    id: str
    source: str  # file:line
    priority: int
    when: str
    targets: tuple[str, ...]
    subtypes: frozenset[str] | None
    sender: PartySelector | None
    cross_provider: bool | None
    order: int  # file order, for stable sorting
    unconditional: bool  # no subtype, sender or cross-provider condition
    sender_set: frozenset[str] | None = None  # HSA-ids of directory senders the sender selector matches
    simple_sender: bool = False  # the only condition is the sender selector

    def sender_ok(self, sender: Unit | None, sender_provider: str | None, receiver: Unit, subtype: str | None) -> bool:
        if self.subtypes is not None and subtype not in self.subtypes:
            return False
        if self.sender is not None:
            if sender is None:
                return False
            if self.sender_set is not None:
                if sender.hsa_id not in self.sender_set:
                    return False
            elif not party_matches(self.sender, sender):
                return False
        if self.cross_provider is not None:
            if sender_provider is None:
                return False
            if (sender_provider != receiver.care_provider) != self.cross_provider:
                return False
        return True


class Slot:
    """Everything ``decide`` needs for one (kind, receiver unit), found with two dict lookups."""

    __slots__ = ("etapp", "fixed_live", "fixed_not_live", "golive", "live", "memo", "not_live", "pick_live",
                 "pick_not_live", "unit")

    def __init__(self, unit: Unit, etapp: str | None, golive: int) -> None:
        self.unit, self.etapp, self.golive = unit, etapp, golive
        self.live: tuple[CompiledRoute, ...] = ()
        self.not_live: tuple[CompiledRoute, ...] = ()
        self.memo: dict[tuple[object, ...], Decision] = {}
        # The finished decision when no operational state is set for the etapp ("scheduled") and
        # the choice cannot depend on the sender, the subtype or the instant (the first candidate
        # has no condition and sends to no system with a retirement date); None otherwise.
        self.fixed_live: Decision | None = None
        self.fixed_not_live: Decision | None = None
        # When the choice depends on the sender's HSA-id only (each candidate before the first
        # unconditional one has a sender selector and no other condition): (sender-set bit or 0,
        # finished decision) pairs in candidate order; the first whose bit is in the sender's mask
        # (Engine.sender_mask), or whose bit is 0 (no sender condition), wins.
        self.pick_live: tuple[tuple[int, Decision], ...] | None = None
        self.pick_not_live: tuple[tuple[int, Decision], ...] | None = None


def party_matches(sel: PartySelector, u: Unit | UnitRow) -> bool:
    provider = u.care_provider
    return (
        (not sel.unit_type or u.unit_type in sel.unit_type)
        and (not sel.area or u.area in sel.area)
        and (not sel.municipality or u.municipality in sel.municipality)
        and (not sel.care_provider or provider in sel.care_provider)
        and (not sel.hsa_id or u.hsa_id in sel.hsa_id)
    )


def to_ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


class Engine:
    """The compiled, immutable form of a RuleSet."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.version = rules.version
        self.units: dict[str, Unit] = {
            h: Unit(u.hsa_id, u.name, u.care_provider, u.area, u.municipality, u.unit_type, rules.unit_etapp.get(h))
            for h, u in rules.units.items()
        }
        self.golive_ms: dict[str, int] = {e.id: to_ms(e.go_live_at) for e in rules.plan.etapper}
        self.etapp_names = {e.id: e.name for e in rules.plan.etapper}
        self.target = rules.systems.target
        self.journals: dict[str, str] = {str(k): v for k, v in rules.systems.journals.items()}
        self.retired_ms: dict[str, int] = {
            s.id: to_ms(parse_instant(s.retired_from)) for s in rules.systems.systems if s.retired_from
        }
        self.systems = tuple(s.id for s in rules.systems.systems)
        self._index = self._build()
        # Each distinct sender set of the routes gets one bit, and each directory unit the mask of
        # the sets that hold it: a sender-only choice then costs one lookup of the sender's mask,
        # however many sender conditions it weighs, instead of one set lookup per condition (each a
        # CPU-cache miss with a large directory; bench/engine.py).
        self.sender_bits: dict[frozenset[str], int] = {}
        for routes in self._index.values():
            for r in routes:
                if r.sender_set is not None and r.sender_set not in self.sender_bits:
                    self.sender_bits[r.sender_set] = 1 << len(self.sender_bits)
        self.sender_mask: dict[str, int] = {}
        for members, bit in self.sender_bits.items():
            for h in members:
                self.sender_mask[h] = self.sender_mask.get(h, 0) | bit
        # Memo of finished decisions: a decision depends only on this key (not on the sender beyond
        # the route it selected), so identical situations share one frozen Decision object.
        self._memo: dict[tuple[object, ...], Decision] = {}
        # Fast path: kind -> receiver -> Slot (the unit class, its etapp and go-live, candidates per
        # phase). Receivers that route alike (same etapp, unit type, care provider and candidates)
        # share one Slot, so the working set stays small however many units the directory has.
        self._slots: dict[str, dict[str, Slot]] = {}
        shared: dict[tuple[object, ...], Slot] = {}
        interned: dict[Decision, Decision] = {}
        for kind in {k for (_h, k, _l) in self._index}:
            by_kind = self._slots.setdefault(kind, {})
            for hsa, unit in self.units.items():
                live = self._index.get((hsa, kind, True), ())
                not_live = self._index.get((hsa, kind, False), ())
                if not live and not not_live:
                    continue
                key = (kind, unit.etapp, unit.unit_type, unit.care_provider,
                       tuple(r.order for r in live), tuple(r.order for r in not_live))
                slot = shared.get(key)
                if slot is None:
                    golive = self.golive_ms.get(unit.etapp, 0) if unit.etapp else 0
                    slot = shared[key] = Slot(unit, unit.etapp, golive)
                    slot.live, slot.not_live = live, not_live
                    self._fix(slot, kind, interned)
                by_kind[hsa] = slot

    def _fix(self, slot: Slot, kind: str, interned: dict[Decision, Decision]) -> None:
        """Precompute a slot's decisions for the scheduled state; equal decisions share one object."""
        state = "scheduled" if slot.etapp else None
        for live in (True, False):
            cands = slot.live if live else slot.not_live
            pick: list[tuple[int, Decision]] = []
            for route in cands:
                if not (route.unconditional or route.simple_sender) or any(
                        self._resolve(t, slot.unit, live) in self.retired_ms for t in route.targets):
                    break
                d = self._explain(route, slot.unit, kind, live, state, False)
                bit = 0 if route.unconditional else self.sender_bits[route.sender_set]  # type: ignore[index]
                pick.append((bit, interned.setdefault(d, d)))
                if route.unconditional:
                    break
            else:  # no unconditional candidate: a sender that no set holds has no route
                d = self._explain(None, slot.unit, kind, live, state, False)
                pick.append((0, interned.setdefault(d, d)))
            if not pick or pick[-1][0]:
                continue  # a candidate the sender's HSA-id alone cannot decide
            if len(pick) == 1:
                if live:
                    slot.fixed_live = pick[0][1]
                else:
                    slot.fixed_not_live = pick[0][1]
            elif live:
                slot.pick_live = tuple(pick)
            else:
                slot.pick_not_live = tuple(pick)

    # -- compilation ------------------------------------------------------------------------
    def _receivers(self, sel: PartySelector, etapp: str | None, by: dict[str, dict[str, set[str]]]) -> set[str]:
        if sel.hsa_id:
            result = set(sel.hsa_id) & self.units.keys()
        elif etapp is not None:
            result = set(by["etapp"].get(etapp, set()))
        else:
            result = set(self.units)
        for attr, values in (("unit_type", sel.unit_type), ("area", sel.area),
                             ("municipality", sel.municipality), ("care_provider", sel.care_provider)):
            if values:
                allowed: set[str] = set()
                for v in values:
                    allowed |= by[attr].get(v, set())
                result &= allowed
        if etapp is not None:
            result &= by["etapp"].get(etapp, set())
        return result

    def _build(self) -> dict[tuple[str, str, bool], tuple[CompiledRoute, ...]]:
        by: dict[str, dict[str, set[str]]] = {k: {} for k in
                                              ("unit_type", "area", "municipality", "care_provider", "etapp")}
        for u in self.units.values():
            by["unit_type"].setdefault(u.unit_type, set()).add(u.hsa_id)
            by["area"].setdefault(u.area, set()).add(u.hsa_id)
            by["municipality"].setdefault(u.municipality, set()).add(u.hsa_id)
            by["care_provider"].setdefault(u.care_provider, set()).add(u.hsa_id)
            if u.etapp:
                by["etapp"].setdefault(u.etapp, set()).add(u.hsa_id)
        buckets: dict[tuple[str, str, bool], list[CompiledRoute]] = {}
        order = 0
        for path, model, _raw in self.rules.routes:
            for i, spec in enumerate(model.routes):
                receivers = self._receivers(spec.receiver, model.etapp, by)
                for rid, when, targets in spec.variants():
                    order += 1
                    route = self._compile(spec, rid, when, targets, f"{path}:{self.rules.route_line(path, i)}", order)
                    if route.sender is not None:
                        sel = route.sender
                        route = dataclasses.replace(route, sender_set=frozenset(
                            h for h, u in self.units.items() if party_matches(sel, u)),
                            simple_sender=route.subtypes is None and route.cross_provider is None)
                    lives = (True, False) if when == "always" else ((True,) if when == "live" else (False,))
                    for hsa in receivers:
                        for kind in spec.kind:
                            for live in lives:
                                buckets.setdefault((hsa, kind, live), []).append(route)
        return {k: tuple(sorted(v, key=lambda r: (-r.priority, r.order))) for k, v in buckets.items()}

    @staticmethod
    def _compile(spec: RouteSpec, rid: str, when: str, targets: tuple[str, ...], source: str,
                 order: int) -> CompiledRoute:
        return CompiledRoute(
            id=rid, source=source, priority=spec.priority, when=when, targets=targets,
            subtypes=frozenset(spec.subtype) if spec.subtype else None,
            sender=None if spec.sender.is_empty() else spec.sender,
            cross_provider=spec.cross_provider, order=order,
            unconditional=not spec.subtype and spec.sender.is_empty() and spec.cross_provider is None,
        )

    # -- evaluation ---------------------------------------------------------------------------
    def is_live(self, etapp: str | None, as_of_ms: int, states: Mapping[str, str]) -> tuple[bool, str | None]:
        """(live?, effective state) of an etapp at an instant under the operational states."""
        if etapp is None:
            return False, None
        state = states.get(etapp, "scheduled")
        if state in LIVE_STATES:
            return True, state
        if state in NOT_LIVE_STATES:
            return False, state
        return as_of_ms >= self.golive_ms[etapp], state

    def candidates(self, receiver: str, kind: str, live: bool) -> tuple[CompiledRoute, ...]:
        return self._index.get((receiver, kind, live), ())

    def decide(self, env: Mapping[str, Any], as_of_ms: int, states: Mapping[str, str] | None = None) -> Decision:
        """Decide where one envelope (Avro record dict) goes at ``as_of_ms`` (epoch ms UTC)."""
        kind = env["kind"]
        receiver_info = env["receiver"]
        recv_hsa = receiver_info["unit_hsa_id"]
        by_kind = self._slots.get(kind)
        slot = by_kind.get(recv_hsa) if by_kind is not None else None
        if slot is None:
            return self._slow_decide(env, as_of_ms, states or {})
        etapp = slot.etapp
        if etapp is None:
            fixed = slot.fixed_not_live
            if fixed is not None:
                return fixed
            live, state = False, None
            pick = slot.pick_not_live
        else:
            state = states.get(etapp, "scheduled") if states else "scheduled"
            pick = None
            if state == "scheduled":
                live = as_of_ms >= slot.golive
                fixed = slot.fixed_live if live else slot.fixed_not_live
                if fixed is not None:
                    return fixed
                pick = slot.pick_live if live else slot.pick_not_live
            elif state == "live":
                live = True
            elif state == "hold":
                return self._parked(slot.unit, state)
            else:
                live = False
        if pick is not None:  # its last pair has no sender condition (bit 0), so this always returns
            mask = self.sender_mask.get(env["sender"]["unit_hsa_id"], 0)
            for bit, picked in pick:
                if not bit or mask & bit:
                    return picked
        cands = slot.live if live else slot.not_live
        chosen: CompiledRoute | None = None
        for route in cands:
            if route.unconditional:
                chosen = route
                break
            if route.simple_sender:
                if env["sender"]["unit_hsa_id"] in route.sender_set:  # type: ignore[operator]
                    chosen = route
                    break
                continue
            sender_info = env["sender"]
            sender = self.units.get(sender_info["unit_hsa_id"])
            provider = sender.care_provider if sender else sender_info.get("care_provider_hsa_id")
            if route.sender_ok(sender, provider, slot.unit, env.get("subtype")):
                chosen = route
                break
        retired = False
        if self.retired_ms and chosen is not None:
            retired = any(as_of_ms >= self.retired_ms.get(self._resolve(t, slot.unit, live), as_of_ms + 1)
                          for t in chosen.targets)
        key = (chosen.order if chosen is not None else 0, live, state, retired)
        decision = slot.memo.get(key)
        if decision is None:
            decision = self._explain(chosen, slot.unit, kind, live, state, retired)
            slot.memo[key] = decision
        return decision

    def _parked(self, unit: Unit, state: str) -> Decision:
        key = ("park", unit.etapp)
        d = self._memo.get(key)
        if d is None:
            d = Decision("park", (), None, self.version, unit.etapp, state,
                         f"{unit.etapp} is on hold; parked until release", "parked")
            self._memo[key] = d
        return d

    def _slow_decide(self, env: Mapping[str, Any], as_of_ms: int, states: Mapping[str, str]) -> Decision:
        """Receivers or kinds without any candidate route: unknown unit or no route."""
        kind = env["kind"]
        recv_hsa = env["receiver"]["unit_hsa_id"]
        receiver = self.units.get(recv_hsa)
        if receiver is None:
            return Decision("dead_letter", (), None, self.version, None, None,
                            f"receiver unit {recv_hsa} is not in the unit directory", "unknown_unit")
        live, state = self.is_live(receiver.etapp, as_of_ms, states)
        if state == "hold":
            return self._parked(receiver, state)
        return self._explain(None, receiver, kind, live, state, False)

    def _explain(self, route: CompiledRoute | None, receiver: Unit, kind: str, live: bool, state: str | None,
                 retired: bool) -> Decision:
        etapp = receiver.etapp
        where = f"{etapp} {'live' if live else 'not live'}" if etapp else "no etapp"
        if route is None:
            return Decision("dead_letter", (), None, self.version, etapp, state,
                            f"no route: no rule matches {kind} to a {receiver.unit_type} unit ({where})", "no_route")
        if route.targets == (NO_ROUTE,):
            return Decision("dead_letter", (), route.id, self.version, etapp, state,
                            f"no route: {kind} to a {receiver.unit_type} unit ({where}; rule {route.id})", "no_route")
        dests = tuple(self._resolve(t, receiver, live) for t in route.targets)
        if retired:
            return Decision("dead_letter", (), route.id, self.version, etapp, state,
                            f"no route: rule {route.id} sends to a retired system ({', '.join(dests)})", "no_route")
        return Decision("routed", dests, route.id, self.version, etapp, state,
                        f"{kind} to a {receiver.unit_type} unit ({where}): rule {route.id} -> {', '.join(dests)}")

    def _resolve(self, target: str, receiver: Unit, live: bool) -> str:
        if target != "journal":
            return target
        if live:
            return self.target
        return self.journals.get(receiver.unit_type, self.target)

    def placement(self, unit_hsa: str, reply_kind: str, as_of_ms: int,
                  states: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
        """Where ``unit_hsa`` places orders or referrals at ``as_of_ms``: the systems that the rules give
        for a reply (``reply_kind``) addressed to that unit. An etapp on hold is still on its old
        systems, so hold counts as not live here. ``None`` when no route answers."""
        st = states or {}
        unit = self.units.get(unit_hsa)
        if unit is not None and unit.etapp and st.get(unit.etapp) == "hold":
            st = {**st, unit.etapp: "paused"}
        env = {"kind": reply_kind, "subtype": None, "receiver": {"unit_hsa_id": unit_hsa},
               "sender": {"unit_hsa_id": unit_hsa, "care_provider_hsa_id": None}}
        d = self.decide(env, as_of_ms, st)
        return d.destinations if d.outcome == "routed" else None

    def instants(self) -> list[int]:
        """Every instant at which some decision can change (go-lives, retirements), sorted."""
        return sorted({*self.golive_ms.values(), *self.retired_ms.values()})


def compile_rules(rules: RuleSet) -> Engine:
    return Engine(rules)

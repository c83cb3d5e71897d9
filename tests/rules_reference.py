"""A brute-force reference evaluation of rule files, independent of the compiled engine.

It reads the same YAML models but decides by scanning every route of every file for every
message, straight from the written semantics. Used to cross-check the engine.
"""

from __future__ import annotations

from router.rules.load import RuleSet, selector_matches
from router.rules.model import parse_instant


def reference_decide(rules: RuleSet, env: dict, as_of_ms: int, states: dict[str, str]) -> tuple[str, tuple, str | None]:
    units = rules.units
    recv = units.get(env["receiver"]["unit_hsa_id"])
    if recv is None:
        return "dead_letter", (), None
    etapp = None
    for e in rules.plan.etapper:
        if selector_matches(e.units, recv):
            etapp = e
            break
    state = states.get(etapp.id, "scheduled") if etapp else None
    if state == "hold":
        return "park", (), None
    if etapp is None:
        live = False
    elif state == "live":
        live = True
    elif state in ("paused", "rolled_back"):
        live = False
    else:
        live = as_of_ms >= int(parse_instant(etapp.go_live).timestamp() * 1000)
    sender = units.get(env["sender"]["unit_hsa_id"])
    best = None
    for _path, file, _raw in rules.routes:
        if file.etapp is not None and (etapp is None or file.etapp != etapp.id):
            continue
        for spec in file.routes:
            if env["kind"] not in spec.kind:
                continue
            if spec.subtype and env.get("subtype") not in spec.subtype:
                continue
            r = spec.receiver
            if r.unit_type and recv.unit_type not in r.unit_type:
                continue
            if r.area and recv.area not in r.area:
                continue
            if r.municipality and recv.municipality not in r.municipality:
                continue
            if r.care_provider and recv.care_provider not in r.care_provider:
                continue
            if r.hsa_id and recv.hsa_id not in r.hsa_id:
                continue
            s = spec.sender
            if not s.is_empty():
                if sender is None:
                    continue
                if (s.unit_type and sender.unit_type not in s.unit_type) or (s.area and sender.area not in s.area) \
                        or (s.municipality and sender.municipality not in s.municipality) \
                        or (s.care_provider and sender.care_provider not in s.care_provider) \
                        or (s.hsa_id and sender.hsa_id not in s.hsa_id):
                    continue
            if spec.cross_provider is not None:
                sp = sender.care_provider if sender else env["sender"].get("care_provider_hsa_id")
                if sp is None or (sp != recv.care_provider) != spec.cross_provider:
                    continue
            if spec.to is not None:
                if (spec.when == "live" and not live) or (spec.when == "not_live" and live):
                    continue
                dests = ("no_route",) if spec.to == "no_route" else tuple(spec.to)
            else:
                dests = tuple(spec.live if live else spec.not_live)
            if best is None or spec.priority > best[0]:
                best = (spec.priority, spec.id, dests)
    if best is None or best[2] == ("no_route",):
        return "dead_letter", (), best[1] if best else None
    journal = rules.systems.target if live else rules.systems.journals.get(recv.unit_type, rules.systems.target)
    return "routed", tuple(journal if d == "journal" else d for d in best[2]), best[1]

"""Read a rule folder (or the same files as texts from the control topic) into a validated RuleSet."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from router.errors import IdentifierError, RulesError
from router.identifiers import validate_hsa_id
from router.rules.model import EtappSpec, PlanFile, RoutesFile, SystemsFile, UnitSelector
from router.rules.yamlsrc import YamlProblem, line_of, load_yaml

PLAN, SYSTEMS, ROUTES_DIR = "plan.yaml", "systems.yaml", "routes"
CSV_COLUMNS = ["hsa_id", "name", "care_provider_hsa_id", "care_provider_name", "area", "municipality", "unit_type"]
AREAS = {"sodra", "norra", "ostra", "vastra", "regional"}
UNIT_TYPES = {"sjukhus", "forlossning", "lab", "primarvard", "lokalt_lab", "mvc", "kommun", "privat",
              "extern_diagnostik"}
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class UnitRow:
    hsa_id: str
    name: str
    care_provider: str
    area: str
    municipality: str
    unit_type: str
    line: int


@dataclass
class RuleSet:
    """A validated rule set: file texts, parsed specs, the unit directory, and each unit's etapp."""

    texts: dict[str, str]
    version: str
    plan: PlanFile
    systems: SystemsFile
    routes: list[tuple[str, RoutesFile, Any]]  # (relative path, model, raw data with lines)
    units: dict[str, UnitRow]
    unit_etapp: dict[str, str]
    directory_path: str
    plan_raw: Any = None
    problems: list[str] = field(default_factory=list)

    @property
    def etapper(self) -> dict[str, EtappSpec]:
        return {e.id: e for e in self.plan.etapper}

    def route_line(self, path: str, index: int) -> int:
        for p, _model, raw in self.routes:
            if p == path:
                try:
                    return int(raw["routes"].item_lines[index])
                except (KeyError, AttributeError, IndexError, TypeError):
                    return 1
        return 1


def read_rule_texts(folder: Path) -> dict[str, str]:
    """All rule files of a folder as ``relative path -> text`` (YAML files and the directory CSV)."""
    if not folder.is_dir():
        raise RulesError([f"{folder}: not a folder"])
    texts: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".csv"):
            try:
                texts[path.relative_to(folder).as_posix()] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise RulesError([f"{path}:1: cannot read: {exc}"]) from exc
    return texts


def version_of(texts: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(texts):
        h.update(name.encode() + b"\0" + texts[name].encode() + b"\0")
    return h.hexdigest()[:12]


def _validate(model: type[M], data: Any, where: str, problems: list[str]) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{where}:{line_of(data, tuple(err['loc']))}: {loc}: {msg}")
        return None


def _yaml(texts: dict[str, str], name: str, label: str, problems: list[str]) -> Any:
    if name not in texts:
        problems.append(f"{label}:1: missing file")
        return None
    try:
        data = load_yaml(texts[name])
    except YamlProblem as exc:
        problems.append(f"{label}:{exc.line}: {exc.message}")
        return None
    if data is None:
        problems.append(f"{label}:1: the file is empty")
    return data


def _units(text: str, label: str, problems: list[str]) -> dict[str, UnitRow]:
    reader = csv.reader(io.StringIO(text))
    try:
        return _unit_rows(reader, text, label, problems)
    except csv.Error as exc:  # an unclosed quote running on, a bare carriage return, ...
        problems.append(f"{label}:{reader.line_num or 1}: not readable as CSV: {exc}")
        return {}


def _unit_rows(reader: Any, text: str, label: str, problems: list[str]) -> dict[str, UnitRow]:
    nul = text.find("\0")
    if nul >= 0:  # the csv module stops at a NUL byte with an error of its own; say where it is
        problems.append(f"{label}:{text.count(chr(10), 0, nul) + 1}: a NUL character is not allowed in the "
                        "unit directory")
        return {}
    units: dict[str, UnitRow] = {}
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != CSV_COLUMNS:
        problems.append(f"{label}:1: header must be {','.join(CSV_COLUMNS)}")
        return units
    end = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. an unclosed quote running on until a field is too large
            problems.append(f"{label}:{end + 1}: not readable as CSV from this line on ({exc}): is a quote not "
                            "closed?")
            break
        # a record starts on the line after the previous one ended (line_num is where it ended: a
        # quoted field may run over several lines)
        line, end = end + 1, reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(CSV_COLUMNS):
            runs_on = (f"; a quoted field opened on this line runs on to line {end}: is a quote not closed?"
                       if end > line else "; is a quote not closed?" if text.count('"') % 2 else "")
            problems.append(f"{label}:{line}: expected {len(CSV_COLUMNS)} columns, found {len(row)}{runs_on}")
            continue
        hsa, name, provider, _provider_name, area, muni, utype = (c.strip() for c in row)
        bad = False
        for what, value in (("hsa_id", hsa), ("care_provider_hsa_id", provider)):
            try:
                validate_hsa_id(value)
            except IdentifierError as exc:
                problems.append(f"{label}:{line}: {what}: {exc}")
                bad = True
        if area not in AREAS:
            problems.append(f"{label}:{line}: area {area!r} is not one of {', '.join(sorted(AREAS))}")
            bad = True
        if utype not in UNIT_TYPES:
            problems.append(f"{label}:{line}: unit_type {utype!r} is not one of {', '.join(sorted(UNIT_TYPES))}")
            bad = True
        if hsa in units:
            problems.append(f"{label}:{line}: duplicate unit {hsa} (first on line {units[hsa].line})")
            bad = True
        if not bad:
            units[hsa] = UnitRow(hsa, name, provider, area, muni, utype, line)
    return units


def selector_matches(sel: UnitSelector, u: UnitRow) -> bool:
    if u.hsa_id in sel.exclude:
        return False
    if u.hsa_id in sel.include:
        return True
    if not (sel.area or sel.municipality or sel.unit_type):
        return False
    return (
        (not sel.area or u.area in sel.area)
        and (not sel.municipality or u.municipality in sel.municipality)
        and (not sel.unit_type or u.unit_type in sel.unit_type)
    )


def parse_rules(texts: dict[str, str], label_root: str = "rules") -> tuple[RuleSet | None, list[str]]:
    """Validate rule texts. Returns the rule set (None if unusable) and ``file:line: message`` problems."""
    problems: list[str] = []

    def label(name: str) -> str:
        return f"{label_root}/{name}"

    plan_raw = _yaml(texts, PLAN, label(PLAN), problems)
    systems_raw = _yaml(texts, SYSTEMS, label(SYSTEMS), problems)
    plan = _validate(PlanFile, plan_raw, label(PLAN), problems) if plan_raw is not None else None
    systems = _validate(SystemsFile, systems_raw, label(SYSTEMS), problems) if systems_raw is not None else None
    routes: list[tuple[str, RoutesFile, Any]] = []
    route_names = sorted(n for n in texts if n.startswith(ROUTES_DIR + "/") and n.endswith((".yaml", ".yml")))
    if not route_names:
        problems.append(f"{label(ROUTES_DIR)}/base.yaml:1: no route files")
    for name in route_names:
        raw = _yaml(texts, name, label(name), problems)
        if raw is None:
            continue
        model = _validate(RoutesFile, raw, label(name), problems)
        if model is not None:
            routes.append((name, model, raw))
    units: dict[str, UnitRow] = {}
    directory_path = ""
    if systems is not None:
        directory_path = systems.directory
        if systems.directory not in texts:
            problems.append(f"{label(SYSTEMS)}:{line_of(systems_raw, ('directory',))}: "
                            f"unit directory {systems.directory!r} not found in the rules folder")
        else:
            units = _units(texts[systems.directory], label(systems.directory), problems)
    if plan is None or systems is None:
        return None, problems

    # ids unique; references resolve
    system_ids = [s.id for s in systems.systems]
    for i, sid in enumerate(system_ids):
        if sid in system_ids[:i]:
            problems.append(f"{label(SYSTEMS)}:{line_of(systems_raw, ('systems', i))}: duplicate system id {sid!r}")
    known_systems = set(system_ids)
    if systems.target not in known_systems:
        problems.append(f"{label(SYSTEMS)}:{line_of(systems_raw, ('target',))}: unknown system {systems.target!r}")
    for utype, sid in systems.journals.items():
        if sid not in known_systems:
            problems.append(
                f"{label(SYSTEMS)}:{line_of(systems_raw, ('journals', utype))}: unknown system {sid!r} for {utype}")
    etapp_ids = [e.id for e in plan.etapper]
    unit_etapp: dict[str, str] = {}
    for i, e in enumerate(plan.etapper):
        where = f"{label(PLAN)}:{line_of(plan_raw, ('etapper', i))}"
        if e.id in etapp_ids[:i]:
            problems.append(f"{where}: duplicate etapp id {e.id!r}")
        for hsa in [*e.units.include, *e.units.exclude]:
            if hsa not in units:
                problems.append(f"{where}: etapp {e.id}: unit {hsa} is not in the unit directory")
        matched = [u for u in units.values() if selector_matches(e.units, u)]
        if not matched:
            problems.append(f"{where}: etapp {e.id} selects no unit")
        for u in matched:
            if u.hsa_id in unit_etapp and unit_etapp[u.hsa_id] != e.id:
                problems.append(f"{where}: unit {u.hsa_id} ({u.name}) is claimed by both "
                                f"{unit_etapp[u.hsa_id]} and {e.id}")
            else:
                unit_etapp[u.hsa_id] = e.id
    seen_routes: dict[str, str] = {}
    for name, model, raw in routes:
        if model.etapp is not None and model.etapp not in etapp_ids:
            problems.append(f"{label(name)}:{line_of(raw, ('etapp',))}: unknown etapp {model.etapp!r}")
        for i, r in enumerate(model.routes):
            where = f"{label(name)}:{line_of(raw, ('routes', i))}"
            if r.id in seen_routes:
                problems.append(f"{where}: duplicate route id {r.id!r} (also at {seen_routes[r.id]})")
            else:
                seen_routes[r.id] = where
            for key in ("to", "live", "not_live"):
                dests = getattr(r, key)
                if not isinstance(dests, list):
                    continue
                for d in dests:
                    if d not in known_systems and d != "journal":
                        problems.append(f"{label(name)}:{line_of(raw, ('routes', i, key))}: route {r.id}: "
                                        f"unknown system {d!r}")
            for hsa in [*r.receiver.hsa_id, *r.sender.hsa_id]:
                if hsa not in units:
                    problems.append(f"{where}: route {r.id}: unit {hsa} is not in the unit directory")
    rs = RuleSet(
        texts=dict(texts), version=version_of(texts), plan=plan, systems=systems, routes=routes, units=units,
        unit_etapp=unit_etapp, directory_path=directory_path, plan_raw=plan_raw, problems=problems,
    )
    return rs, problems


def load_rules(folder: Path | str) -> RuleSet:
    """Load and validate a rule folder; raises RulesError listing every problem."""
    folder = Path(folder)
    rs, problems = parse_rules(read_rule_texts(folder), str(folder).rstrip("/"))
    if problems or rs is None:
        raise RulesError(problems or [f"{folder}:1: unusable rule set"])
    return rs


def load_rule_texts(texts: dict[str, str], label: str = "rules") -> RuleSet:
    rs, problems = parse_rules(texts, label)
    if problems or rs is None:
        raise RulesError(problems or [f"{label}:1: unusable rule set"])
    return rs

"""The rule files as strict pydantic models (unknown keys are errors)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router.envelope import Kind
from router.identifiers import HsaId

Area = Literal["sodra", "norra", "ostra", "vastra", "regional"]
UnitType = Literal[
    "sjukhus", "forlossning", "lab", "primarvard", "lokalt_lab", "mvc", "kommun", "privat", "extern_diagnostik"
]
When = Literal["always", "live", "not_live"]
ID_RE = r"^[a-z0-9][a-z0-9._-]*$"
JOURNAL = "journal"
NO_ROUTE = "no_route"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WallTimeError(ValueError):
    """A wall-clock time that its zone skips or shows twice."""


def wall_time(naive: dt.datetime, tz: dt.tzinfo, text: str) -> dt.datetime:
    """``naive`` as a wall-clock time in ``tz``; refused when the clocks skip it (spring) or show it
    twice (autumn), since either reading could be meant."""
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset():
        offsets = [_offset(x) for x in (first, second)]
        there = first.astimezone(dt.UTC).astimezone(tz).replace(tzinfo=None)
        if there != naive:
            raise WallTimeError(f"instant {text!r} does not exist in {tz} (the clocks skip it); write an offset, "
                             f"e.g. {offsets[0]} or {offsets[1]}")
        raise WallTimeError(f"instant {text!r} occurs twice in {tz} (the clocks go back); write the offset: "
                         f"{offsets[0]} for the first, {offsets[1]} for the second")
    return first


def _offset(t: dt.datetime) -> str:
    total = int((t.utcoffset() or dt.timedelta()).total_seconds()) // 60
    return f"{'+' if total >= 0 else '-'}{abs(total) // 60:02d}:{abs(total) % 60:02d}"


def parse_instant(text: str) -> dt.datetime:
    """``2024-11-12T06:00 Europe/Stockholm`` or ISO 8601 with an offset; a zone is mandatory."""
    if isinstance(text, dt.datetime):
        text = text.isoformat()
    if not isinstance(text, str):
        raise ValueError("an instant must be text like '2024-11-12T06:00 Europe/Stockholm'")
    parts = text.strip().split()
    if len(parts) == 2:
        local, zone = parts[0], parts[1]
        if len(parts[1]) <= 5 and ":" in parts[1]:  # '2024-11-12 06:00' without a zone
            raise ValueError(f"instant {text!r} has no time zone (write e.g. '{text} Europe/Stockholm')")
        try:
            tz = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r}") from None
        try:
            naive = dt.datetime.fromisoformat(local)
        except ValueError:
            raise ValueError(f"instant {text!r}: {local!r} is not an ISO date-time") from None
        if naive.tzinfo is not None:
            raise ValueError(f"instant {text!r} has both an offset and a zone")
        return wall_time(naive, tz, text)
    if len(parts) == 3:  # "2024-11-12 06:00 Europe/Stockholm"
        return parse_instant(f"{parts[0]}T{parts[1]} {parts[2]}")
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"instant {text!r} is not 'YYYY-MM-DDTHH:MM Zone/Name' or ISO 8601 with offset") from None
    if value.tzinfo is None:
        raise ValueError(f"instant {text!r} has no time zone (add an offset or a zone like Europe/Stockholm)")
    return value


class UnitSelector(Strict):
    area: list[Area] = []
    municipality: list[str] = []
    unit_type: list[UnitType] = []
    include: list[HsaId] = []
    exclude: list[HsaId] = []


class EtappSpec(Strict):
    id: str = Field(pattern=ID_RE)
    name: str
    description: str | None = None
    go_live: str
    units: UnitSelector

    @field_validator("go_live")
    @classmethod
    def _instant(cls, v: str) -> str:
        parse_instant(v)
        return v

    @property
    def go_live_at(self) -> dt.datetime:
        return parse_instant(self.go_live)


class PlanFile(Strict):
    etapper: list[EtappSpec]


class SystemSpec(Strict):
    id: str = Field(pattern=ID_RE)
    description: str
    retired_from: str | None = None

    @field_validator("retired_from")
    @classmethod
    def _instant(cls, v: str | None) -> str | None:
        if v is not None:
            parse_instant(v)
        return v


class SystemsFile(Strict):
    directory: str = Field(description="unit directory CSV, relative to the rules folder")
    target: str = Field(description="the system a live unit's journal is")
    journals: dict[UnitType, str] = Field(description="legacy journal per unit type, before go-live")
    systems: list[SystemSpec]


class PartySelector(Strict):
    unit_type: list[UnitType] = []
    area: list[Area] = []
    municipality: list[str] = []
    care_provider: list[HsaId] = []
    hsa_id: list[HsaId] = []

    def is_empty(self) -> bool:
        return not (self.unit_type or self.area or self.municipality or self.care_provider or self.hsa_id)


class RouteSpec(Strict):
    id: str = Field(pattern=ID_RE)
    description: str | None = None
    kind: list[Kind]
    subtype: list[str] = []
    receiver: PartySelector = PartySelector()
    sender: PartySelector = PartySelector()
    cross_provider: bool | None = None
    priority: int
    when: When = "always"
    to: list[str] | Literal["no_route"] | None = None
    live: list[str] | None = None
    not_live: list[str] | None = None

    @field_validator("kind", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _destinations(self) -> RouteSpec:
        if self.to is not None and (self.live is not None or self.not_live is not None):
            raise ValueError("give either 'to' or 'live'/'not_live', not both")
        if self.to is None and (self.live is None or self.not_live is None):
            raise ValueError("a route needs 'to', or both 'live' and 'not_live'")
        if self.live is not None and self.when != "always":
            raise ValueError("'when' only goes with 'to'; 'live'/'not_live' already say when")
        for dests in (self.to, self.live, self.not_live):
            if isinstance(dests, list) and not dests:
                raise ValueError("an empty destination list; write 'to: no_route' for a deliberate dead letter")
        return self

    def variants(self) -> list[tuple[str, When, tuple[str, ...]]]:
        """(id, when, destinations) pairs; ``('no_route',)`` marks a deliberate dead letter."""
        if self.to is not None:
            dests = (NO_ROUTE,) if self.to == NO_ROUTE else tuple(self.to)
            return [(self.id, self.when, dests)]
        assert self.live is not None and self.not_live is not None
        return [(self.id, "live", tuple(self.live)), (self.id, "not_live", tuple(self.not_live))]


class RoutesFile(Strict):
    etapp: str | None = None
    description: str | None = None
    routes: list[RouteSpec] = []


SLUG = re.compile(ID_RE)

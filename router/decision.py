"""The routing decision: a frozen value the engine returns and the worker records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["routed", "park", "dead_letter"]
EtappState = Literal["scheduled", "hold", "live", "paused", "rolled_back"]
ETAPP_STATES: tuple[EtappState, ...] = ("scheduled", "hold", "live", "paused", "rolled_back")


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    destinations: tuple[str, ...]
    rule: str | None
    rules_version: str
    etapp: str | None
    etapp_state: str | None
    reason: str
    reason_code: str = "routed"  # routed, parked, or a dead-letter code (no_route, unknown_unit, ...)

    def as_json(self) -> dict[str, object]:
        dests: list[str] = list(self.destinations)
        if self.outcome == "dead_letter":
            dests = ["dead-letter"]
        elif self.outcome == "park":
            dests = [f"park:{self.etapp}"]
        return {
            "destinations": dests,
            "outcome": self.outcome,
            "rule": self.rule,
            "rules_version": self.rules_version,
            "etapp": self.etapp,
            "etapp_state": self.etapp_state,
            "reason": self.reason,
            "reason_code": self.reason_code,
        }

"""Operational etapp states over time, from the change records on the control topic."""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EtappChange:
    etapp: str
    state: str
    effective_ms: int
    at_ms: int
    who: str
    why: str
    hold_until_ms: int | None = None


class StateBook:
    """All state changes per etapp; ``at(t)`` gives the states in force at instant ``t``."""

    def __init__(self) -> None:
        self._changes: dict[str, list[EtappChange]] = {}
        self._cache: tuple[int, int, dict[str, str]] | None = None

    def apply(self, change: EtappChange) -> None:
        items = self._changes.setdefault(change.etapp, [])
        keys = [(c.effective_ms, c.at_ms) for c in items]
        items.insert(bisect.bisect_right(keys, (change.effective_ms, change.at_ms)), change)
        self._cache = None

    def at(self, t_ms: int) -> dict[str, str]:
        c = self._cache
        if c is not None and c[0] <= t_ms < c[1]:
            return c[2]
        states: dict[str, str] = {}
        lo, hi = -(2**62), 2**62
        for etapp, items in self._changes.items():
            current = None
            for ch in items:
                if ch.effective_ms <= t_ms:
                    current = ch
                    lo = max(lo, ch.effective_ms)
                else:
                    hi = min(hi, ch.effective_ms)
                    break
            if current is not None:
                states[etapp] = current.state
        self._cache = (lo, hi, states)
        return states

    def current(self, etapp: str, t_ms: int) -> EtappChange | None:
        found = None
        for ch in self._changes.get(etapp, []):
            if ch.effective_ms <= t_ms:
                found = ch
        return found

    def history(self, etapp: str | None = None) -> list[EtappChange]:
        if etapp is not None:
            return list(self._changes.get(etapp, []))
        return sorted((c for items in self._changes.values() for c in items), key=lambda c: c.at_ms)

    def etapper(self) -> list[str]:
        return sorted(self._changes)

"""Delivered-message store of fhir-out: message id -> outcome, in SQLite, surviving restarts.

A row is written only after the destination acknowledged (or definitively rejected) the message
and before the Kafka offset is committed, so a record consumed again after a crash is recognised.
The WAL journal with ``synchronous=FULL`` makes a committed row survive a SIGKILL of the process.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Literal

Outcome = Literal["acknowledged", "rejected"]


class DeliveredStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS delivered (message_id TEXT PRIMARY KEY, outcome TEXT NOT NULL, "
            "at_ms INTEGER NOT NULL)"
        )

    @classmethod
    def for_system(cls, state_dir: Path, system: str) -> DeliveredStore:
        return cls(state_dir / f"fhir-out-{system}.sqlite")

    def outcome(self, message_id: str) -> str | None:
        row = self._db.execute("SELECT outcome FROM delivered WHERE message_id = ?", (message_id,)).fetchone()
        return None if row is None else str(row[0])

    def record(self, message_id: str, outcome: Outcome) -> None:
        self._db.execute("INSERT OR REPLACE INTO delivered (message_id, outcome, at_ms) VALUES (?, ?, ?)",
                         (message_id, outcome, int(time.time() * 1000)))

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM delivered").fetchone()[0])

    def close(self) -> None:
        self._db.close()

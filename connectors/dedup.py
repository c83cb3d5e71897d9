"""The delivered-message store of an outbound MLLP connector: message id -> state, in SQLite.

States: ``sending`` (written just before the message goes on the wire), ``acknowledged`` (the
destination answered AA) and ``rejected`` (AE, dead-lettered). A message is recorded as delivered
only after the destination's answer and before its Kafka offset is committed, so a record that is
consumed again after a crash or rebalance is recognised and not sent twice. A message still in
``sending`` after a restart was interrupted between send and answer: nobody can know whether the
destination got it, so it is sent again and reported as such (``interrupted`` is true).

WAL journal, ``synchronous=NORMAL``: a committed row survives the process being killed (SIGKILL);
after an operating-system crash the last rows may be lost, which at worst re-sends a message.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Literal

State = Literal["sending", "acknowledged", "rejected"]


class DedupStore:
    def __init__(self, path: Path, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("CREATE TABLE IF NOT EXISTS delivered (message_id TEXT PRIMARY KEY, state TEXT NOT NULL, "
                         "attempts INTEGER NOT NULL DEFAULT 0, at_ms INTEGER NOT NULL)")

    @classmethod
    def for_system(cls, state_dir: Path, system: str) -> DedupStore:
        return cls(Path(state_dir) / f"mllp-out-{system}.sqlite")

    def state(self, message_id: str) -> str | None:
        row = self._db.execute("SELECT state FROM delivered WHERE message_id = ?", (message_id,)).fetchone()
        return None if row is None else str(row[0])

    def is_done(self, message_id: str) -> bool:
        return self.state(message_id) in ("acknowledged", "rejected")

    def mark_sending(self, message_id: str) -> bool:
        """Note that ``message_id`` is about to be sent; True if an earlier send was interrupted."""
        before = self.state(message_id)
        self._db.execute("INSERT INTO delivered (message_id, state, attempts, at_ms) VALUES (?, 'sending', 1, ?) "
                         "ON CONFLICT(message_id) DO UPDATE SET state = 'sending', attempts = attempts + 1, "
                         "at_ms = excluded.at_ms", (message_id, int(time.time() * 1000)))
        return before == "sending"

    def record(self, message_id: str, state: State) -> None:
        self._db.execute("INSERT INTO delivered (message_id, state, attempts, at_ms) VALUES (?, ?, 1, ?) "
                         "ON CONFLICT(message_id) DO UPDATE SET state = excluded.state, at_ms = excluded.at_ms",
                         (message_id, state, int(time.time() * 1000)))

    def count(self, state: State | None = None) -> int:
        if state is None:
            return int(self._db.execute("SELECT COUNT(*) FROM delivered").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM delivered WHERE state = ?", (state,)).fetchone()[0])

    def close(self) -> None:
        self._db.close()

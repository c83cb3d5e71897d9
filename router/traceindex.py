"""The trace index: every hop of every message, searchable by its ids and business keys.

One table ``hops``; one row per thing that happened to a message (decided, parked, released,
re-decided by a replay, dead-lettered, delivered/rejected/skipped, replayed), with the keys a
person searches by. The decision row also carries the received instant, so the "received" hop
costs no row of its own. The feed stores its Kafka positions in the same transaction as the
rows (table ``feed_offsets``), so a crash never indexes a record twice or loses one.

SQLite (WAL) under ``settings.state_dir`` by default; PostgreSQL when ``settings.index_url`` is a
``postgresql://`` URL. The patient appears only as its keyed hash (``patient_key``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from router.errors import SamexError

COLUMNS = ("message_id", "hop", "at_ms", "received_ms", "kind", "source_message_id", "placer", "filler",
           "referral_id", "patient_key", "outcome", "systems", "rule", "rules_version", "etapp", "etapp_state",
           "reason", "replay_id", "who", "stage", "topic", "part", "off")
Row = tuple[Any, ...]  # values in COLUMNS order
SEARCH_KEYS = ("message_id", "source_message_id", "placer", "filler", "referral_id", "replay_id")
INDEXED = (*SEARCH_KEYS, "patient_key", "at_ms")
# order of hops that share one millisecond
HOP_RANK = {"received": 0, "decided": 1, "parked": 2, "released": 3, "replayed": 4, "copied": 4, "re-decided": 5,
            "dead_lettered": 6, "rejected": 7, "skipped_duplicate": 8, "delivered": 9}
MAX_MESSAGES = 200
FEED_LOCK_ID = 0x5A4D58  # PostgreSQL advisory lock of the index feeder


class IndexError_(SamexError):
    """The trace index cannot be opened, written or read."""


@dataclass(frozen=True, slots=True)
class Hop:
    at_ms: int
    hop: str
    message_id: str
    fields: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"at_ms": self.at_ms, "hop": self.hop, "message_id": self.message_id,
                **{k: v for k, v in self.fields.items() if v is not None}}


class TraceIndex(Protocol):
    def add(self, rows: Sequence[Row], offsets: dict[tuple[str, int], int]) -> None: ...
    def offsets(self) -> dict[tuple[str, int], int]: ...
    def find(self, term: str, limit: int = MAX_MESSAGES) -> list[Hop]: ...
    def find_patient(self, key: str, limit: int = MAX_MESSAGES) -> list[Hop]: ...
    def count(self) -> int: ...
    def try_feed_lock(self) -> bool: ...
    def close(self) -> None: ...


_DDL_HOPS = ("CREATE TABLE IF NOT EXISTS hops (message_id TEXT NOT NULL, hop TEXT NOT NULL, at_ms BIGINT NOT NULL, "
             "received_ms BIGINT, kind TEXT, source_message_id TEXT, placer TEXT, filler TEXT, referral_id TEXT, "
             "patient_key TEXT, outcome TEXT, systems TEXT, rule TEXT, rules_version TEXT, etapp TEXT, "
             "etapp_state TEXT, reason TEXT, replay_id TEXT, who TEXT, stage TEXT, topic TEXT, part INTEGER, "
             "off BIGINT)")
_DDL_OFFSETS = ("CREATE TABLE IF NOT EXISTS feed_offsets (topic TEXT NOT NULL, part INTEGER NOT NULL, "
                "next_offset BIGINT NOT NULL, PRIMARY KEY (topic, part))")


def _index_ddl() -> list[str]:
    out = []
    for col in INDEXED:
        where = "" if col in ("message_id", "at_ms") else f" WHERE {col} IS NOT NULL"
        out.append(f"CREATE INDEX IF NOT EXISTS hops_{col} ON hops ({col}){where}")
    return out


def _hops(rows: Iterable[Sequence[Any]]) -> list[Hop]:
    """Rows (COLUMNS order) to hops in time order; a decision row with a received instant gives two."""
    out: list[Hop] = []
    for r in rows:
        rec = dict(zip(COLUMNS, r, strict=True))
        mid, hop, at = rec.pop("message_id"), rec.pop("hop"), int(rec.pop("at_ms"))
        received = rec.pop("received_ms")
        if received is not None:
            out.append(Hop(int(received), "received", mid, {"kind": rec["kind"], "connector": rec["stage"],
                                                            "topic": rec["topic"],
                                                            "part": rec["part"], "off": rec["off"],
                                                            "source_message_id": rec["source_message_id"]}))
        out.append(Hop(at, hop, mid, rec))
    out.sort(key=lambda h: (h.at_ms, HOP_RANK.get(h.hop, 99), h.message_id))
    return out


class _SqlIndex:
    """Shared SQL of both backends; ``_ph`` is the parameter placeholder."""

    _ph = "?"
    conn: Any

    def _sql(self, text: str) -> str:
        return text if self._ph == "?" else text.replace("?", self._ph)

    def _ids_for(self, term: str, limit: int) -> list[str]:
        union = " UNION ".join(f"SELECT message_id FROM hops WHERE {k} = ?" for k in SEARCH_KEYS)
        cur = self.conn.cursor()
        cur.execute(self._sql(f"SELECT message_id FROM ({union}) AS m LIMIT {int(limit)}"), [term] * len(SEARCH_KEYS))
        return [r[0] for r in cur.fetchall()]

    def _hops_of(self, ids: list[str]) -> list[Hop]:
        if not ids:
            return []
        cur = self.conn.cursor()
        marks = ",".join("?" * len(ids))
        cur.execute(self._sql(f"SELECT {', '.join(COLUMNS)} FROM hops WHERE message_id IN ({marks})"), ids)
        return _hops(cur.fetchall())

    def find(self, term: str, limit: int = MAX_MESSAGES) -> list[Hop]:
        """Every hop of the messages that ``term`` names: a message id, MSH-10 / source id, placer or
        filler order number, referral id or replay id."""
        term = term.strip()
        return self._hops_of(self._ids_for(term, limit)) if term else []

    def find_patient(self, key: str, limit: int = MAX_MESSAGES) -> list[Hop]:
        """Every hop of the (at most ``limit`` most recent) messages of one patient, by keyed hash."""
        cur = self.conn.cursor()
        cur.execute(self._sql("SELECT message_id, max(at_ms) AS t FROM hops WHERE patient_key = ? "
                              f"GROUP BY message_id ORDER BY t DESC LIMIT {int(limit)}"), [key])
        return self._hops_of([r[0] for r in cur.fetchall()])

    def offsets(self) -> dict[tuple[str, int], int]:
        cur = self.conn.cursor()
        cur.execute("SELECT topic, part, next_offset FROM feed_offsets")
        return {(t, int(p)): int(o) for t, p, o in cur.fetchall()}

    def count(self) -> int:
        cur = self.conn.cursor()
        cur.execute("SELECT count(*) FROM hops")
        return int(cur.fetchone()[0])


class SqliteIndex(_SqlIndex):
    def __init__(self, path: Path) -> None:
        self._lock: IO[str] | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.path = path
            self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA cache_size=-65536")
            for ddl in (_DDL_HOPS, _DDL_OFFSETS, *_index_ddl()):
                self.conn.execute(ddl)
        except (OSError, sqlite3.Error) as exc:
            raise IndexError_(f"cannot open the trace index {path}: {exc}") from exc

    def add(self, rows: Sequence[Row], offsets: dict[tuple[str, int], int]) -> None:
        c = self.conn
        try:
            c.execute("BEGIN")
            c.executemany(f"INSERT INTO hops ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
            c.executemany("INSERT INTO feed_offsets (topic, part, next_offset) VALUES (?, ?, ?) "
                          "ON CONFLICT (topic, part) DO UPDATE SET next_offset = excluded.next_offset",
                          [(t, p, o) for (t, p), o in offsets.items()])
            c.execute("COMMIT")
        except sqlite3.Error as exc:
            c.execute("ROLLBACK")
            raise IndexError_(f"cannot write the trace index: {exc}") from exc

    def try_feed_lock(self) -> bool:
        """Only one feeder per index (two would index the same records twice); held until close."""
        import fcntl

        if self._lock is not None:
            return True
        fh = open(f"{self.path}.feed.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        self._lock = fh
        return True

    def close(self) -> None:
        self.conn.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class PostgresIndex(_SqlIndex):
    _ph = "%s"

    def __init__(self, url: str) -> None:
        import psycopg

        self._locked = False
        try:
            self.conn = psycopg.connect(url, autocommit=False)
            with self.conn.cursor() as cur:
                for ddl in (_DDL_HOPS, _DDL_OFFSETS, *_index_ddl()):
                    cur.execute(ddl)
            self.conn.commit()
        except psycopg.Error as exc:
            # the URL may hold a password: name the kind of failure only
            raise IndexError_(f"cannot open the PostgreSQL trace index: {type(exc).__name__}") from exc

    def add(self, rows: Sequence[Row], offsets: dict[tuple[str, int], int]) -> None:
        import psycopg

        try:
            with self.conn.cursor() as cur:
                if rows:
                    with cur.copy(f"COPY hops ({', '.join(COLUMNS)}) FROM STDIN") as cp:
                        for r in rows:
                            cp.write_row(r)
                for (t, p), o in offsets.items():
                    cur.execute("INSERT INTO feed_offsets (topic, part, next_offset) VALUES (%s, %s, %s) "
                                "ON CONFLICT (topic, part) DO UPDATE SET next_offset = excluded.next_offset",
                                (t, p, o))
            self.conn.commit()
        except psycopg.Error as exc:
            self.conn.rollback()
            raise IndexError_(f"cannot write the PostgreSQL trace index: {exc}") from exc

    def try_feed_lock(self) -> bool:
        """Only one feeder per index: a session advisory lock, held until close."""
        with self.conn.cursor() as cur:
            if not self._locked:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (FEED_LOCK_ID,))
                self._locked = bool(cur.fetchone()[0])
        self.conn.commit()
        return self._locked

    def find(self, term: str, limit: int = MAX_MESSAGES) -> list[Hop]:
        try:
            return super().find(term, limit)
        finally:
            self.conn.rollback()  # end the read transaction

    def find_patient(self, key: str, limit: int = MAX_MESSAGES) -> list[Hop]:
        try:
            return super().find_patient(key, limit)
        finally:
            self.conn.rollback()

    def close(self) -> None:
        import psycopg

        if self._locked and not self.conn.closed:
            # released with the session too, but the server notices that a moment later
            with contextlib.suppress(psycopg.Error), self.conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (FEED_LOCK_ID,))
            self._locked = False
        self.conn.close()


def index_path(settings: Any) -> Path:
    url = settings.index_url or ""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    if url and "://" not in url:
        return Path(url)
    return Path(settings.state_dir) / "trace-index.sqlite"


def open_index(settings: Any) -> TraceIndex:
    """The configured trace index: PostgreSQL for a ``postgresql://`` URL, else SQLite."""
    url = settings.index_url or ""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresIndex(url)
    if "://" in url and not url.startswith("sqlite:///"):
        raise IndexError_("SAMEX_INDEX_URL must be a postgresql:// URL, sqlite:///path or a file path")
    path = index_path(settings)
    if url and not path.parent.is_dir():  # a mistyped path must not look like an empty index
        raise IndexError_(f"SAMEX_INDEX_URL: the folder {path.parent} does not exist")
    return SqliteIndex(path)

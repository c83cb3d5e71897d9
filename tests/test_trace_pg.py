"""The trace index on a REAL PostgreSQL: a throwaway cluster (initdb/pg_ctl in a temp folder on a
free port), the same scenario as the SQLite test. Fails, never skips, when no server can start
(scripts/ensure-postgres installs Debian's postgresql package; `make test` runs it)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.settings import load_settings
from router.traceindex import PostgresIndex, open_index
from tests.kafka_helpers import free_port
from tests.test_traceindex import check_index

pytestmark = pytest.mark.postgres


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        pytest.fail(f"PostgreSQL's {name} is not installed: run scripts/ensure-postgres (Debian package postgresql)",
                    pytrace=False)
    return found


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="samex-pg-"))
    data, sock, log = root / "data", root / "sock", root / "pg.log"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = lambda *a: subprocess.run([*prefix, *a], capture_output=True, text=True, timeout=120)  # noqa: E731
    r = run(initdb, "-D", str(data), "-A", "trust", "-U", "samex", "--no-sync", "-E", "UTF8")
    if r.returncode != 0:
        pytest.fail(f"initdb failed: {r.stdout}{r.stderr}", pytrace=False)
    r = run(pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    if r.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        pytest.fail(f"PostgreSQL did not start: {r.stdout}{r.stderr}\n{tail}", pytrace=False)
    try:
        yield f"postgresql://samex@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_index_every_key_patient_hash_and_hop_order(pg_url: str) -> None:
    settings = load_settings(index_url=pg_url)
    index = open_index(settings)
    assert isinstance(index, PostgresIndex)
    try:
        check_index(index)
        # the indexes exist and the planner can use one for a business key
        with index.conn.cursor() as cur:
            cur.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'hops'")
            names = {r[0] for r in cur.fetchall()}
            cur.execute("SET enable_seqscan = off")
            cur.execute("EXPLAIN SELECT message_id FROM hops WHERE placer = 'x'")
            plan = " ".join(r[0] for r in cur.fetchall())
        index.conn.rollback()
        for col in ("message_id", "source_message_id", "placer", "filler", "referral_id", "patient_key", "at_ms"):
            assert f"hops_{col}" in names
        assert "hops_placer" in plan, plan
    finally:
        index.close()
    # reopening keeps rows and positions (DDL is idempotent); one feeder at a time
    again, other = open_index(settings), open_index(settings)
    try:
        assert again.count() > 0 and again.offsets()
        assert again.try_feed_lock() and not other.try_feed_lock()
        again.close()
        assert other.try_feed_lock()
    finally:
        again.close()
        other.close()

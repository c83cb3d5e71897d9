"""The worker's /status page, opened in a real headless browser (Debian's chromium): it shows the
etapp states, the active rules version, the counts and the latest dead letters, without patient data."""

from __future__ import annotations

import html
import re
import shutil
import subprocess

import pytest

from router.rules.engine import Engine
from router.rules.load import load_rules
from tests.kafka_helpers import REPO, WorkerProcess, synth_records
from tests.ops_helpers import HELD, router_settings, run_flow, status

pytestmark = pytest.mark.kafka
ENGINE = Engine(load_rules(REPO / "rules"))


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no headless browser: run scripts/ensure-prometheus (installs Debian's chromium)", pytrace=False)


def rendered(url: str) -> str:
    """The DOM after the browser loaded and rendered the page."""
    out = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--no-first-run", "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "<html" in out.stdout, out.stderr[-2000:]
    return out.stdout


def table(dom: str, table_id: str) -> list[list[str]]:
    m = re.search(rf'<table id="{table_id}">(.*?)</table>', dom, flags=re.S)
    assert m, f"no table #{table_id}"
    rows = re.findall(r"<tr>(.*?)</tr>", m.group(1), flags=re.S)
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r,
                                                                               flags=re.S)] for r in rows]


async def test_status_page_in_a_headless_browser(kafka_bootstrap: str, topic_prefix: str) -> None:
    browser()  # fail early, before the worker starts, when there is no browser
    s = await router_settings(kafka_bootstrap, topic_prefix)
    records = synth_records(200, seed=5, patients=30, bad_share=0.1)
    numbers = {r["patient"]["id"] for r in records}
    w = WorkerProcess(s).start()
    try:
        w.wait_ready()
        await run_flow(kafka_bootstrap, s, w, records=records, release=False, until="2099-06-01T08:00")
        st = status(w)
        dom = rendered(f"http://127.0.0.1:{w.port}/status")
    finally:
        w.stop()

    assert f"samex worker {w.worker_id}" in dom
    # the active rules version
    assert re.search(rf'<b id="rules-version">{ENGINE.version}</b>', dom)
    # every etapp with its state; the held one with the planned end of its hold
    etapper = {r[0]: r for r in table(dom, "etapper")[1:]}
    assert set(etapper) == set(ENGINE.golive_ms)
    assert etapper[HELD][3] == "hold" and etapper[HELD][4] == "parked"
    assert etapper[HELD][6].startswith("2099-06-01") and etapper[HELD][7] == "ops test: hold"
    assert all(r[3] == "scheduled" for e, r in etapper.items() if e != HELD)
    # the counts
    counts = {r[0]: int(r[1]) for r in table(dom, "counts")}
    assert counts["in"] == len(records) + 1 and counts["parked"] > 0 and counts["routed"] > 0
    assert counts["dead_letter"] == st["counts"]["dead_letter"] > 1
    # the latest dead letters: time, message id, code, reason; newest first
    dead = table(dom, "dead-letters")[1:]
    assert len(dead) == min(counts["dead_letter"], 20)
    codes = {r[2] for r in dead}
    assert "undecodable" in codes and "no_route" in codes
    ids = {r["message_id"] for r in records}
    assert all(r[1] in ids for r in dead if r[2] == "no_route")
    # no patient data on the page: no personnummer in any form, no patient key
    for n in numbers:
        for form in (n, n[2:], f"{n[:8]}-{n[8:]}", f"{n[2:8]}-{n[8:]}"):
            assert form not in dom
    assert "patient" not in dom.lower()

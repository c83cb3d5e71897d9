"""The samex_etapp_* series follow the state in force at scrape time (offline: no broker).

A change takes effect at its effective instant (SAMEX_ETAPP_LEAD_MS after it is written), not when
the worker reads it; the series must show the old state until then and the new one after, with no
further event in the worker.
"""

from __future__ import annotations

import time

from router.settings import load_settings
from router.worker.app import WorkerRuntime
from router.worker.states import EtappChange

ETAPP = "etapp-4-vastra"


def sample(rt: WorkerRuntime, name: str, **labels: str) -> float | None:
    return rt.registry.get_sample_value(name, labels)


def state_of(rt: WorkerRuntime, etapp: str) -> str:
    on = [s for s in ("scheduled", "hold", "live", "paused", "rolled_back")
          if sample(rt, "samex_etapp_state", etapp=etapp, state=s) == 1]
    assert len(on) == 1, on
    return on[0]


def test_etapp_series_follow_the_state_in_force_at_each_scrape() -> None:
    rt = WorkerRuntime(load_settings())
    golive = rt.core.engine.golive_ms[ETAPP]
    now = int(time.time() * 1000)
    assert now > golive, "the example plan's last go-live is 2026-10-13"
    # never changed: scheduled, live past its go-live, no "since" series, no hold
    assert state_of(rt, ETAPP) == "scheduled"
    assert sample(rt, "samex_etapp_live", etapp=ETAPP) == 1
    assert sample(rt, "samex_etapp_state_since_timestamp_seconds", etapp=ETAPP) is None
    assert sample(rt, "samex_etapp_golive_timestamp_seconds", etapp=ETAPP) == golive / 1000
    assert sample(rt, "samex_etapp_hold_until_timestamp_seconds", etapp=ETAPP) == 0

    until = now + 3_600_000
    rt.control.states.apply(EtappChange(ETAPP, "hold", now - 1000, now - 1000, "test", "test hold", until))
    assert state_of(rt, ETAPP) == "hold"
    assert sample(rt, "samex_etapp_live", etapp=ETAPP) == 0
    assert sample(rt, "samex_etapp_hold_until_timestamp_seconds", etapp=ETAPP) == until / 1000
    assert sample(rt, "samex_etapp_state_since_timestamp_seconds", etapp=ETAPP) == (now - 1000) / 1000

    # a release written now takes effect 1.5 s later: until then the hold is still in force
    release_at = int(time.time() * 1000) + 1500
    rt.control.states.apply(EtappChange(ETAPP, "scheduled", release_at, release_at - 1500, "test", "test go"))
    assert state_of(rt, ETAPP) == "hold"
    assert sample(rt, "samex_etapp_hold_until_timestamp_seconds", etapp=ETAPP) == until / 1000
    time.sleep(max(0.0, release_at / 1000 - time.time()) + 0.1)
    assert state_of(rt, ETAPP) == "scheduled"
    assert sample(rt, "samex_etapp_live", etapp=ETAPP) == 1
    assert sample(rt, "samex_etapp_hold_until_timestamp_seconds", etapp=ETAPP) == 0
    assert sample(rt, "samex_etapp_state_since_timestamp_seconds", etapp=ETAPP) == release_at / 1000

    # paused and rolled back route as not live
    for state in ("paused", "rolled_back"):
        t = int(time.time() * 1000) - 1
        rt.control.states.apply(EtappChange(ETAPP, state, t, t, "test", f"test {state}"))
        assert state_of(rt, ETAPP) == state and sample(rt, "samex_etapp_live", etapp=ETAPP) == 0
    # the other etapper are untouched
    assert state_of(rt, "etapp-1-sodra-pd1") == "scheduled"

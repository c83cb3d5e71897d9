"""No personnummer leaves the message content: a flow with known test personnummer (routed, parked,
released, dead-lettered, and raw bad bytes carrying a number) through a worker at DEBUG level; the
numbers must not appear, in any form, in the worker's log output, /metrics, /status (HTML and JSON),
the dead-letter reasons and the decision records. The dead letters' `original` field is the message
itself (kept for replay) and is the one place the number may be."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from router.codec import default_codec
from router.synth import test_personnummer
from tests.kafka_helpers import WorkerProcess, read_topic, synth_records
from tests.ops_helpers import router_settings, run_flow

pytestmark = pytest.mark.kafka
codec = default_codec()
TERMINAL_CONTROL = re.compile(r"\x08|\x1b\[[0-9;?]*[A-Za-z]")


def forms(pnr: str) -> set[str]:
    """A 12-digit personnummer in every written form: 12 and 10 digits, with and without '-'."""
    return {pnr, pnr[2:], f"{pnr[:8]}-{pnr[8:]}", f"{pnr[2:8]}-{pnr[8:]}"}


def leaks(text: str, numbers: list[str]) -> list[str]:
    return sorted({f for n in numbers for f in forms(n) if f in text})


def flow(numbers: list[str]) -> tuple[list[dict], list[tuple[bytes | None, bytes]]]:
    records = synth_records(300, seed=77, patients=10, bad_share=0.1)
    for i, rec in enumerate(records):
        rec["patient"] = {**rec["patient"], "id": numbers[i % len(numbers)], "id_type": "personnummer",
                          "oid": "1.2.752.129.2.1.3.1"}
    good = codec.encode("envelope", records[0])
    raw: list[tuple[bytes | None, bytes]] = [
        # garbage that carries a number in two forms
        (b"bad-1", f"MSH|^~\\&|X|Y|PID|||{numbers[0]}||{forms(numbers[1]).pop()}".encode()),
        # a truncated envelope: the number is in the part that remains
        (b"bad-2", good[: good.index(numbers[0].encode()) + 20]),
    ]
    return records, raw


def test_forms_and_leak_detection() -> None:
    n = "199001019802"
    assert forms(n) == {"199001019802", "9001019802", "19900101-9802", "900101-9802"}
    assert leaks("patient 900101-9802 arrived", [n]) == ["900101-9802"]
    assert leaks("message 0f3a-…", [n]) == []


async def test_no_personnummer_in_logs_metrics_status_or_dead_letters(kafka_bootstrap: str,
                                                                      topic_prefix: str) -> None:
    rng = random.Random(4711)
    numbers = [test_personnummer(rng) for _ in range(8)]
    records, raw = flow(numbers)
    s = await router_settings(kafka_bootstrap, topic_prefix)
    w = WorkerProcess(s, SAMEX_LOG_LEVEL="DEBUG", SAMEX_LOG_FORMAT="json").start()
    try:
        w.wait_ready()
        decisions = await run_flow(kafka_bootstrap, s, w, records=records, raw=raw)
        metrics = w.get("/metrics").decode()
        status_html = w.get("/status").decode()
        status_json = w.get("/status?json").decode()
    finally:
        w.stop()
    dead = [codec.decode_as("deadletter", r.value) for r in await read_topic(kafka_bootstrap, s.deadletter_topic,
                                                                             expect=len(raw) + 1)]
    log_text = Path(w.log).read_text(errors="replace")

    # the flow did what the scan needs: routed, parked, dead-lettered (bad envelopes and raw bytes)
    outcomes = {d["outcome"] for d in decisions}
    assert {"routed", "parked", "dead_letter"} <= outcomes, outcomes
    assert {"undecodable", "truncated"} <= {d["reason_code"] for d in dead}
    assert any(n.encode() in d["original"] for d in dead for n in numbers)  # the scan below is not vacuous

    assert leaks(log_text, numbers) == [], "personnummer in the worker's log output"
    assert leaks(metrics, numbers) == [], "personnummer in /metrics"
    assert leaks(status_html, numbers) == [] and leaks(status_json, numbers) == [], "personnummer on /status"
    for d in dead:
        fields = json.dumps({k: v for k, v in d.items() if k != "original"})
        assert leaks(fields, numbers) == [], f"personnummer in a dead letter's fields: {d['reason_code']}"
    for d in decisions:
        assert leaks(json.dumps(d, default=str), numbers) == [], "personnummer in a decision record"

    # the logs are JSON lines; every dead letter is logged with its message id and trace id
    # (faust's start-up spinner writes terminal control bytes to stdout, ahead of the first line)
    lines = [ln for ln in TERMINAL_CONTROL.sub("", log_text).splitlines() if ln.strip()]
    assert lines
    entries = [json.loads(ln) for ln in lines]
    assert all({"ts", "level", "msg"} <= set(e) for e in entries)
    logged = [e for e in entries if e["msg"] == "message dead-lettered"]
    assert len(logged) == len(dead)
    with_ids = [e for e in logged if e.get("message_id") and e.get("trace_id")]
    enveloped = [d for d in dead if d["message_id"]]
    assert len(with_ids) == len(enveloped) > 0
    assert {e["message_id"] for e in with_ids} == {d["message_id"] for d in enveloped}

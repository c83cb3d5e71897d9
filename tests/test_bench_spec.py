"""The spec passthrough of bench/throughput.py stands in for the router's own output sizes: its
decision-record size and header lengths must stay those of the router on the benchmark's traffic,
or its ceiling would measure something lighter (or heavier) than a router writes."""

from __future__ import annotations

import statistics
from pathlib import Path

from prometheus_client import CollectorRegistry

from bench.throughput import SPEC_DECISION_BYTES, SPEC_HEADERS
from router.codec import default_codec
from router.identifiers import patient_key
from router.metrics import WorkerMetrics
from router.rules.engine import Engine
from router.rules.load import load_rules
from router.settings import load_settings
from router.worker.core import InRecord, RouterCore
from tests.kafka_helpers import synth_records

REPO = Path(__file__).resolve().parent.parent


def test_spec_passthrough_writes_what_the_router_writes() -> None:
    settings, codec = load_settings(), default_codec()
    core = RouterCore(settings, codec, WorkerMetrics(CollectorRegistry()), Engine(load_rules(REPO / "rules")))
    envs = synth_records(4000, seed=99)  # the benchmark's seed; its own run has 60,000
    ins = [InRecord("in", i % 6, i, patient_key(e["patient"]["id"], settings.patient_key_bytes).encode(),
                    codec.encode("envelope", e)) for i, e in enumerate(envs)]
    outs = core.process(ins, now_ms=max(e["received_time_ms"] for e in envs)).outputs
    decisions = [len(o.value) for o in outs if o.topic == settings.decisions_topic]
    routed = [o for o in outs if o.topic.startswith(settings.out_topic("x").removesuffix("x"))]
    assert len(decisions) == len(ins) and len(routed) >= 0.9 * len(ins)
    assert abs(statistics.median(decisions) - SPEC_DECISION_BYTES) <= 0.1 * SPEC_DECISION_BYTES
    names = [k for k, _v in routed[0].headers]
    assert names == [k for k, _v in SPEC_HEADERS]
    for i, (name, value) in enumerate(SPEC_HEADERS):
        median = statistics.median(len(o.headers[i][1]) for o in routed)
        assert abs(median - len(value)) <= max(2, 0.1 * len(value)), name

"""Replay dry-run throughput and trace latency (not a test).

1. dry run in process: 1,000,000 recorded inbound values (encoded envelopes, 20,000 distinct
   messages repeated) decoded, re-decided under the rule set version each was decided with (the
   ``Engines`` lookup), and diffed against the recorded decision: the work `samex replay` does per
   message once the bytes are in memory;
2. dry run from Kafka: the same path with the reading, over N_KAFKA records produced to a local
   broker (``read_range``: offsets_for_times, read_committed), to show what the broker adds;
3. trace: 1,000,000 decision records (plus received hops) in the SQLite index, then 1,000 look-ups
   by message id, MSH-10, placer order number, referral id and patient hash; p50/p99 ms.

Last line: {"dry_run_msgs_per_s", "dry_run_kafka_msgs_per_s", "trace_ms_p50", "trace_ms_p99", ...}.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from router.codec import default_codec  # noqa: E402
from router.envelopereader import RoutingReader  # noqa: E402
from router.identifiers import patient_key  # noqa: E402
from router.indexfeed import decision_rows  # noqa: E402
from router.replay import Diff, Engines, Item, Redecider, outcome_of_decision  # noqa: E402
from router.rules.engine import Engine  # noqa: E402
from router.rules.load import load_rules  # noqa: E402
from router.settings import load_settings  # noqa: E402
from router.synth import load_units, traffic  # noqa: E402
from router.traceindex import SqliteIndex  # noqa: E402
from router.worker.states import StateBook  # noqa: E402

N = int(os.environ.get("SAMEX_BENCH_N", "1000000"))
DISTINCT = 20_000
N_KAFKA = int(os.environ.get("SAMEX_BENCH_KAFKA_N", "100000"))
SETTINGS = load_settings()
KEY = SETTINGS.patient_key_bytes


def recorded(engine: Engine, n: int, seed: int = 7) -> tuple[list[dict], list[bytes], dict[str, dict]]:
    codec = default_codec()
    now = int(time.time() * 1000)
    gen = traffic(random.Random(seed), load_units(), now, patients=5000, bad_share=0.02)
    envs = [next(gen) for _ in range(n)]
    values = [codec.encode("envelope", e) for e in envs]
    decided = {}
    for e in envs:
        d = engine.decide(e, now, {})
        decided[e["message_id"]] = {"outcome": {"park": "parked"}.get(d.outcome, d.outcome),
                                    "destinations": list(d.destinations) if d.outcome == "routed" else [],
                                    "rules_version": d.rules_version, "decided_at_ms": now}
    return envs, values, decided


def dry_run_in_process(engine: Engine, values: list[bytes], decided: dict[str, dict]) -> tuple[float, Diff]:
    codec = RoutingReader(default_codec())
    rd = Redecider(Engines({}, engine), StateBook())
    diff = Diff()
    reps = N // len(values) + 1
    stream = (values * reps)[:N]
    t0 = time.perf_counter()
    for v in stream:
        _name, env = codec.decode(v)
        it = Item(v, None, [], "samex.in", 0, 0, env, decided.get(env["message_id"]))
        diff.add(it, outcome_of_decision(rd.decide(it)))
    return N / (time.perf_counter() - t0), diff


async def dry_run_from_kafka(bootstrap: str, engine: Engine, envs: list[dict], decided: dict[str, dict]) -> float:
    from router.recorded import read_range
    from router.topics import ensure_topics
    from tests.kafka_helpers import produce_records

    codec = RoutingReader(default_codec())
    topic = f"bench-replay-{os.getpid()}"
    await ensure_topics(bootstrap, [topic], partitions=6)
    t_from = int(time.time() * 1000) - 1000
    src = (envs * (N_KAFKA // len(envs) + 1))[:N_KAFKA]
    await produce_records(bootstrap, topic, src)
    rd = Redecider(Engines({}, engine), StateBook())
    diff = Diff()
    t0 = time.perf_counter()
    n = 0
    async for batch in read_range(bootstrap, topic, t_from, None):
        for r in batch:
            _name, env = codec.decode(r.value)
            it = Item(r.value, r.key, [], r.topic, r.partition, r.offset, env, decided.get(env["message_id"]))
            diff.add(it, outcome_of_decision(rd.decide(it)))
            n += 1
    return n / (time.perf_counter() - t0)


def trace_latency(engine: Engine, envs: list[dict]) -> tuple[float, float, float, int]:
    """Build a 1,000,000-decision SQLite index and time look-ups by every kind of key."""
    folder = Path(tempfile.mkdtemp(prefix="samex-bench-index-"))
    index = SqliteIndex(folder / "index.sqlite")
    rng = random.Random(3)
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    batch = []
    probes: list[str] = []
    for i in range(N):
        e = envs[i % len(envs)]
        mid = f"{e['message_id'][:24]}{i:012d}"
        corr = e["correlation"]
        d = {"message_id": mid, "source_message_id": f"MSH{i:09d}", "kind": e["kind"], "outcome": "routed",
             "destinations": ["millennium"], "rule": "lab-order", "rules_version": engine.version,
             "etapp": "etapp-1-sodra-pd1", "etapp_state": "scheduled", "reason": "bench", "as_of_ms": now + i,
             "decided_at_ms": now + i, "latency_ms": 3.0, "input": {"topic": "samex.in", "partition": i % 6,
                                                                     "offset": i},
             "patient_key": patient_key(e["patient"]["id"], KEY), "sender_unit": None, "receiver_unit": None,
             "placer_order_number": f"PO{i:09d}" if corr["placer_order_number"] else None,
             "filler_order_number": None, "referral_id": f"RF{i:09d}" if corr["referral_id"] else None,
             "trace_id": None, "replay_id": None, "worker": "bench"}
        batch.extend(decision_rows(d, "samex.in", "samex.park.", ("samex.decisions", 0, i)))
        if rng.random() < 0.002:
            probes += [mid, d["source_message_id"], d["placer_order_number"] or d["referral_id"] or mid,
                       "patient:" + d["patient_key"]]
        if len(batch) >= 20_000:
            index.add(batch, {("samex.decisions", 0): i + 1})
            batch = []
    if batch:
        index.add(batch, {("samex.decisions", 0): N})
    build_s = time.perf_counter() - t0
    rng.shuffle(probes)
    probes = probes[:1000]
    times = []
    found = 0
    for p in probes:
        t = time.perf_counter()
        hops = index.find_patient(p[8:], 200) if p.startswith("patient:") else index.find(p)
        times.append((time.perf_counter() - t) * 1000)
        found += bool(hops)
    index.close()
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    times.sort()
    p50 = statistics.median(times)
    p99 = times[int(len(times) * 0.99) - 1]
    print(f"trace index: {N:,} decision records built in {build_s:.1f} s; {len(times)} look-ups "
          f"({found} found): p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {times[-1]:.2f} ms")
    return p50, p99, build_s, found


def main() -> None:
    engine = Engine(load_rules(REPO / "rules"))
    envs, values, decided = recorded(engine, DISTINCT)
    rate, diff = dry_run_in_process(engine, values, decided)
    print(f"dry run in process: {N:,} recorded messages decoded, re-decided and diffed: {rate:,.0f} msg/s "
          f"({diff.same:,} unchanged, {sum(diff.changes.values()):,} changed)")
    kafka_rate = None
    if os.environ.get("SAMEX_BENCH_SKIP_KAFKA") != "1":
        from router.localkafka import kafka_broker

        with kafka_broker() as bootstrap:
            kafka_rate = asyncio.run(dry_run_from_kafka(bootstrap, engine, envs, decided))
        print(f"dry run reading {N_KAFKA:,} records from Kafka (read_committed, offsets_for_times): "
              f"{kafka_rate:,.0f} msg/s")
    p50, p99, build_s, _found = trace_latency(engine, envs)
    print(json.dumps({"dry_run_msgs_per_s": round(rate), "dry_run_kafka_msgs_per_s":
                      round(kafka_rate) if kafka_rate else None, "kafka_records": N_KAFKA,
                      "trace_ms_p50": round(p50, 3), "trace_ms_p99": round(p99, 3), "trace_records": N,
                      "index_build_s": round(build_s, 1)}))


if __name__ == "__main__":
    main()

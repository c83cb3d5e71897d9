"""Router throughput and latency on the real local broker (not a test).

In the same run, for the same messages:
  * raw:    an aiokafka consume -> produce passthrough (getmany, produce through aiokafka's batch
            API as the worker does, await acks, commit; the same producer settings as the worker,
            linger included), run as its own process as the worker is: the limit of this
            client stack on this machine. Until 2026-11-30
            this passthrough produced with one send() per record, which is about 4x slower in
            this client (half of that is aiokafka's Python murmur2 partitioner); that one still
            runs, now also in its own process, and is printed ("raw with send() per record")
            and given in the last line as raw_send_msgs_per_s / ratio_to_raw_send;
  * spec:   the batch passthrough writing what issue 4 asks of any router per routed message and
            nothing more (the message with the five samex headers, and a decision-record-sized
            record to a decision log), decoding and deciding nothing: the ceiling of a router that
            meets the issue here (printed as "spec passthrough", and in the last line as
            raw_spec_msgs_per_s, spec_ratio = spec / raw, ratio_to_raw_spec = router / spec);
  * router: one `samex worker` process (the batched hot path in the faust app: decode, decide,
            produce to destination and decision topics with acks=all, commit).
Throughput = records / (last output timestamp - first output timestamp), so start-up and
rebalancing are not counted for either. Both outputs are read after the run that wrote them
(the router's by watching its end offsets meanwhile), so no reader competes with either run.
Then p50/p99 end-to-end latency (envelope received time -> record read by a consumer of the
destination topics) at a steady 1,000 msg/s, through the worker and, right after, through the
raw passthrough run as its own process (the floor of this client stack and machine at that
moment). Each latency run sends WARM_SECONDS (10) of traffic first and measures the
LAT_SECONDS (20) after it: steady state. The figure from the first message is printed too; it
includes the first writes to each of the ~120 new partitions (the broker creates their segment
files then) and the worker's own warm-up.
After each throughput run a "CPU:" line gives, for the router (from its first decision on) and
for the raw passthrough, the process's CPU per message, its share of a core, and the broker's
share of a core meanwhile (Linux /proc): it tells a slow run that had a whole core from one that
waited. A "batches:" line gives how many inbound batches each side polled and their mean size
(the worker's from its samex_batch_records histogram).
Last line: {"router_msgs_per_s", "raw_msgs_per_s", "ratio", "raw_send_msgs_per_s", "ratio_to_raw_send",
"raw_spec_msgs_per_s", "spec_ratio", "ratio_to_raw_spec", "p50_ms", "p99_ms", "raw_p50_ms", "raw_p99_ms", ...,
"broker_log"}, medians of 3 runs.

The broker's log is on disk (.kafka/runs), as in the tests and `make run`. `--broker-tmpfs` puts it
in /dev/shm instead, to take this VM's disk out of the comparison (docs/throughput-history.md: in 4
alternating rounds tmpfs gave a slightly higher ratio every time, medians 0.80 against 0.78, and a
much shorter latency tail in the first seconds). SAMEX_KAFKA_BOOTSTRAP uses an existing broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiokafka import TopicPartition  # noqa: E402

from bench.worker_cpu import broker_pids, cpu_seconds  # noqa: E402
from router.codec import default_codec  # noqa: E402
from router.kafkaio import consumer, producer, records_in  # noqa: E402
from router.localkafka import kafka_broker  # noqa: E402
from router.settings import load_settings  # noqa: E402
from router.topics import ensure_topics  # noqa: E402
from tests.kafka_helpers import WorkerProcess, produce_records, synth_records, topic_settings  # noqa: E402

N = int(os.environ.get("SAMEX_BENCH_N", "60000"))
RUNS = int(os.environ.get("SAMEX_BENCH_RUNS", "3"))
LAT_SECONDS = int(os.environ.get("SAMEX_BENCH_LAT_S", "20"))
WARM_SECONDS = int(os.environ.get("SAMEX_BENCH_WARM_S", "10"))
BROKER_LOG = "disk"  # set from the command line below


async def out_span(bootstrap: str, topics: list[str], expect: int, timeout: float = 300) -> tuple[int, float]:
    """Wait until ``expect`` records exist across ``topics``; return (count, seconds between first and last)."""
    c = consumer(bootstrap, group_id=None)
    await c.start()
    try:
        tps = []
        for t in topics:
            parts = None
            while parts is None:
                await c._client.force_metadata_update()
                parts = c.partitions_for_topic(t)
            tps += [TopicPartition(t, p) for p in parts]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        n, first, last = 0, None, None
        deadline = time.monotonic() + timeout
        while n < expect and time.monotonic() < deadline:
            for recs in (await c.getmany(timeout_ms=500, max_records=20000)).values():
                for r in recs:
                    n += 1
                    first = r.timestamp if first is None else min(first, r.timestamp)
                    last = r.timestamp if last is None else max(last, r.timestamp)
        return n, ((last or 0) - (first or 0)) / 1000
    finally:
        await c.stop()


def raw_producer(bootstrap: str) -> Any:
    """The passthrough's producer: samex's delivery settings and the worker's linger time, so that
    both sides use the client alike."""
    return producer(bootstrap, linger_ms=load_settings().linger_ms)


#: CPU use of the last router_run, for the line main prints after it: {"router": (...), "raw": (...)},
#: each (µs of the process's CPU per message, its share of a core, the broker's share of a core)
LAST_CPU: dict[str, tuple[float, float, float]] = {}
#: inbound batches of the last router_run: {"router": (batches, mean records), "raw": (...)}
LAST_BATCHES: dict[str, tuple[int, float]] = {}


def batch_stats(metrics_text: str) -> tuple[int, float]:
    """(batches, mean records per batch) from a worker's samex_batch_records histogram."""
    values = {}
    for line in metrics_text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("samex_batch_records_count", "samex_batch_records_sum"):
            values[name] = float(value)
    n = int(values.get("samex_batch_records_count", 0))
    return n, values.get("samex_batch_records_sum", 0.0) / n if n else 0.0


def broker_cpu() -> float:
    """CPU seconds of the local broker (of every broker on the machine, if there are several)."""
    total = 0.0
    for pid in broker_pids():
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


async def send_batched(p: Any, dst: str, batch: dict[Any, list[Any]]) -> list[Any]:
    """Produce a ``getmany`` batch to ``dst`` through aiokafka's batch API (``create_batch`` /
    ``send_batch``), each record to its own partition number: both topics have as many partitions and
    are partitioned by key alike, so that is the key's partition without hashing it again (aiokafka's
    murmur2 is Python; the worker keeps it per key). The fastest way this client produces. Returns
    the futures of the batches' acknowledgements."""
    futs = []
    for tp, rs in batch.items():
        b = p.create_batch()
        for r in rs:
            # aiokafka hands headers over as a tuple; its batch builder takes a list
            if b.append(key=r.key, value=r.value, timestamp=None, headers=list(r.headers)) is None:
                futs.append(await p.send_batch(b, dst, partition=tp.partition))
                b = p.create_batch()
                if b.append(key=r.key, value=r.value, timestamp=None, headers=list(r.headers)) is None:
                    raise ValueError(f"a record for {dst} is larger than the producer's batch size")
        futs.append(await p.send_batch(b, dst, partition=tp.partition))
    return futs


async def same_partition_count(p: Any, src: str, dst: str) -> None:
    """``send_batched`` keeps each record's partition: that is the key's partition only when both
    topics have as many partitions."""
    if len(await p.partitions_for(dst)) != len(await p.partitions_for(src)):
        raise RuntimeError(f"{dst} and {src} need the same number of partitions")


#: how a passthrough produces: "batch" = aiokafka's batch API, as the worker produces (the limit of
#: this client stack); "send" = one ``send()`` per record with aiokafka's partitioner, as most aiokafka
#: applications produce; "send_part" = one ``send()`` per record with the input's partition given;
#: "spec" = the batch API writing what issue 4 asks of any router for each routed message, and no
#: more: the message with the five samex headers to ``dst``, and a decision-record-sized record to
#: ``dst.log`` (``spec_topics``). No decoding, no deciding: the ceiling of a router that meets the
#: issue on this client stack.
PASS_MODES = ("batch", "send", "send_part", "spec")
#: The spec passthrough's headers: the router's five (samex-message-id, -rule, -rules-version, -etapp,
#: -trace-id) with the median byte lengths of the router's on the benchmark's traffic (167 bytes in all).
SPEC_HEADERS = [("samex-message-id", b"m" * 36), ("samex-rule", b"r" * 16), ("samex-rules-version", b"v" * 12),
                ("samex-etapp", b"e" * 17), ("samex-trace-id", b"t" * 16)]
#: The median size of the router's decision records on the benchmark's traffic (437 bytes; 452 for
#: the envelopes), measured with RouterCore on synth_records(20_000, seed=99).
SPEC_DECISION_BYTES = 437


def spec_topics(dst: str) -> list[str]:
    """The topics the spec passthrough writes: the destination and its decision log."""
    return [dst, f"{dst}.log"]


async def send_batched_spec(p: Any, dst: str, batch: dict[Any, list[Any]]) -> list[Any]:
    """``send_batched`` for the spec passthrough: per input record, the record with SPEC_HEADERS to
    ``dst`` and a SPEC_DECISION_BYTES record (the head of its value, a stand-in for the decision
    record) to ``dst.log``, same key and partition."""
    log = spec_topics(dst)[1]
    futs = []
    for tp, rs in batch.items():
        for topic, log_side in ((dst, False), (log, True)):
            b = p.create_batch()
            for r in rs:
                value = r.value[:SPEC_DECISION_BYTES] if log_side else r.value
                headers = [] if log_side else [*r.headers, *SPEC_HEADERS]
                if b.append(key=r.key, value=value, timestamp=None, headers=headers) is None:
                    futs.append(await p.send_batch(b, topic, partition=tp.partition))
                    b = p.create_batch()
                    if b.append(key=r.key, value=value, timestamp=None, headers=headers) is None:
                        raise ValueError(f"a record for {topic} is larger than the producer's batch size")
            futs.append(await p.send_batch(b, topic, partition=tp.partition))
    return futs


async def passthrough(bootstrap: str, src: str, dst: str, n: int, mode: str = "batch") -> dict[str, float]:
    """Consume ``n`` records of ``src`` and produce each to ``dst`` (acks=all, idempotent, the
    worker's linger) as ``mode`` says (PASS_MODES), a batch at a time: wait for every
    acknowledgement, then commit. Returns its CPU use and inbound batches."""
    if mode not in PASS_MODES:
        raise ValueError(f"unknown passthrough mode {mode!r}")
    c = consumer(bootstrap, src, group_id=f"raw-{uuid.uuid4().hex[:6]}", max_partition_fetch_bytes=8 << 20)
    p = raw_producer(bootstrap)
    await c.start()
    await p.start()
    for topic in spec_topics(dst) if mode == "spec" else [dst]:
        await same_partition_count(p, src, topic)
    done = batches = 0
    t0, own0, b0 = time.monotonic(), time.process_time(), broker_cpu()
    try:
        while done < n:
            batch = await c.getmany(timeout_ms=500, max_records=2000)
            batches += bool(batch)
            if mode == "batch":
                futs = await send_batched(p, dst, batch)
            elif mode == "spec":
                futs = await send_batched_spec(p, dst, batch)
            elif mode == "send_part":
                futs = [await p.send(dst, r.value, key=r.key, headers=r.headers, partition=tp.partition)
                        for tp, rs in batch.items() for r in rs]
            else:
                futs = [await p.send(dst, r.value, key=r.key, headers=r.headers) for rs in batch.values() for r in rs]
            await asyncio.gather(*futs)
            await c.commit()
            done += sum(len(rs) for rs in batch.values())
        dt, own = time.monotonic() - t0, time.process_time() - own0
        return {"us_per_msg": own / done * 1e6, "core_share": own / dt, "broker_share": (broker_cpu() - b0) / dt,
                "batches": batches, "mean_batch": done / max(batches, 1)}
    finally:
        await c.stop()
        await p.stop()


PASS_NAMES = {"batch": "raw", "send": "raw send()", "spec": "raw spec"}  # for the CPU and batches lines


async def raw_passthrough(bootstrap: str, src: str, dst: str, n: int, mode: str = "batch") -> float:
    """The passthrough (``passthrough``) as its own process, as the worker is one: neither inherits
    this process's heap (the message lists, the rule engine), which its garbage collector would walk.
    Returns its msg/s; its CPU use goes to LAST_CPU."""
    name = PASS_NAMES[mode]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--raw-run", bootstrap, src, dst, str(n), mode,
        stdout=asyncio.subprocess.PIPE, cwd=REPO)
    try:
        out, _err = await asyncio.wait_for(proc.communicate(), 600)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} passthrough exited with {proc.returncode}")
    stats = json.loads(out.decode().splitlines()[-1])
    LAST_CPU[name] = (stats["us_per_msg"], stats["core_share"], stats["broker_share"])
    LAST_BATCHES[name] = (stats["batches"], stats["mean_batch"])
    count, span = await out_span(bootstrap, [dst], n)
    return count / span


async def wait_routed(bootstrap: str, topic: str, expect: int, pid: int, timeout: float = 300) -> None:
    """Wait until ``topic`` holds ``expect`` records, from its end offsets only (no records read: the
    router's output is read after it finished, as the raw passthrough's is, so that no reader
    competes with it for the CPU), noting the worker's and the broker's CPU from its first decision
    to its last (the worker's start-up left out)."""
    deadline = time.monotonic() + timeout
    first: tuple[int, float, float, float] | None = None
    n = 0
    while time.monotonic() < deadline:
        n = await records_in(bootstrap, topic)
        if n and first is None:
            first = (n, time.monotonic(), cpu_seconds(pid), broker_cpu())
        if n >= expect:
            break
        await asyncio.sleep(0.5)  # each look at the end offsets costs CPU the router needs
    if first is not None and n > first[0]:
        dt = time.monotonic() - first[1]
        w = cpu_seconds(pid) - first[2]
        LAST_CPU["router"] = (w / (n - first[0]) * 1e6, w / dt, (broker_cpu() - first[3]) / dt)


async def router_run(bootstrap: str, values_src: list[dict], run: int,
                     hot_path: str = "batched") -> tuple[float, float, float, float]:
    """(router, raw passthrough with the batch API, raw passthrough with send() per record, the spec
    passthrough), msg/s."""
    prefix = f"bench{run}{hot_path[0]}{uuid.uuid4().hex[:4]}."
    s = topic_settings(bootstrap, prefix)
    from router.rules.engine import Engine
    from router.rules.load import load_rules
    from router.topics import ensure_router_topics

    eng = Engine(load_rules(REPO / "rules"))
    await ensure_router_topics(s, eng.systems, eng.golive_ms)
    await produce_records(bootstrap, s.inbound_topic, values_src)
    # raw passthrough of the very same input records
    # as many partitions as the inbound topic: the batch passthrough keeps each record's partition
    await ensure_topics(bootstrap, [f"{prefix}raw-out", f"{prefix}raw-send-out", *spec_topics(f"{prefix}raw-spec-out")],
                        partitions=s.partitions)
    raw = await raw_passthrough(bootstrap, s.inbound_topic, f"{prefix}raw-out", len(values_src))
    raw_send = await raw_passthrough(bootstrap, s.inbound_topic, f"{prefix}raw-send-out", len(values_src), "send")
    raw_spec = await raw_passthrough(bootstrap, s.inbound_topic, f"{prefix}raw-spec-out", len(values_src), "spec")
    w = WorkerProcess(s, worker_id=f"bench{run}", SAMEX_HOT_PATH=hot_path).start()
    try:
        assert w.proc is not None
        await wait_routed(bootstrap, s.decisions_topic, len(values_src), w.proc.pid)
        with contextlib.suppress(OSError):
            LAST_BATCHES["router"] = batch_stats(w.get("/metrics").decode())
        count, span = await out_span(bootstrap, [s.decisions_topic], len(values_src))
        router = count / span
    finally:
        w.stop()
    return router, raw, raw_send, raw_spec


async def raw_pass_forever(bootstrap: str, src: str, dst: str) -> None:
    """The raw passthrough as its own process, for the latency floor: consume, produce with
    acks=all, wait for the acknowledgements, commit; what the router does minus the routing."""
    c = consumer(bootstrap, src, group_id=f"rawlat-{uuid.uuid4().hex[:6]}", fetch_max_wait_ms=5)
    p = raw_producer(bootstrap)
    await c.start()
    await p.start()
    await same_partition_count(p, src, dst)
    print("ready", flush=True)
    while True:
        batch = await c.getmany(timeout_ms=100, max_records=2000)
        if batch:
            futs = await send_batched(p, dst, batch)
            await asyncio.gather(*futs)
            await c.commit()


async def latency_run(bootstrap: str, run: int, raw: bool = False) -> tuple[float, float, float, float]:
    """p50/p99 at 1,000 msg/s through one worker, or (``raw``) through the raw passthrough process:
    over the LAT_SECONDS after a WARM_SECONDS warm-up at the same rate (steady state), and over all
    of it from the first message (which includes the first writes to every new partition)."""
    prefix = f"lat{run}{'r' if raw else 'w'}{uuid.uuid4().hex[:4]}."
    s = topic_settings(bootstrap, prefix)
    from router.rules.engine import Engine
    from router.rules.load import load_rules
    from router.topics import ensure_router_topics

    eng = Engine(load_rules(REPO / "rules"))
    await ensure_router_topics(s, eng.systems, eng.golive_ms)
    if raw:
        out_topics = [f"{prefix}raw-out"]
        await ensure_topics(bootstrap, out_topics, partitions=s.partitions)
        proc = subprocess.Popen([sys.executable, __file__, "--raw-pass", bootstrap, s.inbound_topic, out_topics[0]],
                                stdout=subprocess.PIPE, cwd=REPO)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        w = None
    else:
        out_topics = [s.out_topic(x) for x in eng.systems]
        w = WorkerProcess(s, worker_id=f"lat{run}").start()
        w.wait_ready()
    await asyncio.sleep(2)
    codec = default_codec()
    c = consumer(bootstrap, *out_topics, group_id=f"{prefix}lat", auto_offset_reset="latest", fetch_max_wait_ms=5)
    await c.start()
    await asyncio.sleep(3)
    samples: list[tuple[int, float]] = []  # (received time, latency)
    recs = synth_records(1000 * (WARM_SECONDS + LAT_SECONDS), seed=run + 10)

    async def collect() -> None:
        while len(samples) < len(recs) * 0.97:
            for rs in (await c.getmany(timeout_ms=100, max_records=5000)).values():
                now = time.time() * 1000
                for r in rs:
                    received = codec.decode(r.value)[1]["received_time_ms"]
                    samples.append((received, now - received))

    task = asyncio.create_task(collect())
    steady_from = time.time() * 1000 + WARM_SECONDS * 1000
    await produce_records(bootstrap, s.inbound_topic, recs, rate=1000, stamp_now=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(task, 30)
    await c.stop()
    if w is not None:
        w.stop()
    else:
        proc.kill()
        proc.wait()
    steady = sorted(lat for received, lat in samples if received >= steady_from)
    everything = sorted(lat for _received, lat in samples)
    return (statistics.median(steady), steady[int(len(steady) * 0.99)],
            statistics.median(everything), everything[int(len(everything) * 0.99)])


def print_cpu() -> None:
    """Where the CPU went in the last router_run: a slow run with the process near a whole core was
    slower per message; one well under it waited (for the broker, or for a core)."""
    parts = [f"{name} {us:.1f} µs/msg at {share:.0%} of a core, broker {broker:.0%}"
             for name, (us, share, broker) in sorted(LAST_CPU.items(), reverse=True)]
    if parts:
        print("  CPU: " + "; ".join(parts), flush=True)
    batches = [f"{name} {n:,} of {mean:,.0f} records on average"
               for name, (n, mean) in sorted(LAST_BATCHES.items(), reverse=True)]
    if batches:
        print("  batches: " + "; ".join(batches), flush=True)
    LAST_CPU.clear()
    LAST_BATCHES.clear()


async def main(bootstrap: str) -> None:
    if True:  # the broker is started outside the event loop (LocalKafka waits synchronously)
        values = synth_records(N, seed=99)
        routers, raws, raw_sends, raw_specs, p50s, p99s = [], [], [], [], [], []
        for run in range(RUNS):
            router, raw, raw_send, raw_spec = await router_run(bootstrap, values, run)
            routers.append(router)
            raws.append(raw)
            raw_sends.append(raw_send)
            raw_specs.append(raw_spec)
            print(f"run {run + 1}: router {router:,.0f} msg/s, raw passthrough {raw:,.0f} msg/s, "
                  f"ratio {router / raw:.2f} (raw with send() per record: {raw_send:,.0f} msg/s, "
                  f"router/that {router / raw_send:.2f}; spec passthrough {raw_spec:,.0f} msg/s, "
                  f"{raw_spec / raw:.2f} of the raw one, router/that {router / raw_spec:.2f})", flush=True)
            print_cpu()
        faust_agent, raw_f, _raw_fs, _raw_fspec = await router_run(bootstrap, values, 99, hot_path="faust-agent")
        print(f"for comparison, faust agent (take_events) hot path: {faust_agent:,.0f} msg/s, "
              f"raw {raw_f:,.0f} msg/s, ratio {faust_agent / raw_f:.2f}", flush=True)
        print_cpu()
        raw50s, raw99s, all99s, rawall99s = [], [], [], []
        for run in range(RUNS):
            p50, p99, _a50, a99 = await latency_run(bootstrap, run)
            p50s.append(p50)
            p99s.append(p99)
            all99s.append(a99)
            r50, r99, _ra50, ra99 = await latency_run(bootstrap, run, raw=True)
            raw50s.append(r50)
            raw99s.append(r99)
            rawall99s.append(ra99)
            print(f"latency run {run + 1} at 1,000 msg/s, {LAT_SECONDS} s after a {WARM_SECONDS} s warm-up: "
                  f"router p50 {p50:.1f} ms, p99 {p99:.1f} ms; raw passthrough p50 {r50:.1f} ms, p99 {r99:.1f} ms "
                  f"(p99 from the first message: router {a99:.1f} ms, raw {ra99:.1f} ms)", flush=True)
        r, w = statistics.median(routers), statistics.median(raws)
        print(json.dumps({"router_msgs_per_s": round(r), "raw_msgs_per_s": round(w),
                          "ratio": round(statistics.median([a / b for a, b in zip(routers, raws, strict=True)]), 3),
                          "raw_send_msgs_per_s": round(statistics.median(raw_sends)),
                          "ratio_to_raw_send": round(statistics.median(
                              [a / b for a, b in zip(routers, raw_sends, strict=True)]), 3),
                          "raw_spec_msgs_per_s": round(statistics.median(raw_specs)),
                          "spec_ratio": round(statistics.median(
                              [a / b for a, b in zip(raw_specs, raws, strict=True)]), 3),
                          "ratio_to_raw_spec": round(statistics.median(
                              [a / b for a, b in zip(routers, raw_specs, strict=True)]), 3),
                          "p50_ms": round(statistics.median(p50s), 1), "p99_ms": round(statistics.median(p99s), 1),
                          "raw_p50_ms": round(statistics.median(raw50s), 1),
                          "raw_p99_ms": round(statistics.median(raw99s), 1),
                          "p99_from_first_message_ms": round(statistics.median(all99s), 1),
                          "raw_p99_from_first_message_ms": round(statistics.median(rawall99s), 1),
                          "messages": N, "runs": RUNS, "broker_log": BROKER_LOG}))


def broker_runs_dir(args: list[str]) -> tuple[Path | None, str]:
    """Where the bench's broker keeps its log: on disk, or on tmpfs with ``--broker-tmpfs``."""
    unknown = [a for a in args if a != "--broker-tmpfs"]
    if unknown:
        sys.exit(f"usage: python bench/throughput.py [--broker-tmpfs]  (unknown: {' '.join(unknown)})")
    if "--broker-tmpfs" not in args:
        return None, "disk"
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        sys.exit("--broker-tmpfs: /dev/shm is missing or not writable")
    runs = shm / "samex-bench-brokers"
    runs.mkdir(exist_ok=True)
    return runs, "tmpfs"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--raw-run"]:
        boot, src, dst, n, mode = sys.argv[2:7]
        print(json.dumps(asyncio.run(passthrough(boot, src, dst, int(n), mode))), flush=True)
        sys.exit(0)
    if sys.argv[1:2] == ["--raw-pass"]:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(raw_pass_forever(*sys.argv[2:5]))
        sys.exit(0)
    runs_dir, BROKER_LOG = broker_runs_dir(sys.argv[1:])
    print(f"broker log on {BROKER_LOG}" + (f" ({runs_dir})" if runs_dir else ""), flush=True)
    with kafka_broker(runs_dir) as broker:
        asyncio.run(main(broker))

"""Worker CPU per message at full load on the real local broker (not a test).

Fills the inbound topic with N envelopes, starts one worker, lets it run WARM seconds, then
measures over the next SPAN seconds: messages decided (from the decisions topic's end offsets),
the worker's and the broker's CPU seconds (from /proc), and the machine's idle share. Worker
settings come from the environment (e.g. SAMEX_GC_YOUNG_THRESHOLD=0), so two settings can be
compared in alternating runs:

    for t in 0 50000 0 50000; do SAMEX_GC_YOUNG_THRESHOLD=$t python bench/worker_cpu.py; done

SAMEX_BENCH_N sets the number of envelopes (250,000), SAMEX_BENCH_PATIENTS the distinct patients
among them (500; each patient is one Kafka key).

Last line: {"msgs_per_s", "worker_us_per_msg", "worker_core_share", "broker_us_per_msg"}. Linux only.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from router.kafkaio import records_in  # noqa: E402
from router.localkafka import kafka_broker  # noqa: E402
from router.rules.engine import Engine  # noqa: E402
from router.rules.load import load_rules  # noqa: E402
from router.topics import ensure_router_topics  # noqa: E402
from tests.kafka_helpers import WorkerProcess, produce_records, synth_records, topic_settings  # noqa: E402

N = int(os.environ.get("SAMEX_BENCH_N", "250000"))
# distinct patients in the traffic: each is one Kafka key, and the worker partitions by key
PATIENTS = int(os.environ.get("SAMEX_BENCH_PATIENTS", "500"))
WARM, SPAN = 6.0, 8.0
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def machine() -> tuple[float, float]:
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(v) / TICK, v[3] / TICK  # all, idle


def broker_pids() -> list[int]:
    """Every Kafka broker process on this machine."""
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if b"kafka.Kafka" in (d / "cmdline").read_bytes():
                found.append(int(d.name))
        except OSError:
            continue
    return found


def broker_pid() -> int:
    pids = broker_pids()
    if not pids:
        raise SystemExit("no broker process found")
    return pids[0]


async def main(bootstrap: str) -> None:
    s = topic_settings(bootstrap, f"cpu{int(time.time())}.")
    eng = Engine(load_rules(REPO / "rules"))
    await ensure_router_topics(s, eng.systems, eng.golive_ms)
    await produce_records(bootstrap, s.inbound_topic, synth_records(N, seed=5, patients=PATIENTS))
    kafka = broker_pid()
    w = WorkerProcess(s, worker_id="cpu").start()
    try:
        await asyncio.sleep(WARM)
        pid = w.proc.pid
        n0, w0, k0, m0, t0 = await records_in(bootstrap, s.decisions_topic), cpu_seconds(pid), cpu_seconds(kafka), \
            machine(), time.monotonic()
        await asyncio.sleep(SPAN)
        n1, w1, k1, m1, t1 = await records_in(bootstrap, s.decisions_topic), cpu_seconds(pid), cpu_seconds(kafka), \
            machine(), time.monotonic()
    finally:
        w.stop()
    n, dt = n1 - n0, t1 - t0
    if n < N // 20:
        raise SystemExit(f"only {n} messages decided in {dt:.1f} s: raise SAMEX_BENCH_N or check the worker log")
    out = {"msgs_per_s": round(n / dt), "worker_us_per_msg": round((w1 - w0) / n * 1e6, 1),
           "worker_core_share": round((w1 - w0) / dt, 2), "broker_us_per_msg": round((k1 - k0) / n * 1e6, 1)}
    print(f"{out['msgs_per_s']:,} msg/s; worker {out['worker_us_per_msg']} µs/msg at {out['worker_core_share']:.0%} "
          f"of a core; broker {out['broker_us_per_msg']} µs/msg; machine idle "
          f"{(m1[1] - m0[1]) / (m1[0] - m0[0]):.0%}")
    print(json.dumps(out))


if __name__ == "__main__":
    with kafka_broker() as broker:
        asyncio.run(main(broker))

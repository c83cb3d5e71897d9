"""MLLP ingest throughput on the real local broker (not a test).

One ``samex connector mllp-in`` process (a separate process, so the senders' CPU is not charged to
the server) writes to a fresh inbound topic with acks=all and answers ``AA`` only after Kafka
acknowledged the write. Senders in this process replay realistic mixed HL7 v2 traffic
(:mod:`connectors.hl7gen`: referrals, lab orders, results, MDM notes; UTF-8 and ISO 8859-1) over
1 and over 10 MLLP connections, each connection sending one message and waiting for its ACK
before the next (the way a real HL7 sender behaves). Every answer must be ``AA`` for its own MSH-10.

Per run and configuration: messages / (seconds from the first send to the last ACK), and the
server process's CPU time per message (user + system, from /proc). The two configurations
alternate within each run, so machine noise hits both alike; a warm-up (not measured) comes first.
After the runs the topic's end offsets must add up to the number of ``AA`` answers (nothing
acknowledged was lost). Last line: ``{"one_conn_msgs_per_s", "ten_conn_msgs_per_s", ...}``, medians
of the runs.

Environment: SAMEX_BENCH_RUNS (3), SAMEX_BENCH_N1 (3000 messages over 1 connection),
SAMEX_BENCH_N10 (8000 over 10), SAMEX_BENCH_WARM (3000), SAMEX_KAFKA_BOOTSTRAP (use an existing
broker), SAMEX_BENCH_PROFILE (write a cProfile of the server process to this file).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from connectors import hl7gen  # noqa: E402
from router.kafkaio import records_in  # noqa: E402
from router.localkafka import kafka_broker  # noqa: E402
from router.synth import load_units  # noqa: E402
from router.topics import ensure_topics  # noqa: E402
from tests.kafka_helpers import free_port, settings_env, topic_settings  # noqa: E402

RUNS = int(os.environ.get("SAMEX_BENCH_RUNS", "3"))
N1 = int(os.environ.get("SAMEX_BENCH_N1", "3000"))
N10 = int(os.environ.get("SAMEX_BENCH_N10", "8000"))
WARM = int(os.environ.get("SAMEX_BENCH_WARM", "3000"))  # not measured: JIT of the broker, first batches
PROFILE = os.environ.get("SAMEX_BENCH_PROFILE")
SAMEX = str(REPO / ".venv" / "bin" / "samex")
END = b"\x1c\r"


class Server:
    """``samex connector mllp-in`` in its own process."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.settings = topic_settings(bootstrap, prefix)
        self.port = free_port()
        self.log = REPO / ".samex" / "bench-logs" / f"{prefix}mllp-in.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        args = [SAMEX, "connector", "mllp-in", "--port", str(self.port),
                "--bootstrap", self.settings.kafka_bootstrap, "--produce-timeout", "15"]
        if PROFILE:
            args = [sys.executable, "-m", "cProfile", "-o", PROFILE, *args]
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(args, env=settings_env(self.settings), stdout=fh, stderr=subprocess.STDOUT,
                                         cwd=REPO, start_new_session=True)
        return self

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: a clean stop (and the profile is written)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def send(port: int, messages: list[hl7gen.GenMessage], connections: int) -> tuple[int, float]:
    """Send ``messages`` round-robin over ``connections`` connections, each waiting for its ACK
    before the next; returns (number of AA answers for the right MSH-10, seconds)."""
    conns = [await asyncio.open_connection("127.0.0.1", port, limit=1 << 20) for _ in range(connections)]
    share = [[(b"\x0b" + m.data + END, b"\rMSA|AA|" + m.msh10.encode() + b"|")
              for m in messages[i::connections]] for i in range(connections)]
    ok = 0

    async def worker(i: int) -> None:
        nonlocal ok
        r, w = conns[i]
        for framed, expect in share[i]:
            w.write(framed)
            ack = await r.readuntil(END)
            if expect not in ack:
                raise AssertionError(f"unexpected answer: {ack[:200]!r}")
            ok += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(connections)))
    seconds = time.perf_counter() - t0
    for _, w in conns:
        w.close()
    return ok, seconds


async def wait_ready(server: Server, warm: list[hl7gen.GenMessage], timeout_s: float = 90) -> None:
    """Until the server listens and answers AA (its producer is connected); then warm it up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.proc is not None
        if server.proc.poll() is not None:
            raise SystemExit(f"mllp-in exited: {server.log.read_text()[-2000:]}")
        try:
            await send(server.port, warm[:1], 1)
            break
        except (OSError, AssertionError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.3)
    else:
        raise SystemExit(f"mllp-in not ready in {timeout_s:g} s: {server.log.read_text()[-2000:]}")
    await send(server.port, warm[1:], 10)


def traffic(n: int, seed: int, prefix: str) -> list[hl7gen.GenMessage]:
    g = hl7gen.traffic(random.Random(seed), load_units(), patients=2000, prefix=prefix)
    return [next(g) for _ in range(n)]


async def main(bootstrap: str) -> None:
    prefix = f"benchmllp{uuid.uuid4().hex[:6]}."
    server = Server(bootstrap, prefix)
    s = server.settings
    await ensure_topics(bootstrap, [s.inbound_topic, s.deadletter_topic], partitions=s.partitions)
    warm = traffic(WARM, 7, "W")
    runs = [(traffic(N1, 100 + r, f"A{r}-"), traffic(N10, 200 + r, f"B{r}-")) for r in range(RUNS)]
    print(f"mllp-in: separate process (samex connector mllp-in), inbound topic with {s.partitions} partitions, "
          f"acks=all; {N1} messages over 1 connection and {N10} over 10 per run, each sender waits for its ACK",
          flush=True)
    server.start()
    ones: list[float] = []
    tens: list[float] = []
    cpu1: list[float] = []  # server CPU microseconds per message
    cpu10: list[float] = []
    acked = len(warm)
    try:
        await wait_ready(server, warm)
        for r, (one_msgs, ten_msgs) in enumerate(runs):
            c0 = server.cpu_s()
            ok1, t1 = await send(server.port, one_msgs, 1)
            c1 = server.cpu_s()
            ok10, t10 = await send(server.port, ten_msgs, 10)
            c10 = server.cpu_s()
            cpu1.append((c1 - c0) / ok1 * 1e6)
            cpu10.append((c10 - c1) / ok10 * 1e6)
            acked += ok1 + ok10
            ones.append(ok1 / t1)
            tens.append(ok10 / t10)
            print(f"run {r + 1}: 1 connection {ones[-1]:,.0f} msg/s ({ok1} AA in {t1:.2f} s, server CPU "
                  f"{cpu1[-1]:,.0f} us/msg), 10 connections {tens[-1]:,.0f} msg/s ({ok10} AA in {t10:.2f} s, "
                  f"server CPU {cpu10[-1]:,.0f} us/msg)", flush=True)
    finally:
        server.stop()
    stored = await records_in(bootstrap, s.inbound_topic)
    print(f"records on the inbound topic: {stored} for {acked} AA answers", flush=True)
    if stored < acked:
        raise SystemExit("fewer records on the topic than AA answers")
    print(json.dumps({"one_conn_msgs_per_s": round(statistics.median(ones)),
                      "ten_conn_msgs_per_s": round(statistics.median(tens)),
                      "runs": RUNS, "one_conn_messages": N1, "ten_conn_messages": N10,
                      "one_conn_runs": [round(x) for x in ones], "ten_conn_runs": [round(x) for x in tens],
                      "server_cpu_us_per_msg_one_conn": round(statistics.median(cpu1)),
                      "server_cpu_us_per_msg_ten_conn": round(statistics.median(cpu10)),
                      "server": "separate process"}))


if __name__ == "__main__":
    with kafka_broker() as broker:  # started outside the event loop (LocalKafka waits synchronously)
        asyncio.run(main(broker))

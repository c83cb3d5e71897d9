"""``samex run``: the whole local stack on one machine, with a live summary.

A real Kafka broker (or the one in ``SAMEX_KAFKA_BOOTSTRAP``), the router worker(s), and the
traffic; every part is a child process in its own process group, so Ctrl-C (or ``--duration``)
stops all of them and the broker by pid. The summary reads the children's ``/metrics`` pages, the
same numbers Prometheus would scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from router.settings import Settings

SAMEX = str(Path(sys.executable).parent / "samex")
ENV_FIELDS = ("kafka_bootstrap", "inbound_topic", "decisions_topic", "deadletter_topic", "deliveries_topic",
              "control_topic", "out_topic_prefix", "park_topic_prefix", "group_id", "state_dir", "rules_dir",
              "log_level", "log_format")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    """One supervised process of the local stack."""

    name: str
    args: list[str]
    metrics_port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def state(self) -> str:
        if self.proc is None:
            return "not started"
        rc = self.proc.poll()
        return "running" if rc is None else f"exited ({rc})"

    def start(self, base_env: dict[str, str], log_dir: Path) -> None:
        self.log = log_dir / f"{self.name}.log"
        env = {**base_env, **self.env}
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.args, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self, timeout_s: float = 15.0) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)

    def log_tail(self, n: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ENV_FIELDS:
        env[f"SAMEX_{name.upper()}"] = str(getattr(settings, name))
    env.update(extra)
    return env


def free_port_block(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports (the MLLP simulators take consecutive ports)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - n)
        ok = True
        for p in range(base, base + n):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise OSError(f"no {n} consecutive free ports")


def plan_children(settings: Settings, workers: int, rate: float, systems: list[str],
                  traffic: str = "protocols", target: str = "millennium") -> list[Child]:
    """The processes of the local stack.

    ``protocols``: senders speak HL7 v2 over MLLP (80 %) and FHIR (20 %) to the inbound connectors;
    every system is an MLLP simulator with its outbound connector; Millennium also has a FHIR
    simulator, so it gets two connectors (HL7 v2 payloads over MLLP, FHIR payloads over FHIR).
    ``envelopes``: synthetic envelopes straight onto the inbound topic, no connectors."""
    kids = []
    for i in range(1, workers + 1):
        port = free_port()
        kids.append(Child(f"worker-{i}", [SAMEX, "worker"], port,
                          {"SAMEX_WEB_PORT": str(port), "SAMEX_WORKER_ID": f"worker-{i}"}))
    kids.append(Child("index", [SAMEX, "index", "run"]))  # keeps `samex trace` current
    if traffic == "envelopes":
        kids.append(Child("traffic", [SAMEX, "simulate", "envelopes", "--rate", str(rate)]))
        return kids
    base = free_port_block(len(systems))
    sim_ports = {s: base + i for i, s in enumerate(systems)}
    kids.append(Child("sim-systems", [SAMEX, "simulate", "systems", "--base-port", str(base),
                                      "--rules", str(settings.rules_dir)]))
    fhir_sim = free_port()
    kids.append(Child("sim-millennium-fhir", [SAMEX, "simulate", "millennium-fhir", "--port", str(fhir_sim)]))
    for system in systems:
        mport = free_port()
        args = [SAMEX, "connector", "mllp-out", "--system", system, "--endpoint", f"127.0.0.1:{sim_ports[system]}",
                "--metrics-port", str(mport)]
        if system == target:
            args += ["--only-format", "hl7v2", "--group", f"samex-out-{system}-mllp"]
        kids.append(Child(f"mllp-out-{system}", args, mport))
    mport = free_port()
    kids.append(Child(f"fhir-out-{target}", [SAMEX, "connector", "fhir-out", "--system", target, "--base",
                                             f"http://127.0.0.1:{fhir_sim}", "--only-format", "fhir_r4_json",
                                             "--group", f"samex-out-{target}-fhir", "--metrics-port", str(mport)],
                      mport))
    mllp_in, mllp_metrics, fhir_in = free_port(), free_port(), free_port()
    kids.append(Child("mllp-in", [SAMEX, "connector", "mllp-in", "--port", str(mllp_in), "--metrics-port",
                                  str(mllp_metrics)], mllp_metrics))
    kids.append(Child("fhir-in", [SAMEX, "connector", "fhir-in", "--port", str(fhir_in)], fhir_in))
    seed = str(int(time.time()))  # new traffic each run (message ids derive from MSH-10 / resource ids)
    kids.append(Child("sender-mllp", [SAMEX, "simulate", "senders", "--port", str(mllp_in), "--rate",
                                      str(rate * 0.8), "--count", str(10**9), "--connections", "4", "--seed", seed]))
    kids.append(Child("sender-fhir", [SAMEX, "simulate", "fhir-sender", "--url", f"http://127.0.0.1:{fhir_in}/fhir",
                                      "--rate", str(max(0.1, rate * 0.2)), "--seed", seed]))
    return kids


# -- the summary ----------------------------------------------------------------------------------
@dataclass
class Snapshot:
    at: float = 0.0
    messages_in: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    routed: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    dead: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    parked: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # waiting (not yet released)
    parked_total: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    deliveries: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    waiting: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    lag: float = 0.0
    versions: set[str] = field(default_factory=set)
    etapp_states: dict[str, str] = field(default_factory=dict)
    etapp_live: dict[str, bool] = field(default_factory=dict)
    lag_partitions: set[tuple[str, str]] = field(default_factory=set)

    @property
    def total_in(self) -> float:
        return sum(self.messages_in.values())


def scrape(port: int, timeout_s: float = 1.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
        return r.read().decode()  # type: ignore[no-any-return]


def fold(snap: Snapshot, text: str, router: bool = True) -> None:
    """Add one process's metrics page to the snapshot (messages in are counted by the routers only)."""
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            lb, v = s.labels, s.value
            if s.name == "samex_messages_in_total" and router:
                snap.messages_in[lb.get("kind", "?")] += v
            elif s.name == "samex_routed_total":
                snap.routed[lb["destination"]] += v
            elif s.name == "samex_dead_letters_total":
                snap.dead[f"{lb['reason']} ({lb['stage']})"] += v
            elif s.name == "samex_parked_messages":
                snap.parked[lb["etapp"]] += v
            elif s.name == "samex_parked_total":
                snap.parked_total[lb["etapp"]] += v
            elif s.name == "samex_deliveries_total":
                snap.deliveries[(lb["system"], lb["outcome"])] += v
            elif s.name == "samex_outbound_lag":
                snap.waiting[lb["system"]] += v
            elif s.name == "samex_consumer_lag":
                snap.lag += v
                snap.lag_partitions.add((lb["topic"], lb["partition"]))
            elif s.name == "samex_rules_info" and v == 1:
                snap.versions.add(lb["version"])
            elif s.name == "samex_etapp_state" and v == 1:
                snap.etapp_states[lb["etapp"]] = lb["state"]
            elif s.name == "samex_etapp_live":
                snap.etapp_live[lb["etapp"]] = v == 1


def take_snapshot(children: list[Child]) -> Snapshot:
    snap = Snapshot(at=time.time())
    for c in children:
        if c.metrics_port and c.state == "running":
            with contextlib.suppress(OSError, ValueError):
                fold(snap, scrape(c.metrics_port), router=c.name.startswith("worker"))
    return snap


def render(snap: Snapshot, prev: Snapshot | None, children: list[Child], bootstrap: str) -> Any:
    from rich.console import Group
    from rich.table import Table

    rate = 0.0
    if prev is not None and snap.at > prev.at:
        rate = max(0.0, (snap.total_in - prev.total_in) / (snap.at - prev.at))
    head = Table.grid(padding=(0, 2))
    head.add_row("broker", bootstrap, "rules", ", ".join(sorted(v[:12] for v in snap.versions)) or "-")
    head.add_row("in", f"{snap.total_in:,.0f} ({rate:,.0f}/s)", "router lag", f"{snap.lag:,.0f}")
    routed = Table(title="routed per destination", show_edge=False)
    routed.add_column("destination")
    routed.add_column("routed", justify="right")
    routed.add_column("delivered", justify="right")
    routed.add_column("waiting", justify="right")
    systems = sorted({*snap.routed, *(s for s, _ in snap.deliveries), *snap.waiting})
    for s in systems:
        acked = snap.deliveries.get((s, "acknowledged"), 0.0)
        routed.add_row(s, f"{snap.routed.get(s, 0):,.0f}", f"{acked:,.0f}" if (s, "acknowledged") in snap.deliveries
                       else "-", f"{snap.waiting[s]:,.0f}" if s in snap.waiting else "-")
    side = Table(title="dead letters / parked / etapper", show_edge=False)
    side.add_column("what")
    side.add_column("count", justify="right")
    for reason, n in sorted(snap.dead.items()):
        side.add_row(f"dead letter: {reason}", f"{n:,.0f}")
    for etapp in sorted({*snap.parked, *snap.parked_total}):
        side.add_row(f"parked: {etapp}", f"{snap.parked_total.get(etapp, 0):,.0f} "
                     f"({snap.parked.get(etapp, 0):,.0f} waiting)")
    for etapp in sorted(snap.etapp_states):
        side.add_row(f"{etapp}", etapp_label(snap, etapp))
    procs = Table(title="processes", show_edge=False)
    for col in ("name", "pid", "state", "metrics"):
        procs.add_column(col)
    for c in children:
        procs.add_row(c.name, str(c.proc.pid if c.proc else "-"), c.state,
                      f"http://127.0.0.1:{c.metrics_port}/metrics" if c.metrics_port else "")
    return Group(head, routed, side, procs)


def etapp_label(snap: Snapshot, etapp: str) -> str:
    """The etapp's state in force, and how it routes: "scheduled, live", "hold", "paused, not live"."""
    state = snap.etapp_states.get(etapp, "?")
    live = snap.etapp_live.get(etapp)
    if live is None or state in ("hold", "live"):
        return state
    return f"{state}, {'live' if live else 'not live'}"


def plain_summary(snap: Snapshot) -> str:
    """One line for logs and pipes: counts, then the etapper; systems with nothing delivered are left out."""
    parts = [f"in={snap.total_in:.0f}"]
    parts += [f"routed[{k}]={v:.0f}" for k, v in sorted(snap.routed.items())]
    parts += [f"delivered[{s}]={v:.0f}" for (s, o), v in sorted(snap.deliveries.items()) if o == "acknowledged" and v]
    parts += [f"dead[{k}]={v:.0f}" for k, v in sorted(snap.dead.items())]
    parts += [f"parked[{k}]={v:.0f}" for k, v in sorted(snap.parked_total.items()) if v]
    parts += [f"parked_waiting[{k}]={v:.0f}" for k, v in sorted(snap.parked.items()) if v]
    parts += [f"waiting[{k}]={v:.0f}" for k, v in sorted(snap.waiting.items()) if v]
    parts += [f"etapp[{k}]={etapp_label(snap, k).replace(', ', '/')}" for k in sorted(snap.etapp_states)]
    parts.append(f"rules={','.join(sorted(v[:12] for v in snap.versions)) or '-'}")
    return " ".join(parts)


def is_traffic(c: Child) -> bool:
    return c.name.startswith(("traffic", "sender"))


def wait_ready(children: list[Child], inbound_topic: str, partitions: int, timeout_s: float = 90.0,
               stopping: Callable[[], bool] = lambda: False) -> str | None:
    """Wait until the workers have read the control topic and own every inbound partition between
    them, so that the first messages do not wait for the consumer group to form. None when they do,
    else why not."""
    workers = [c for c in children if c.name.startswith("worker") and c.metrics_port]
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end and not stopping():
        if any(c.proc is None or c.proc.poll() is not None for c in workers):
            return "a worker exited"  # the main loop reports it with its log
        ready = 0
        owned: set[tuple[str, str]] = set()
        for c in workers:
            port = c.metrics_port or 0
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1.0) as r:
                    ready += bool(json.loads(r.read()).get("caught_up"))
                snap = Snapshot()
                fold(snap, scrape(port))
                owned |= {p for p in snap.lag_partitions if p[0] == inbound_topic}
        if ready == len(workers) and len(owned) >= partitions:
            return None
        time.sleep(0.5)
    return "stopped" if stopping() else f"the workers are not ready after {timeout_s:.0f} s"


# -- the run --------------------------------------------------------------------------------------
def run_stack(settings: Settings, workers: int, rate: float, duration: float | None,
              echo: Callable[[str], None], live: bool, traffic: str = "protocols") -> int:
    from router.localkafka import LocalKafka, broker_from_env
    from router.rules.engine import Engine
    from router.rules.load import load_rules
    from router.topics import ensure_router_topics

    engine = Engine(load_rules(settings.rules_dir))
    broker: LocalKafka | None = None
    bootstrap = broker_from_env()
    if bootstrap is None:
        echo("starting a local Kafka broker (first run fetches the jars with Maven) …")
        broker = LocalKafka().start()
        bootstrap = broker.bootstrap
    settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if broker is not None:
        # A fresh broker starts its offsets at zero: the dedup stores and the trace index (which
        # keeps Kafka positions) of an earlier run would be wrong for it, so each run gets its own.
        run_dir = Path(settings.state_dir) / "runs" / stamp
        settings = settings.model_copy(update={"state_dir": run_dir / "state"})
        log_dir = run_dir / "logs"
    else:
        log_dir = Path(settings.state_dir) / "run-logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    children = plan_children(settings, workers, rate, list(engine.systems), traffic, engine.target)
    stopping = False

    def _stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    old = signal.signal(signal.SIGINT, _stop), signal.signal(signal.SIGTERM, _stop)
    final = Snapshot()
    try:
        asyncio.run(ensure_router_topics(settings, engine.systems, engine.golive_ms))
        env = child_env(settings)
        # Traffic starts once the workers own every inbound partition: messages sent earlier would
        # wait for the consumer group to form, and their end-to-end times would show it.
        for c in [c for c in children if not is_traffic(c)]:
            c.start(env, log_dir)
            where = f", metrics http://127.0.0.1:{c.metrics_port}/metrics" if c.metrics_port else ""
            echo(f"started {c.name} pid {c.proc.pid if c.proc else '?'}{where}")
        echo("waiting for the workers to own the inbound partitions …")
        not_ready = wait_ready(children, settings.inbound_topic, settings.partitions, stopping=lambda: stopping)
        if not_ready and not stopping:
            echo(f"{not_ready}; starting the traffic anyway (see the worker logs in {log_dir})")
        for c in [c for c in children if is_traffic(c)]:
            if stopping:
                break
            c.start(env, log_dir)
            echo(f"started {c.name} pid {c.proc.pid if c.proc else '?'}")
        echo(f"broker {bootstrap}; logs in {log_dir}; Ctrl-C stops everything")
        echo(f"other samex commands against this stack: export SAMEX_KAFKA_BOOTSTRAP={bootstrap} "
             f"SAMEX_STATE_DIR={settings.state_dir}")
        t_end = time.monotonic() + duration if duration else None
        prev: Snapshot | None = None
        last_print = 0.0
        ctx: Any = contextlib.nullcontext()
        if live:
            from rich.live import Live

            ctx = Live(render(Snapshot(), None, children, bootstrap), refresh_per_second=2, transient=False)
        with ctx as lv:
            while not stopping and (t_end is None or time.monotonic() < t_end):
                time.sleep(0.5)
                snap = take_snapshot(children)
                if snap.versions or snap.total_in:
                    final = snap
                if live:
                    lv.update(render(snap, prev, children, bootstrap))
                elif time.monotonic() - last_print > 5:
                    echo(plain_summary(snap))
                    last_print = time.monotonic()
                prev = snap
                dead = [c for c in children if c.proc is not None and c.proc.poll() not in (None, 0)]
                for c in dead:
                    echo(f"{c.name} exited with {c.proc.returncode if c.proc else '?'}:\n{c.log_tail()}")
                    c.proc = None
        echo("stopping …")
        # Traffic first, then give the workers a moment to drain what was sent.
        for c in children:
            if is_traffic(c):
                c.stop()
        time.sleep(2)
        snap = take_snapshot(children)
        if snap.versions or snap.total_in:
            final = snap
        echo("summary: " + plain_summary(final))
        return 0
    finally:
        for c in reversed(children):
            c.stop()
        if broker is not None:
            broker.stop()
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])


async def produce_envelopes(settings: Settings, rate: float, count: int | None, seed: int,
                            bad_share: float) -> int:
    """Synthetic envelopes straight onto the inbound topic (no protocol), at ``rate`` per second."""
    from router.codec import default_codec
    from router.identifiers import patient_key
    from router.kafkaio import producer
    from router.synth import load_units, traffic

    codec = default_codec()
    rng = random.Random(seed)
    units = load_units()
    prod = producer(settings.kafka_bootstrap)
    await prod.start()
    sent = 0
    try:
        gen = traffic(rng, units, int(time.time() * 1000), bad_share=bad_share)
        t0 = time.monotonic()
        while count is None or sent < count:
            rec = next(gen)
            now = int(time.time() * 1000)
            rec["received_time_ms"] = rec["event_time_ms"] = now
            k = patient_key(rec["patient"]["id"], settings.patient_key_bytes).encode()
            await prod.send(settings.inbound_topic, codec.encode("envelope", rec), key=k)
            sent += 1
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await prod.flush()
    finally:
        await prod.stop()
    return sent

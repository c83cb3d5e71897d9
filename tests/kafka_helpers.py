"""Helpers for real-Kafka tests: produce synthetic envelopes, read topics, run worker processes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from router.codec import default_codec
from router.envelope import record_key
from router.kafkaio import consumer, producer
from router.settings import DEV_PATIENT_KEY, Settings
from router.synth import load_units, traffic

REPO = Path(__file__).resolve().parent.parent
SAMEX = str(Path(sys.executable).parent / "samex")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def topic_settings(bootstrap: str, prefix: str, **extra: Any) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        inbound_topic=f"{prefix}in",
        decisions_topic=f"{prefix}decisions",
        deadletter_topic=f"{prefix}deadletter",
        deliveries_topic=f"{prefix}deliveries",
        control_topic=f"{prefix}control",
        out_topic_prefix=f"{prefix}out.",
        park_topic_prefix=f"{prefix}park.",
        group_id=f"{prefix}router",
        **extra,
    )


def settings_env(s: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("kafka_bootstrap", "inbound_topic", "decisions_topic", "deadletter_topic", "deliveries_topic",
                 "control_topic", "out_topic_prefix", "park_topic_prefix", "group_id"):
        env[f"SAMEX_{name.upper()}"] = str(getattr(s, name))
    env["SAMEX_LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


def synth_records(n: int, seed: int = 1, patients: int = 500, now_ms: int | None = None,
                  bad_share: float = 0.0) -> list[dict]:
    gen = traffic(random.Random(seed), load_units(), now_ms or int(time.time() * 1000), patients=patients,
                  bad_share=bad_share)
    return [next(gen) for _ in range(n)]


async def produce_records(bootstrap: str, topic: str, records: list[dict], rate: float | None = None,
                          stamp_now: bool = False, catch_up: bool = True) -> list[bytes]:
    """Encode and produce ``records`` (at most ``rate`` per second). With ``catch_up=False`` time
    the event loop spent elsewhere is not made up by a burst: the traffic simply pauses."""
    codec = default_codec()
    p = producer(bootstrap)
    await p.start()
    values = []
    try:
        futs = []
        t0 = time.monotonic()
        for i, rec in enumerate(records):
            if stamp_now:
                rec = {**rec, "received_time_ms": int(time.time() * 1000)}
            v = codec.encode("envelope", rec)
            values.append(v)
            futs.append(await p.send(topic, v, key=record_key(rec, DEV_PATIENT_KEY.encode())))
            if rate:
                ahead = (i + 1) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
                elif not catch_up and ahead < -0.05:
                    t0 = time.monotonic() - (i + 1) / rate
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    return values


async def produce_raw(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    p = producer(bootstrap)
    await p.start()
    try:
        futs = [await p.send(topic, v, key=k) for k, v in items]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def read_topic(bootstrap: str, topic: str, expect: int | None = None, timeout_s: float = 60.0,
                     idle_s: float = 3.0) -> list[Any]:
    """All records of a topic (every partition, from the beginning, read_committed)."""
    c = consumer(bootstrap, group_id=None)
    await c.start()
    out: list[Any] = []
    try:
        parts = None
        deadline = time.monotonic() + timeout_s
        while parts is None and time.monotonic() < deadline:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic)
            if parts is None:
                await asyncio.sleep(0.2)
        if not parts:
            return out
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=300, max_records=20000)
            got = sum(len(v) for v in batch.values())
            for recs in batch.values():
                out.extend(recs)
            if got:
                last = time.monotonic()
            if expect is not None and len(out) >= expect and time.monotonic() - last > 0.5:
                break
            if expect is None and time.monotonic() - last > idle_s:
                break
    finally:
        await c.stop()
    return out


def header(rec: Any, name: str) -> str | None:
    for k, v in rec.headers or ():
        if k == name:
            return bytes(v).decode()
    return None


async def topics_with_prefix(bootstrap: str, prefix: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(prefix))
    finally:
        await admin.close()


class WorkerProcess:
    """A `samex worker` subprocess with its own web port."""

    def __init__(self, s: Settings, worker_id: str = "w1", rules: Path | None = None, **env: str) -> None:
        self.settings, self.worker_id = s, worker_id
        self.port = free_port()
        self.rules = rules
        self.env = settings_env(s, SAMEX_WEB_PORT=str(self.port), SAMEX_WORKER_ID=worker_id, **env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = REPO / ".samex" / "test-logs" / f"{s.group_id}{worker_id}.log"

    def start(self) -> WorkerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        args = [SAMEX, "worker"] + (["--rules", str(self.rules)] if self.rules else [])
        fh = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, env=self.env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                                     start_new_session=True)
        fh.close()
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                    if b'"caught_up":true' in r.read():
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout_s}s: {self.log_tail()}")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return r.read()  # type: ignore[no-any-return]

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def group_by_key(records: list[Any]) -> dict[bytes, list[Any]]:
    out: dict[bytes, list[Any]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        out[r.key].append(r)
    return out


async def group_assignment(bootstrap: str, group_id: str, topic: str) -> tuple[str, dict[str, set[int]]]:
    """(group state, {client id: partitions of ``topic``}) from the group coordinator (DescribeGroups):
    the assignment as the broker knows it, not as any member reports it."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.group import MemberAssignment

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    group = response.to_object()["groups"][0]
    members: dict[str, set[int]] = {}
    for m in group["members"]:
        parts: set[int] = set()
        if m["member_assignment"]:
            for t, ps in MemberAssignment.decode(m["member_assignment"]).assignment:
                if t == topic:
                    parts.update(ps)
        members[m["client_id"]] = parts
    return group["state"], members


async def wait_stable_assignment(bootstrap: str, group_id: str, topic: str, clients: set[str],
                                 timeout_s: float = 60) -> dict[str, set[int]]:
    """Wait until the group is Stable with exactly ``clients`` as members, each holding partitions
    of ``topic``; return the assignment."""
    deadline = time.monotonic() + timeout_s
    state, members = "", {}
    while time.monotonic() < deadline:
        state, members = await group_assignment(bootstrap, group_id, topic)
        if state == "Stable" and set(members) == clients and all(members.values()):
            return members
        await asyncio.sleep(0.3)
    raise AssertionError(f"group {group_id} not stable with {sorted(clients)}: {state} {members}")

"""Simulated legacy systems (and Millennium's MLLP side): MLLP endpoints that record what they get.

Each :class:`SimMllp` answers every frame with an ACK and records the reception (system, MSH-10,
samex message id as mapped from the HL7, patient hash, answer, whether it is a repeat of a
message it already accepted). Like a real HL7 receiver with duplicate detection it still answers
``AA`` to a repeat, but marks it ``duplicate``. It can be told to be slow, to answer ``AE``/``AR``
for a time window or a fraction of messages, or to drop connections without answering.

:func:`send_traffic` is the sender side: HL7 from :mod:`connectors.hl7gen` over N connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from connectors.hl7v2 import Hl7Error, build_ack, header_of, map_hl7, parse_ack
from connectors.mllp import FrameReader, MllpClient, MllpError, frame
from router.settings import DEV_PATIENT_KEY


@dataclass
class Behaviour:
    delay_s: float = 0.0
    ae_fraction: float = 0.0
    ar_fraction: float = 0.0
    drop_fraction: float = 0.0
    ar_until: float = 0.0  # time.monotonic() deadline: answer AR to everything until then
    ae_until: float = 0.0
    drop_until: float = 0.0


@dataclass
class SimMllp:
    system: str
    behaviour: Behaviour = field(default_factory=Behaviour)
    record_path: Path | None = None
    secret: bytes = DEV_PATIENT_KEY.encode()
    seed: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._accepted: set[str] = set()
        self._server: asyncio.Server | None = None
        self._fh: Any = None
        self._conns: set[asyncio.Task[Any]] = set()
        self.port: int | None = None

    # ---- control -------------------------------------------------------------------------

    def answer_ar_for(self, seconds: float) -> None:
        self.behaviour.ar_until = time.monotonic() + seconds

    def answer_ae_for(self, seconds: float) -> None:
        self.behaviour.ae_until = time.monotonic() + seconds

    def drop_for(self, seconds: float) -> None:
        self.behaviour.drop_until = time.monotonic() + seconds

    def accepted(self) -> list[dict[str, Any]]:
        """Receptions answered AA that were not repeats, in arrival order."""
        return [r for r in self.received if r["ack"] == "AA" and not r["duplicate"]]

    # ---- server --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self.record_path is not None:
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.record_path.open("ab")
        self._server = await asyncio.start_server(self._serve, host, port, limit=1 << 20)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _decide(self) -> str:
        b, now = self.behaviour, time.monotonic()
        if now < b.drop_until or (b.drop_fraction and self._rng.random() < b.drop_fraction):
            return "drop"
        if now < b.ar_until or (b.ar_fraction and self._rng.random() < b.ar_fraction):
            return "AR"
        if now < b.ae_until or (b.ae_fraction and self._rng.random() < b.ae_fraction):
            return "AE"
        return "AA"

    def _record(self, data: bytes, answer: str) -> dict[str, Any]:
        header = header_of(data)
        mid = pkey = kind = None
        try:
            env = map_hl7(data, source=f"sim:{self.system}")
            mid, pkey, kind = env.message_id, env.key(self.secret).decode(), env.kind
        except Hl7Error:
            pass
        ident = mid or f"msh10:{header.sending_facility}|{header.control_id}"
        duplicate = answer == "AA" and ident in self._accepted
        if answer == "AA":
            self._accepted.add(ident)
        entry = {"system": self.system, "message_id": mid, "msh10": header.control_id, "patient_key": pkey,
                 "kind": kind, "ack": answer, "duplicate": duplicate, "at_ms": int(time.time() * 1000)}
        self.received.append(entry)
        if self._fh is not None:
            self._fh.write(orjson.dumps(entry) + b"\n")
            self._fh.flush()
        return entry

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        fr = FrameReader(reader)
        try:
            while True:
                got = await fr.read()
                if got is None:
                    return
                if not isinstance(got, bytes):
                    writer.write(frame(build_ack(header_of(b""), "AR", "broken or oversized frame")))
                    await writer.drain()
                    continue
                answer = self._decide()
                if self.behaviour.delay_s:
                    await asyncio.sleep(self.behaviour.delay_s)
                if answer == "drop":
                    self._record(got, "drop")
                    return
                if not got.lstrip().startswith(b"MSH"):
                    answer = "AE"
                self._record(got, answer)
                text = {"AA": "", "AE": f"{self.system}: message rejected (simulated)",
                        "AR": f"{self.system}: busy, try again (simulated)"}[answer]
                writer.write(frame(build_ack(header_of(got), answer, text, app=self.system.upper())))  # type: ignore[arg-type]
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            return
        finally:
            writer.close()
            self._conns.discard(task)


async def start_systems(systems: Iterable[str], host: str = "127.0.0.1", base_port: int = 0,
                        record_dir: Path | None = None, behaviour: dict[str, Behaviour] | None = None) -> dict[
                            str, SimMllp]:
    """One simulator per system; ports base_port, base_port+1, … (0 = any free port)."""
    sims: dict[str, SimMllp] = {}
    for i, system in enumerate(systems):
        sim = SimMllp(system, (behaviour or {}).get(system, Behaviour()),
                      record_dir / f"{system}.jsonl" if record_dir else None, seed=i)
        await sim.start(host, base_port + i if base_port else 0)
        sims[system] = sim
    return sims


# ---- senders -------------------------------------------------------------------------------


@dataclass
class SendStats:
    sent: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    retries: int = 0


async def _send_one(client: MllpClient, data: bytes, stats: SendStats, timeout_s: float, retry: bool) -> str:
    delay = 0.1
    attempts = 0
    while True:
        try:
            code = parse_ack(await client.request(data, timeout_s)).code
        except (MllpError, Hl7Error):
            code = "no_answer"
        stats.answers[code] = stats.answers.get(code, 0) + 1
        if code == "AA" or code == "AE" or not retry:
            return code
        attempts += 1
        if attempts in (5, 50) or attempts % 500 == 0:  # a sender that retries for ever must say so
            logging.getLogger("samex.sim").warning(
                "%s:%d answered %s %d times for one message; still retrying (Ctrl-C stops)",
                client.host, client.port, code, attempts)
        stats.retries += 1
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def send_traffic(host: str, port: int, messages: Iterable[Any], *, connections: int = 4,
                       rate: float | None = None, timeout_s: float = 30.0, retry: bool = True,
                       route: Any = None) -> SendStats:
    """Send ``messages`` (bytes, or objects with ``.data``) over ``connections`` MLLP connections, each
    waiting for its ACK before the next (AR / no answer: resent with backoff when ``retry``).
    ``route(message) -> connection index`` keeps e.g. a patient on one connection (per-patient order)."""
    stats = SendStats()
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue(1000) for _ in range(connections)]

    async def worker(i: int) -> None:
        client = MllpClient(host, port)
        try:
            while True:
                m = await queues[i].get()
                if m is None:
                    return
                data = m if isinstance(m, bytes) else m.data
                await _send_one(client, data, stats, timeout_s, retry)
        finally:
            await client.close()

    tasks = [asyncio.create_task(worker(i)) for i in range(connections)]
    t0 = time.monotonic()
    try:
        for n, m in enumerate(messages):
            i = route(m) % connections if route is not None else n % connections
            await queues[i].put(m)
            stats.sent += 1
            if rate:
                ahead = (n + 1) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        for q in queues:
            await q.put(None)
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
    return stats

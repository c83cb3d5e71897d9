"""The compacted control topic: published rule sets, etapp state changes, replay audits.

Keys: ``rules`` (latest rule set wins under compaction), ``etapp:<id>:<at_ms>`` (every change is
kept as an audit record), ``replay:<id>``. Every worker reads the whole topic without a consumer
group, so each one sees every record, and applies it within one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from router.codec import Codec, default_codec
from router.errors import CodecError, RulesError, SamexError
from router.kafkaio import consumer, producer
from router.rules.analysis import check_rules
from router.rules.engine import Engine
from router.rules.load import parse_rules, version_of
from router.settings import Settings
from router.worker.states import EtappChange, StateBook

log = logging.getLogger("samex.control")


def who_am_i() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def rules_record(texts: dict[str, str], who: str, why: str | None) -> dict[str, Any]:
    return {"type": "rules", "at_ms": int(time.time() * 1000), "who": who, "why": why,
            "rules_version": version_of(texts), "rules_files": dict(texts), "etapp": None, "state": None,
            "effective_ms": None, "detail": None}


def etapp_record(etapp: str, state: str, effective_ms: int, who: str, why: str,
                 hold_until_ms: int | None = None) -> dict[str, Any]:
    return {"type": "etapp_state", "at_ms": int(time.time() * 1000), "who": who, "why": why,
            "rules_version": None, "rules_files": None, "etapp": etapp, "state": state,
            "effective_ms": effective_ms, "detail": json.dumps({"hold_until_ms": hold_until_ms})}


def replay_record(replay_id: str, who: str, why: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {"type": "replay", "at_ms": int(time.time() * 1000), "who": who, "why": why, "rules_version": None,
            "rules_files": None, "etapp": None, "state": None, "effective_ms": None,
            "detail": json.dumps({"replay_id": replay_id, **detail})}


def control_key(record: dict[str, Any]) -> bytes:
    if record["type"] == "rules":
        # one key per version: compaction keeps every published set (replay re-decides under the
        # set that was in force); the last record on the topic is the active one
        return f"rules:{record['rules_version']}".encode()
    if record["type"] == "etapp_state":
        return f"etapp:{record['etapp']}:{record['at_ms']}".encode()
    return f"replay:{json.loads(record['detail'])['replay_id']}".encode()


def validate_texts(texts: dict[str, str], label_root: str = "rules") -> tuple[Engine | None, list[str]]:
    rules, problems = parse_rules(texts, label_root)
    if rules is None or problems:
        return None, problems or ["unusable rule set"]
    problems = check_rules(rules, label_root)
    if problems:
        return None, problems
    return Engine(rules), []


async def publish(settings: Settings, record: dict[str, Any], codec: Codec | None = None) -> None:
    codec = codec or default_codec()
    p = producer(settings.kafka_bootstrap)
    await p.start()
    try:
        await (await p.send(settings.control_topic, codec.encode("control", record), key=control_key(record)))
    finally:
        await p.stop()


class ControlState:
    """What the control topic says: the active engine and the etapp states. Refuses bad rule sets."""

    def __init__(self, engine: Engine, on_rules: Callable[[Engine], None] | None = None,
                 on_refused: Callable[[str, list[str]], None] | None = None,
                 on_etapp: Callable[[EtappChange], None] | None = None) -> None:
        self.engine = engine
        self.states = StateBook()
        self.on_rules, self.on_refused, self.on_etapp = on_rules, on_refused, on_etapp
        self.replays: list[dict[str, Any]] = []
        self.applied = 0

    def apply_bytes(self, value: bytes | None, codec: Codec) -> None:
        if value is None:
            return
        try:
            record = codec.decode_as("control", value)
        except CodecError as exc:
            self._refuse("not_a_control_record", [f"control record does not decode: {exc}"])
            return
        self.apply(record)

    def apply(self, record: dict[str, Any]) -> None:
        self.applied += 1
        if record["type"] == "rules":
            texts = record.get("rules_files") or {}
            if record.get("rules_version") == self.engine.version:
                return
            engine, problems = validate_texts(texts)
            if engine is None:
                self._refuse("invalid_rules", problems)
                return
            self.engine = engine
            log.info("rules switched", extra={"rules_version": engine.version, "who": record.get("who")})
            if self.on_rules:
                self.on_rules(engine)
        elif record["type"] == "etapp_state":
            detail = json.loads(record.get("detail") or "{}")
            change = EtappChange(record["etapp"], record["state"], int(record["effective_ms"]), record["at_ms"],
                                 record["who"], record.get("why") or "", detail.get("hold_until_ms"))
            self.states.apply(change)
            if self.on_etapp:
                self.on_etapp(change)
        elif record["type"] == "replay":
            self.replays.append(record)

    def _refuse(self, reason: str, problems: list[str]) -> None:
        log.error("rule set refused; the previous set stays active",
                  extra={"reason": reason, "problems": problems[:5], "rules_version": self.engine.version})
        if self.on_refused:
            self.on_refused(reason, problems)


async def follow_control(settings: Settings, state: ControlState, stop: asyncio.Event,
                         caught_up: asyncio.Event | None = None, codec: Codec | None = None,
                         poll_ms: int = 100) -> None:
    """Read the control topic from the beginning and keep applying new records until ``stop``."""
    codec = codec or default_codec()
    c = consumer(settings.kafka_bootstrap, group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(settings.control_topic, 0)]  # created with one partition (router.topics)
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        while not stop.is_set():
            batch = await c.getmany(timeout_ms=poll_ms, max_records=500)
            for recs in batch.values():
                for r in recs:
                    try:
                        state.apply_bytes(r.value, codec)
                    except SamexError as exc:  # never let a control record stop the worker
                        log.error("control record failed", extra={"error": str(exc)})
            if caught_up is not None and not caught_up.is_set():
                positions = {tp: await c.position(tp) for tp in tps}
                if all(positions[tp] >= end[tp] for tp in tps):
                    caught_up.set()
    finally:
        with contextlib.suppress(Exception):
            await c.stop()


def check_publishable(texts: dict[str, str], label_root: str = "rules") -> list[str]:
    """Problems of a rule set before it is published; ``label_root`` names its folder in them."""
    _engine, problems = validate_texts(texts, label_root)
    return problems


__all__ = ["ControlState", "RulesError", "check_publishable", "etapp_record", "follow_control", "publish",
           "replay_record", "rules_record", "who_am_i"]

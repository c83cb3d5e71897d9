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
from router.errors import CodecError, RulesError
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
    if not isinstance(texts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in texts.items()):
        return None, ["the rule set's files are not a mapping of file names to texts"]
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
    """What the control topic says: the active engine and the etapp states. Refuses bad records.

    No record can stop a worker: one that does not decode, a rule set that fails validation, an
    etapp change with a missing or wrong field are each refused with a log line that says which
    record and why, and ``on_refused`` (the worker's ``samex_rules_refused_total{reason}``). The
    topic is compacted and read from the start at every start-up, so a refused record is met
    again then: while ``live`` is False (catching up) it is logged as old news and not counted,
    so that a restart does not raise the alert again for a record refused long ago."""

    def __init__(self, engine: Engine, on_rules: Callable[[Engine], None] | None = None,
                 on_refused: Callable[[str, list[str]], None] | None = None) -> None:
        self.engine = engine
        self.states = StateBook()
        self.on_rules, self.on_refused = on_rules, on_refused
        self.replays: list[dict[str, Any]] = []
        self.applied = 0
        self.live = True  # follow_control sets it False while it reads what was there at start-up

    def apply_bytes(self, value: bytes | None, codec: Codec, offset: int | None = None) -> None:
        if value is None:
            return
        try:
            record = codec.decode_as("control", value)
        except CodecError as exc:
            self._refuse("not_a_control_record", [f"control record does not decode: {exc}"], offset)
            return
        self.apply(record, offset)

    def apply(self, record: dict[str, Any], offset: int | None = None) -> None:
        self.applied += 1
        try:
            kind = record.get("type")
            if kind == "rules":
                self._apply_rules(record, offset)
            elif kind == "etapp_state":
                self.states.apply(etapp_change(record, self.engine))
            elif kind == "replay":
                self.replays.append(record)
        except ControlRecordError as exc:
            self._refuse(exc.reason, [str(exc)], offset, record)
        except Exception as exc:  # never let a control record stop the worker
            self._refuse("invalid_control_record", [f"{type(exc).__name__}: {exc}"], offset, record)

    def _apply_rules(self, record: dict[str, Any], offset: int | None) -> None:
        texts = record.get("rules_files") or {}
        if record.get("rules_version") == self.engine.version:
            return
        engine, problems = validate_texts(texts)
        if engine is None:
            self._refuse("invalid_rules", problems, offset, record)
            return
        self.engine = engine
        log.info("rules switched", extra={"rules_version": engine.version, "who": record.get("who")})
        if self.on_rules:
            self.on_rules(engine)

    def _refuse(self, reason: str, problems: list[str], offset: int | None,
                record: dict[str, Any] | None = None) -> None:
        what = "rule set" if record is not None and record.get("type") == "rules" else "control record"
        extra = {"reason": reason, "problems": problems[:5], "control_offset": offset,
                 "record_type": record.get("type") if record else None,
                 "refused_version": record.get("rules_version") if record else None,
                 "who": record.get("who") if record else None, "rules_version": self.engine.version}
        if not self.live:
            log.warning(f"{what} refused at start-up (on the control topic since before this worker started; "
                        "not counted again); the previous state stays", extra=extra)
            return
        log.error(f"{what} refused; the previous state stays", extra=extra)
        if self.on_refused:
            self.on_refused(reason, problems)


class ControlRecordError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def etapp_change(record: dict[str, Any], engine: Engine | None = None) -> EtappChange:
    """The etapp change a control record says, checked field by field (ControlRecordError if not)."""
    from router.decision import ETAPP_STATES

    etapp, state, effective, at = (record.get(k) for k in ("etapp", "state", "effective_ms", "at_ms"))
    if not isinstance(etapp, str) or not etapp:
        raise ControlRecordError("invalid_etapp_state", "etapp change without an etapp id")
    if state not in ETAPP_STATES:
        raise ControlRecordError("invalid_etapp_state", f"etapp change for {etapp}: state {state!r} is not one of "
                                 f"{', '.join(ETAPP_STATES)}")
    if not isinstance(effective, int) or not isinstance(at, int):
        raise ControlRecordError("invalid_etapp_state", f"etapp change for {etapp}: effective_ms and at_ms must be "
                                 "epoch milliseconds")
    try:
        detail = json.loads(record.get("detail") or "{}")
    except ValueError:
        raise ControlRecordError("invalid_etapp_state", f"etapp change for {etapp}: detail is not JSON") from None
    hold_until = detail.get("hold_until_ms") if isinstance(detail, dict) else None
    if hold_until is not None and not isinstance(hold_until, int):
        raise ControlRecordError("invalid_etapp_state", f"etapp change for {etapp}: hold_until_ms is not an instant")
    if engine is not None and etapp not in engine.golive_ms:
        # kept (a later rule set may add the etapp), but said: a typo here is otherwise silent
        log.warning("etapp change for an etapp the active rule set does not have", extra={"etapp": etapp,
                    "state": state, "rules_version": engine.version})
    return EtappChange(etapp, state, effective, at, record.get("who") or "unknown", record.get("why") or "",
                       hold_until)


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
                    # records that were there at start-up are old news: refusals among them not counted
                    state.live = r.offset >= end[TopicPartition(r.topic, r.partition)]
                    try:
                        state.apply_bytes(r.value, codec, r.offset)
                    except Exception as exc:  # never let a control record stop the worker
                        log.error("control record failed", extra={"error": repr(exc)[:300], "control_offset": r.offset})
                    finally:
                        state.live = True
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

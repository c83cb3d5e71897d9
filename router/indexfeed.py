"""Feed the trace index from the decision, dead-letter, delivery and control topics.

``rows_of`` turns one record into index rows (pure). ``feed`` reads the topics from the
positions stored in the index, inserts a batch of rows together with the new positions in one
transaction, and either stops when it has caught up (``samex trace --sync``) or keeps following
(``samex index run``). Reads are ``read_committed``; the positions are also committed to the
consumer group ``samex-index`` (best effort, for lag monitoring).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from router.codec import Codec, default_codec
from router.errors import CodecError, SamexError
from router.kafkaio import consumer, partitions_of
from router.traceindex import Row, TraceIndex

log = logging.getLogger("samex.indexfeed")
INDEX_GROUP = "samex-index"
REPLAY_IDS_IN_AUDIT = 5000  # message ids a replay audit record lists (and the index records)


class FeedBusyError(SamexError):
    """Another process is feeding the same trace index."""


def _row(**f: Any) -> Row:
    from router.traceindex import COLUMNS

    return tuple(f.get(c) for c in COLUMNS)


def decision_rows(d: dict[str, Any], inbound_topic: str, park_prefix: str, where: tuple[str, int, int]) -> list[Row]:
    src = d["input"]
    from_park = src["topic"].startswith(park_prefix)
    if d.get("replay_id"):
        hop = "re-decided"
    elif from_park:
        hop = "released" if d["outcome"] != "parked" else "parked"
    else:
        hop = "parked" if d["outcome"] == "parked" else "decided"
    received = None
    if src["topic"] == inbound_topic and not d.get("replay_id") and not from_park:
        received = int(d["decided_at_ms"] - d["latency_ms"])
    return [_row(message_id=d["message_id"], hop=hop, at_ms=d["decided_at_ms"], received_ms=received,
                 kind=d.get("kind"), source_message_id=d.get("source_message_id"),
                 placer=d.get("placer_order_number"), filler=d.get("filler_order_number"),
                 referral_id=d.get("referral_id"), patient_key=d.get("patient_key"), outcome=d["outcome"],
                 systems=",".join(d["destinations"]), rule=d.get("rule"), rules_version=d.get("rules_version"),
                 etapp=d.get("etapp"), etapp_state=d.get("etapp_state"), reason=d.get("reason"),
                 replay_id=d.get("replay_id"), who=d.get("worker"), topic=src["topic"], part=src["partition"],
                 off=src["offset"], stage=d.get("source"))]  # stage of a decision row: the ingesting connector


def deadletter_rows(r: dict[str, Any], where: tuple[str, int, int]) -> list[Row]:
    src = r["source"]
    mid = r.get("message_id") or f"unknown:{src['topic']}:{src['partition']}:{src['offset']}"
    return [_row(message_id=mid, hop="dead_lettered", at_ms=r["at_ms"], kind=r.get("kind"), outcome=r["reason_code"],
                 systems=r.get("system"), rules_version=r.get("rules_version"), reason=r.get("reason"),
                 stage=r.get("stage"), topic=src["topic"], part=src["partition"], off=src["offset"])]


DELIVERY_HOP = {"acknowledged": "delivered", "rejected": "rejected", "skipped_duplicate": "skipped_duplicate"}


def delivery_rows(r: dict[str, Any], where: tuple[str, int, int]) -> list[Row]:
    return [_row(message_id=r["message_id"], hop=DELIVERY_HOP.get(r["outcome"], r["outcome"]), at_ms=r["at_ms"],
                 outcome=r["ack_code"], systems=r["system"], reason=r.get("detail"), replay_id=r.get("replay_id"),
                 stage=f"attempts={r['attempts']}", topic=where[0], part=where[1], off=where[2])]


def control_rows(r: dict[str, Any], where: tuple[str, int, int]) -> list[Row]:
    if r["type"] != "replay":
        return []
    detail = json.loads(r.get("detail") or "{}")
    rid = detail.get("replay_id")
    why = r.get("why") or ""
    mode = detail.get("mode", "replay")
    reason = f"{mode}: {why}" if why else mode
    hop = "copied" if mode == "to-topic" else "replayed"
    return [_row(message_id=mid, hop=hop, at_ms=r["at_ms"], reason=reason, replay_id=rid, who=r["who"],
                 topic=where[0], part=where[1], off=where[2])
            for mid in detail.get("message_ids", [])[:REPLAY_IDS_IN_AUDIT]]


class RowMaker:
    """Record bytes of one of the four topics to index rows."""

    def __init__(self, settings: Any, codec: Codec | None = None) -> None:
        self.s = settings
        self.codec = codec or default_codec()
        self.skipped = 0

    def rows(self, topic: str, partition: int, offset: int, value: bytes | None) -> list[Row]:
        if value is None:
            return []
        s, where = self.s, (topic, partition, offset)
        try:
            if topic == s.decisions_topic:
                return decision_rows(self.codec.decode_as("decision", value), s.inbound_topic, s.park_topic_prefix,
                                     where)
            if topic == s.deadletter_topic:
                return deadletter_rows(self.codec.decode_as("deadletter", value), where)
            if topic == s.deliveries_topic:
                return delivery_rows(self.codec.decode_as("delivery", value), where)
            if topic == s.control_topic:
                return control_rows(self.codec.decode_as("control", value), where)
        except (CodecError, KeyError, ValueError) as exc:
            self.skipped += 1
            log.warning("record not indexed", extra={"topic": topic, "offset": offset, "error": str(exc)[:200]})
        return []


def feed_topics(settings: Any) -> list[str]:
    return [settings.decisions_topic, settings.deadletter_topic, settings.deliveries_topic, settings.control_topic]


async def feed(settings: Any, index: TraceIndex, follow: bool = False, stop: asyncio.Event | None = None,
               on_progress: Callable[[int, int], None] | None = None, batch: int = 5000,
               group_id: str = INDEX_GROUP) -> int:
    """Index new records of the four topics; returns how many records were read. Without
    ``follow`` it stops at the end offsets it saw when it started. Returns -1 without reading when
    another feeder holds the index (it keeps the index current; with ``follow`` that is an error)."""
    if not index.try_feed_lock():
        if follow:
            raise FeedBusyError("another `samex index run` is feeding this index")
        return -1
    maker = RowMaker(settings)
    c = consumer(settings.kafka_bootstrap, group_id=group_id, max_partition_fetch_bytes=8 << 20)
    try:
        await c.start()
    except BaseException:
        await c.stop()
        raise
    done = 0
    try:
        tps: list[TopicPartition] = []
        for t in feed_topics(settings):
            tps += [TopicPartition(t, p) for p in sorted(await partitions_of(c, t))]
        if not tps:
            return 0
        c.assign(tps)
        stored = index.offsets()
        for tp in tps:
            pos = stored.get((tp.topic, tp.partition))
            if pos is None:
                await c.seek_to_beginning(tp)
            else:
                c.seek(tp, pos)
        end = await c.end_offsets(tps)
        total = sum(max(0, end[tp] - stored.get((tp.topic, tp.partition), 0)) for tp in tps)
        if on_progress:
            on_progress(0, total)
        while stop is None or not stop.is_set():
            if not follow:
                todo = [tp for tp in tps if await c.position(tp) < end[tp]]
                if not todo:
                    break
            got = await c.getmany(timeout_ms=500, max_records=batch)
            rows: list[Row] = []
            offsets: dict[tuple[str, int], int] = {}
            for tp, recs in got.items():
                for r in recs:
                    rows.extend(maker.rows(tp.topic, tp.partition, r.offset, r.value))
                if recs:
                    offsets[(tp.topic, tp.partition)] = recs[-1].offset + 1
                    done += len(recs)
            if offsets:
                index.add(rows, offsets)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()}), 5)
                if on_progress:
                    on_progress(done, total)
    finally:
        await c.stop()
    return done

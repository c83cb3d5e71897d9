"""Kafka client construction with samex's delivery settings, in one place."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


def producer(bootstrap: str, **overrides: Any) -> AIOKafkaProducer:
    """Producer that only reports success after every in-sync replica has the record."""
    conf: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 2,
        "max_batch_size": 512 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        "request_timeout_ms": 30000,
        "client_id": "samex",
    }
    conf.update(overrides)
    return AIOKafkaProducer(**conf)


def consumer(bootstrap: str, *topics: str, group_id: str | None = None, **overrides: Any) -> AIOKafkaConsumer:
    conf: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "fetch_max_bytes": 32 * 1024 * 1024,
        "client_id": "samex",
    }
    conf.update(overrides)
    return AIOKafkaConsumer(*topics, **conf)


async def read_all(bootstrap: str, topic: str, timeout_s: float = 10.0, idle_s: float = 1.5) -> list[Any]:
    """Read a topic from the beginning until it has been idle for ``idle_s`` (tests, tools)."""
    import asyncio
    import time

    c = consumer(bootstrap, topic)
    await c.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=200, max_records=10000)
            n = 0
            for recs in batch.values():
                out.extend(recs)
                n += len(recs)
            if n:
                last = time.monotonic()
            elif time.monotonic() - last > idle_s:
                break
            await asyncio.sleep(0)
    finally:
        await c.stop()
    return out


async def partitions_of(c: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partition numbers of a topic (empty when it does not exist), with fresh metadata."""
    # consumer.topics() fetches metadata without keeping it; ask the client for the whole cluster
    metadata = await c._client.fetch_all_metadata()
    return set(metadata.partitions_for_topic(topic) or ())


async def read_to_end(bootstrap: str, topic: str, max_records: int = 5000) -> list[Any]:
    """Every record of every partition of ``topic`` up to its end at the time of the call
    (empty when the topic does not exist). For compacted state topics (control, order book)."""
    from aiokafka import TopicPartition

    c = consumer(bootstrap, group_id=None)
    await c.start()
    out: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(c, topic))]
        if not tps:
            return out
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        todo = {tp for tp in tps if end[tp] > 0}
        while todo:
            batch = await c.getmany(*todo, timeout_ms=500, max_records=max_records)
            for recs in batch.values():
                out.extend(recs)
            for tp in list(todo):
                if await c.position(tp) >= end[tp]:
                    todo.discard(tp)
    finally:
        await c.stop()
    return out


async def records_in(bootstrap: str, topic: str) -> int:
    """The sum of ``topic``'s end offsets: how many records it has taken (0 when it does not exist),
    found without reading any. Benchmarks use it to follow progress without competing for the CPU."""
    from aiokafka import TopicPartition

    c = consumer(bootstrap, group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(c, topic))]
        return sum((await c.end_offsets(tps)).values()) if tps else 0
    finally:
        await c.stop()

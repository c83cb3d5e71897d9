"""Produce many records with few futures: group by (topic, partition) in order, fill aiokafka
batches, wait for every batch's acknowledgement (acks=all, idempotent producer).

Per-key order is kept: records of one key go to one partition, in the order given, inside
batches sent in order; the idempotent producer keeps that order across retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import KafkaError

from router.partitioning import key_partition
from router.worker.core import OutRecord

_CACHE_MAX = 200_000
log = logging.getLogger("samex.worker")


class BatchSender:
    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self._partitions: dict[str, int] = {}
        self._key_partition: dict[tuple[bytes, int], int] = {}
        self._rr = 0

    async def _count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            n = len(await self.producer.partitions_for(topic))
            self._partitions[topic] = n
        return n

    async def warm(self, topics: Sequence[str]) -> None:
        """Learn the partition counts of ``topics`` ahead of the first records (missing topics are
        skipped: they are looked up, or refused by the broker, when first written)."""
        for t in topics:
            try:
                await asyncio.wait_for(self._count(t), 2)
            except (TimeoutError, KafkaError):
                log.warning("no partition metadata for a topic at start-up", extra={"topic": t})

    def _partition(self, key: bytes | None, n: int) -> int:
        if key is None:
            self._rr += 1
            return self._rr % n
        cache_key = (key, n)
        p = self._key_partition.get(cache_key)
        if p is None:
            p = key_partition(key, n)  # the Java client's default partitioner
            if len(self._key_partition) > _CACHE_MAX:
                self._key_partition.clear()
            self._key_partition[cache_key] = p
        return p

    async def send_all(self, outs: Sequence[OutRecord]) -> None:
        await asyncio.gather(*(await self.enqueue(outs)))

    async def enqueue(self, outs: Sequence[OutRecord]) -> list[Any]:
        """Hand the records to the producer; return the futures of their batches' acknowledgements."""
        groups: dict[tuple[str, int], list[OutRecord]] = {}
        counts = self._partitions
        for o in outs:
            topic = o.topic
            n = counts.get(topic)
            if n is None:
                n = await self._count(topic)
            part = o.partition
            if part is None or part >= n:
                part = self._partition(o.key, n)
            group = groups.get((topic, part))
            if group is None:
                groups[(topic, part)] = [o]
            else:
                group.append(o)
        futures = []
        create, send = self.producer.create_batch, self.producer.send_batch
        for (topic, partition), items in groups.items():
            batch = create()
            for o in items:
                if batch.append(key=o.key, value=o.value, timestamp=None, headers=o.headers) is None:
                    futures.append(await send(batch, topic, partition=partition))
                    batch = create()
                    if batch.append(key=o.key, value=o.value, timestamp=None, headers=o.headers) is None:
                        raise ValueError(f"a record for {topic} is larger than the producer's batch size")
            futures.append(await send(batch, topic, partition=partition))
        return futures

"""Reading recorded traffic back from Kafka by time: the inbound topic and the decision log.

Used by ``samex rehearse``. Time lookup is ``offsets_for_times`` per partition; reads are
``read_committed``; nothing is committed (no consumer group).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import TopicPartition

from router.kafkaio import consumer, partitions_of


async def read_range(bootstrap: str, topic: str, from_ms: int, to_ms: int | None,
                     on_progress: Callable[[int, int], None] | None = None,
                     batch: int = 5000) -> AsyncIterator[list[Any]]:
    """Yield batches of the records of ``topic`` whose timestamp is in [from_ms, to_ms), every
    partition, each partition in offset order. ``on_progress(done, total)`` counts records."""
    c = consumer(bootstrap, group_id=None, max_partition_fetch_bytes=8 << 20)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(c, topic))]
        if not tps:
            return
        c.assign(tps)
        end = await c.end_offsets(tps)
        starts = await c.offsets_for_times({tp: from_ms for tp in tps})
        stops: dict[TopicPartition, int] = dict(end)
        if to_ms is not None:
            at_to = await c.offsets_for_times({tp: to_ms for tp in tps})
            stops = {tp: (at_to[tp].offset if at_to.get(tp) is not None else end[tp]) for tp in tps}
        todo = {}
        for tp in tps:
            first = starts[tp].offset if starts.get(tp) is not None else end[tp]
            if first < stops[tp]:
                c.seek(tp, first)
                todo[tp] = first
        total = sum(stops[tp] - todo[tp] for tp in todo)
        done = 0
        if on_progress:
            on_progress(0, total)
        while todo:
            got = await c.getmany(*todo, timeout_ms=1000, max_records=batch)
            out = []
            for tp, recs in got.items():
                for r in recs:
                    if r.offset < stops[tp]:
                        out.append(r)
            for tp in list(todo):
                if await c.position(tp) >= stops[tp]:
                    del todo[tp]
            done += len(out)
            if on_progress:
                on_progress(done, total)
            if out:
                yield out
    finally:
        await c.stop()

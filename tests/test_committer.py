"""The hot path's committer (pure asyncio, no broker): it commits only offered offsets, the newest
per partition, only for partitions still assigned, and at most once per commit interval; a flush
commits at once. The real-broker tests (kill -9, scale-out) cover it with Kafka."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import TopicPartition

from router.worker.hotpath import CommitOnRevoke, Committer

A, B, C = TopicPartition("in", 0), TopicPartition("in", 1), TopicPartition("in", 2)


class RecordingConsumer:
    """Stands in for the consumer's two calls the committer makes (assignment, commit)."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.commits: list[tuple[float, dict[TopicPartition, int]]] = []
        self.during_commit: list[Callable[[], None]] = []  # run once each, while a commit is under way

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.during_commit:
            self.during_commit.pop(0)()
        await asyncio.sleep(0.001)  # a round trip
        self.commits.append((time.monotonic(), dict(offsets)))


async def test_without_interval_every_offer_is_committed_in_order() -> None:
    c = RecordingConsumer({A, B})
    com = Committer(c)
    com.start()
    try:
        for off in (10, 20, 30):
            com.offer({A: off})
            await com.flush()
        assert [o for _t, o in c.commits] == [{A: 10}, {A: 20}, {A: 30}]
    finally:
        com.stop()


async def test_interval_merges_offers_into_one_commit_with_the_newest_offsets() -> None:
    c = RecordingConsumer({A, B, C})
    com = Committer(c, interval_s=0.3)
    com.start()
    try:
        com.offer({A: 1})
        await asyncio.sleep(0.05)  # the first commit goes at once
        assert [o for _t, o in c.commits] == [{A: 1}]
        for i in range(2, 12):  # ten offers within the interval
            com.offer({A: i, B: 100 + i} if i % 2 else {A: i})
            await asyncio.sleep(0.005)
        assert len(c.commits) == 1
        deadline = time.monotonic() + 5
        while len(c.commits) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [o for _t, o in c.commits] == [{A: 1}, {A: 11, B: 111}]
        assert c.commits[1][0] - c.commits[0][0] >= 0.3 - 0.01  # not before the interval is up
    finally:
        com.stop()


async def test_flush_commits_without_waiting_for_the_interval() -> None:
    c = RecordingConsumer({A})
    com = Committer(c, interval_s=30)
    com.start()
    try:
        com.offer({A: 1})
        await asyncio.sleep(0.05)
        com.offer({A: 2})
        await com.flush(timeout=5)  # would time out, uncommitted, if it waited the 30 s
        assert [o for _t, o in c.commits] == [{A: 1}, {A: 2}]
    finally:
        com.stop()


async def test_partitions_no_longer_assigned_are_not_committed() -> None:
    c = RecordingConsumer({A, B})
    com = Committer(c, interval_s=0.05)
    com.start()
    try:
        com.offer({A: 5, B: 6})
        await com.flush()
        c.assigned = {B}  # a rebalance took A away: its new owner re-processes from the last commit
        com.offer({A: 7, B: 8})
        await com.flush()
        assert [o for _t, o in c.commits] == [{A: 5, B: 6}, {B: 8}]
    finally:
        com.stop()


async def test_a_revocation_commits_at_once_with_what_is_acknowledged_during_it() -> None:
    c = RecordingConsumer({A, B})
    com = Committer(c, interval_s=30)
    listener = CommitOnRevoke(com)
    com.start()
    try:
        com.offer({A: 1})
        await asyncio.sleep(0.05)
        com.offer({A: 2, B: 3})  # waits for the 30 s interval
        await asyncio.wait_for(listener.on_partitions_revoked({A, B}), 5)
        assert [o for _t, o in c.commits] == [{A: 1}, {A: 2, B: 3}]
        # batches acknowledged while the revocation's commits are under way are committed with them,
        # without waiting for the interval
        c.during_commit.append(lambda: com.offer({B: 5}))
        revoking = asyncio.create_task(listener.on_partitions_revoked({A, B}))
        await asyncio.sleep(0)
        com.offer({A: 4})
        await asyncio.wait_for(revoking, 2)
        assert [o for _t, o in c.commits][-2:] == [{A: 4}, {B: 5}]
        assert com.want == {}
    finally:
        com.stop()

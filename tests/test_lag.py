"""LagReporter's arithmetic and series, on a stand-in for the consumer's offset calls (the real-broker
side is in tests/test_worker_delivery_kafka.py: each worker's series = its partitions)."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from router.metrics import WorkerMetrics
from router.worker.lag import LagReporter

T = "samex.in"
P0, P1 = TopicPartition(T, 0), TopicPartition(T, 1)


class Offsets:
    """What LagReporter asks a consumer: assignment, high watermark, end / committed / first offsets."""

    def __init__(self) -> None:
        self.assigned = {P0, P1}
        self.ends = {P0: 0, P1: 0}
        self.commits: dict[TopicPartition, int | None] = {P0: None, P1: None}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> int:
        return self.ends[tp]

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in tps}

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.commits[tp]

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)


def series(reg: CollectorRegistry) -> dict[int, float]:
    return {int(s.labels["partition"]): s.value for m in reg.collect() for s in m.samples
            if s.name == "samex_consumer_lag"}


def test_lag_grows_while_nothing_is_acknowledged_and_leaves_with_the_partition() -> None:
    reg = CollectorRegistry()
    c = Offsets()
    lag = LagReporter(c, WorkerMetrics(reg).consumer_lag)
    c.ends = {P0: 10, P1: 4}
    c.commits[P1] = 1
    lag.acknowledged(P0, 9)  # P0 decided up to its end; P1 never decided here, committed at 1
    asyncio.run(lag.report())
    assert series(reg) == {0: 0.0, 1: 3.0}
    c.ends = {P0: 60, P1: 4}  # 50 new records on P0 and no batch completes: the lag shows it
    asyncio.run(lag.report())
    assert series(reg) == {0: 50.0, 1: 3.0}
    lag.acknowledged(P0, 59)
    assert series(reg) == {0: 0.0, 1: 3.0}
    lag.forget({P1})  # revoked: another worker reports it now
    assert series(reg) == {0: 0.0}
    # aiokafka lists a revoked partition until the new assignment arrives: meanwhile neither a report
    # nor a late batch of it brings its series back
    c.ends[P1] = 99
    asyncio.run(lag.report())
    lag.acknowledged(P1, 98)
    assert c.assignment() == {P0, P1} and series(reg) == {0: 0.0}
    lag.assigned({P0})  # the new assignment
    c.assigned = {P0}
    asyncio.run(lag.report())
    assert series(reg) == {0: 0.0}
    lag.assigned(set())
    c.assigned = set()
    asyncio.run(lag.report())
    assert series(reg) == {}

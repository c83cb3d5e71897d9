"""The batched hot path of the worker: an aiokafka consumer-group loop run as a faust service.

Measured (bench/throughput.py, README): routing through a faust agent with ``take_events`` moved
about 5,000 msg/s, a sixth of this loop; faust's per-event machinery dominated. This loop keeps
faust's app, web server, control task and tables, and moves only the inbound stream to
``getmany`` batches: decode + decide + produce whole batches, wait for every acknowledgement,
then hand the batch's offsets to a committer task (only acknowledged offsets are ever
committed). One loop per worker (the concurrency-1 rule of faust #606 applies here too); scale by
partitions and workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from router.kafkaio import consumer
from router.worker.batchsend import BatchSender
from router.worker.lag import LagReporter

log = logging.getLogger("samex.worker")


async def run_hot_path(runtime: Any, stop: asyncio.Event) -> None:
    settings = runtime.settings
    await runtime.caught_up.wait()
    await runtime.wait_tables()
    await runtime.start_producer()
    sender = BatchSender(runtime.producer)
    # Partition counts of every topic the hot path writes, fetched now: otherwise the first batches
    # each wait for a metadata round trip per new topic (part of the first seconds' latency tail).
    from router.worker.orders import orders_changelog_topic

    engine = runtime.core.engine
    await sender.warm([*(settings.out_topic(x) for x in engine.systems), settings.decisions_topic,
                       settings.deadletter_topic, *(settings.park_topic(e) for e in engine.golive_ms),
                       orders_changelog_topic(settings)])
    c = consumer(settings.kafka_bootstrap, group_id=settings.group_id,
                 max_partition_fetch_bytes=8 << 20, client_id=f"samex-{settings.worker_id}",
                 session_timeout_ms=10000, heartbeat_interval_ms=1000, max_poll_interval_ms=300000,
                 fetch_max_wait_ms=settings.fetch_max_wait_ms)
    committer = Committer(c, settings.commit_interval_ms / 1000)
    lag = LagReporter(c, runtime.metrics.consumer_lag, settings.lag_report_interval_s)
    await c.start()
    c.subscribe([settings.inbound_topic], listener=CommitOnRevoke(committer, lag))
    runtime.consumer = c
    from router.worker.release import Releaser

    releaser = Releaser(runtime, c)
    await releaser.start()
    runtime.releaser = releaser
    # Everything allocated so far (faust, aiokafka, the rule engine, the recovered tables) lives as
    # long as the process: move it out of the collector's reach, so that a full collection does not
    # walk it in the middle of a batch. Measured offline (RouterCore, 500-message batches): the
    # slowest batch went from ~55 ms to ~25 ms.
    gc.collect()
    gc.freeze()
    # And collect the young generation after 50,000 net allocations instead of Python's 700: a
    # batch allocates and frees tens of thousands of short-lived objects (decoded fields, dicts,
    # records), so the default ran ~1,400 young and ~12 full collections in 15 s at full load.
    # Measured (worker CPU per message at full load, medians of 4 alternating runs): 76.3 -> 68.3 us
    # (bench/worker-ab-2026-11-23.out).
    if settings.gc_young_threshold:
        _g0, g1, g2 = gc.get_threshold()
        gc.set_threshold(settings.gc_young_threshold, g1, g2)
    # One batch may be in flight while the next is decided: its outputs are handed to the
    # producer, and its offsets are offered for commit only once every output is acknowledged.
    # Batches complete and commit strictly in order.
    pending: tuple[list[Any], dict[Any, int], Any, list[Any]] | None = None
    batch_records = runtime.metrics.batch_records
    committer.start()
    lag.start()
    try:
        while not stop.is_set():
            # no waiting for input while a batch is in flight or parked messages can be released
            idle_wait = 100 if pending is None and not (runtime.core.backlog and releaser.ready()) else 0
            batch = await c.getmany(timeout_ms=idle_wait, max_records=settings.batch_max)
            await releaser.sync()  # before deciding: the backlog of newly assigned partitions must be known
            if batch:
                # aiokafka's records as they are: they have every field RouterCore reads (topic,
                # partition, offset, key, value); an InRecord copy of each was 2 % of the worker's time
                records = [m for msgs in batch.values() for m in msgs]
                batch_records.observe(len(records))
                result = runtime.core.process(records)
                futures = await sender.enqueue(result.outputs)
            if pending is not None:
                await _complete(c, runtime, sender, *pending, committer=committer, lag=lag)
                pending = None
            if batch:
                offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
                pending = (futures, offsets, result, [(tp, msgs[-1].offset) for tp, msgs in batch.items()])
            if runtime.core.backlog and releaser.ready():
                # A release needs the batch in flight acknowledged first: its parks must be in the
                # park partitions before the releaser can see them, and a park partition only counts
                # as drained when no park is in flight. Kept in flight instead, under steady traffic
                # every batch parks another message behind the release, and the release never ends.
                if pending is not None:
                    await _complete(c, runtime, sender, *pending, committer=committer, lag=lag)
                    pending = None
                await releaser.step(sender, settings.release_batch_max)
        if pending is not None:
            await _complete(c, runtime, sender, *pending, committer=committer, lag=lag)
        await committer.flush()
    finally:
        committer.stop()
        lag.stop()
        with contextlib.suppress(Exception):
            await releaser.stop()
        with contextlib.suppress(Exception):
            await c.stop()


async def _commit(c: Any, offsets: dict[Any, int]) -> None:
    try:
        await c.commit(offsets)
    except (CommitFailedError, IllegalStateError) as exc:
        log.warning("commit failed after a rebalance; records will be re-processed", extra={"error": repr(exc)})
    except KafkaError as exc:
        log.warning("commit failed; records after the last commit will be re-processed", extra={"error": repr(exc)})


class Committer:
    """Commits acknowledged offsets off the loop's critical path.

    The loop offers the offsets of each acknowledged batch and goes on; one commit runs at a time,
    with the newest offsets offered meanwhile. Only acknowledged offsets are ever offered, so a
    crash re-processes at most what was acknowledged since the last commit (at-least-once, as
    before). Measured at 1,000 msg/s (bench/worker-ab-2026-11-23.out): steady p50/p99 26.6/68.4 ms
    with the commit awaited in the loop, 21.4/48.6 ms with this task (medians of 3 alternating runs).
    """

    def __init__(self, c: Any, interval_s: float = 0.0) -> None:
        self.c = c
        self.interval_s = interval_s
        self.want: dict[Any, int] = {}
        self.wake = asyncio.Event()
        self.hurry = asyncio.Event()
        self.flushing = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def offer(self, offsets: dict[Any, int]) -> None:
        if self.task is not None and self.task.done():
            self.task.result()  # the committer failed: raise its error here rather than stop committing
        self.want.update(offsets)
        self.idle.clear()
        self.wake.set()

    async def _run(self) -> None:
        last = 0.0
        while True:
            await self.wake.wait()
            wait = last + self.interval_s - time.monotonic()
            if wait > 0 and not self.hurry.is_set():
                # offers made meanwhile are merged into one commit; a flush cuts the wait short
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.hurry.wait(), wait)
            self.wake.clear()
            offsets, self.want = self.want, {}
            assigned = self.c.assignment()
            mine = {tp: off for tp, off in offsets.items() if tp in assigned}
            last = time.monotonic()
            if mine:
                await _commit(self.c, mine)
            if not self.want:
                self.idle.set()

    async def flush(self, timeout: float = 10) -> None:
        """Wait until the offsets offered so far are committed (on a clean stop: fewer re-processed)."""
        # no interval waits while a flush is waiting (offers made during it are committed too)
        self.flushing += 1
        self.hurry.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), timeout)
        finally:
            self.flushing -= 1
            if not self.flushing:
                self.hurry.clear()

    async def revoke(self, revoked: set[Any], timeout: float = 5) -> None:
        """Commit what was offered before partitions move away. Offers made during the flush are
        committed with it; what is still waiting after a flush that timed out is dropped for the
        revoked partitions, so that it cannot move a committed offset back once another worker
        owns them (their records are then re-processed: duplicates, never a loss)."""
        await self.flush(timeout)
        for tp in revoked:
            self.want.pop(tp, None)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


class CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before a rebalance takes partitions away, commit the acknowledged offsets still waiting for
    the commit interval: the new owner then re-processes only what was in flight."""

    def __init__(self, committer: Committer, lag: LagReporter | None = None) -> None:
        self.committer = committer
        self.lag = lag

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        task = self.committer.task
        if revoked and task is not None and not task.done():  # not after the hot path has stopped
            await self.committer.revoke(revoked)
        if self.lag is not None:
            self.lag.forget(revoked)  # their lag is the new owner's to report

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        if self.lag is not None:
            self.lag.assigned(assigned)


async def _complete(c: Any, runtime: Any, sender: BatchSender, futures: list[Any], offsets: dict[Any, int],
                    result: Any, last: list[Any], committer: Committer, lag: LagReporter) -> None:
    """Wait for a batch's acknowledgements (re-sending it whole on failure), then offer its offsets
    to the committer."""
    try:
        await asyncio.gather(*futures)
    except KafkaError as exc:
        for attempt in range(5):
            log.error("send failed; re-sending the batch", extra={"attempt": attempt + 1, "error": repr(exc)})
            await asyncio.sleep(min(0.2 * 2**attempt, 3))
            try:
                await sender.send_all(result.outputs)
                break
            except KafkaError as again:
                exc = again
        else:
            raise RuntimeError("could not write a batch's outputs; stopping without committing") from exc
    runtime.core.ack_parks(result)
    runtime.after_batch(result)
    # A rebalance may have taken partitions away while the batch was in flight: commit only what is
    # still ours. The new owner re-processes the rest from the last commit (at-least-once);
    # duplicates are identifiable by message id and dropped by the outbound connectors.
    assigned = c.assignment()
    mine = {tp: off for tp, off in offsets.items() if tp in assigned}
    if len(mine) < len(offsets):
        log.warning("partitions moved during a batch; their records will be re-processed by the new owner",
                    extra={"partitions": len(offsets) - len(mine)})
    if mine:
        committer.offer(mine)
    for tp, offset in last:
        lag.acknowledged(tp, offset)
    runtime.last_batch_at = time.time()

"""Release of parked messages, run by the hot path between its batches.

Parked records of inbound partition p sit on partition p of ``samex.park.<etapp>`` (the router
writes them there explicitly), so the worker that owns inbound partition p also owns their
release. While (etapp, p) has unreleased records, new messages of that etapp from p are parked
behind them (``RouterCore.backlog``); once the etapp is no longer on hold, the releaser reads
the park partition from its committed offset, re-decides each record under the state then in
force (``RouterCore.process(released=True)``), waits for the broker's acknowledgement of the
outputs, and only then commits the park offset: a worker that dies during a release leaves
nothing lost, and what it had routed but not committed is routed again with the same message id
(the outbound connectors drop it). When the park partition is drained and no park is in flight,
the etapp's messages from p route directly again: per-patient order holds throughout.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from router.kafkaio import consumer, partitions_of
from router.worker.core import InRecord

log = logging.getLogger("samex.release")


class Releaser:
    def __init__(self, runtime: Any, inbound_consumer: Any) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.core = runtime.core
        self.inbound = inbound_consumer
        self.c: Any = None
        self.owned: frozenset[int] = frozenset()
        self.tps: dict[tuple[str, int], TopicPartition] = {}
        # park_seq per pair when last looked at (a step, or while on hold): the parks since then
        # were queued behind the release, and the next step releases that many more
        self.seq_seen: dict[tuple[str, int], int] = {}

    async def start(self) -> None:
        s = self.settings
        self.c = consumer(s.kafka_bootstrap, group_id=f"{s.group_id}-release", client_id=f"samex-{s.worker_id}-rel",
                          isolation_level="read_committed")
        await self.c.start()

    async def stop(self) -> None:
        if self.c is not None:
            await self.c.stop()

    def _etapper(self) -> list[str]:
        return sorted(self.core.engine.golive_ms)

    async def sync(self) -> None:
        """Follow the hot path's inbound assignment: own the same partitions of every park topic."""
        owned = frozenset(tp.partition for tp in self.inbound.assignment()
                          if tp.topic == self.settings.inbound_topic)
        if owned == self.owned:
            return
        self.owned = owned
        self.seq_seen.clear()
        tps: dict[tuple[str, int], TopicPartition] = {}
        for etapp in self._etapper():
            topic = self.settings.park_topic(etapp)
            parts = await partitions_of(self.c, topic)
            for p in owned:
                if p in parts:
                    tps[(etapp, p)] = TopicPartition(topic, p)
        self.tps = tps
        self.c.assign(list(tps.values()))
        if not tps:
            self.core.backlog.clear()
            return
        self.c.pause(*tps.values())
        end = await self.c.end_offsets(list(tps.values()))
        waiting: dict[str, int] = dict.fromkeys(self._etapper(), 0)
        backlog = set()
        for ep, tp in tps.items():
            committed = await self.c.committed(tp)
            start = committed if committed is not None else 0
            if committed is None:
                await self.c.seek_to_beginning(tp)
            else:
                self.c.seek(tp, committed)
            if end[tp] > start:
                backlog.add(ep)
                waiting[ep[0]] += end[tp] - start
        # keep parks this worker made itself and that are not acknowledged yet
        backlog |= {ep for ep in self.core.backlog if ep[1] in owned and self.core.park_unacked[ep] > 0}
        self.core.backlog = backlog
        for etapp, n in waiting.items():
            self.runtime.metrics.parked_waiting.labels(etapp).set(n)
        if backlog:
            log.info("parked messages waiting", extra={"partitions": len(backlog)})

    def ready(self) -> list[tuple[str, int]]:
        """The (etapp, partition) pairs with parked records that may be released now (not on hold)."""
        if not self.core.backlog:
            return []
        states = self.core.states.at(int(time.time() * 1000))
        ready = []
        for ep in self.core.backlog:
            if ep not in self.tps:
                continue
            if states.get(ep[0]) == "hold":
                self.seq_seen[ep] = self.core.park_seq[ep]  # parks on hold are not behind a release
            else:
                ready.append(ep)
        return ready

    async def step(self, sender: Any, max_records: int = 1000) -> int:
        """Release parked records of the (etapp, partition) pairs not on hold. Returns the count.

        The caller has no park in flight (the hot path completes its batch first), so the end
        offsets read here cover every park made so far. A step releases ``max_records`` plus as many
        as were parked behind the release since the previous step (at most one hot-path batch), so
        what is left to release shrinks by ``max_records`` a step however fast messages arrive, and
        a partition read up to those end offsets is drained: the release ends."""
        ready = self.ready()
        if not ready:
            return 0
        tps = [self.tps[ep] for ep in ready]
        seq_now = {ep: self.core.park_seq[ep] for ep in ready}
        parked_since = sum(max(0, n - self.seq_seen.get(ep, 0)) for ep, n in seq_now.items())
        budget = max_records + min(parked_since, self.settings.batch_max)
        self.seq_seen.update(seq_now)
        end = await self.c.end_offsets(tps)
        released = 0
        while released < budget:
            behind = [tp for tp in tps if await self.c.position(tp) < end[tp]]
            if not behind:
                break
            self.c.pause(*self.tps.values())
            self.c.resume(*behind)
            batch = await self.c.getmany(*behind, timeout_ms=50, max_records=budget - released)
            self.c.pause(*behind)
            if not batch:
                break
            records = [InRecord(m.topic, m.partition, m.offset, m.key, m.value,
                                [(k, bytes(v)) for k, v in (m.headers or ())], m.timestamp)
                       for msgs in batch.values() for m in msgs]
            result = self.core.process(records, released=True)
            try:
                await sender.send_all(result.outputs)
            except KafkaError:
                # not committed: the same records are released again on the next step
                log.exception("release batch not acknowledged; will retry")
                for tp, msgs in batch.items():
                    self.c.seek(tp, msgs[0].offset)
                return released
            self.core.ack_parks(result)
            self.runtime.after_batch(result)
            try:
                await self.c.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})
            except (CommitFailedError, IllegalStateError) as exc:
                log.warning("release commit failed; records will be released again", extra={"error": repr(exc)})
            released += len(records)
        # drained: read up to the end, nothing parked since the end was read, no park in flight
        for ep, tp in zip(ready, tps, strict=True):
            if self.core.park_unacked[ep] == 0 and self.core.park_seq[ep] == seq_now[ep] and \
                    await self.c.position(tp) >= end[tp]:
                self.core.backlog.discard(ep)
                self.seq_seen.pop(ep, None)
                log.info("park partition drained", extra={"etapp": ep[0], "partition": ep[1]})
        return released

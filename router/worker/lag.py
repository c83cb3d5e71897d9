"""``samex_consumer_lag``: records behind the end of each inbound partition this worker owns.

Updated two ways. After each acknowledged batch, from the consumer's high watermark (fresh, free).
And every few seconds for every assigned partition, from the broker's end offsets: so the gauge
keeps growing while the hot path is stuck (a batch that never completes updates nothing), and a
partition without traffic still shows. A partition that moves to another worker loses its series
here at once (on revocation, and at the next report), so that the workers' series never overlap:
summed over workers they are the group's lag, not more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka.errors import KafkaError

log = logging.getLogger("samex.worker")


class LagReporter:
    def __init__(self, consumer: Any, gauge: Any, interval_s: float = 5.0) -> None:
        self.c = consumer
        self.gauge = gauge
        self.interval_s = interval_s
        self.done: dict[Any, int] = {}  # partition -> next offset to decide, from acknowledged batches
        self.shown: set[Any] = set()  # partitions this worker exports a series for
        # The partitions this worker owns, as the rebalance listener says (``assigned`` / ``forget``).
        # Not the consumer's assignment(): aiokafka still lists revoked partitions until the new
        # assignment arrives, and a batch or report finishing meanwhile would bring their series back.
        # None until the first assignment (then the consumer's own view is all there is).
        self.owned: set[Any] | None = None
        self.task: asyncio.Task[None] | None = None

    def _owned(self) -> set[Any]:
        return set(self.c.assignment()) if self.owned is None else self.owned

    def assigned(self, tps: Any) -> None:
        """The rebalance listener's new assignment."""
        self.owned = set(tps)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())
        self.task.add_done_callback(self._ended)

    @staticmethod
    def _ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("consumer lag reporting stopped", extra={"error": repr(task.exception())[:300]})

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def acknowledged(self, tp: Any, last_offset: int) -> None:
        """A batch up to ``last_offset`` of ``tp`` is acknowledged: update its lag now."""
        if tp not in self._owned():
            return
        self.done[tp] = last_offset + 1
        try:
            hw = self.c.highwater(tp)
        except AssertionError:  # aiokafka asserts when a rebalance took the partition meanwhile
            return
        if hw is not None:
            self._set(tp, hw - last_offset - 1)

    def forget(self, tps: Any) -> None:
        """Partitions moved away (the rebalance listener): drop their series."""
        tps = set(tps)
        self.owned = self._owned() - tps
        self._drop(tps)

    def _drop(self, tps: Any) -> None:
        for tp in tps:
            self.done.pop(tp, None)
            if tp in self.shown:
                self.shown.discard(tp)
                with contextlib.suppress(KeyError):
                    self.gauge.remove(tp.topic, str(tp.partition))

    def _set(self, tp: Any, lag: int) -> None:
        self.gauge.labels(tp.topic, str(tp.partition)).set(max(0, lag))
        self.shown.add(tp)

    async def report(self) -> None:
        """Every owned partition's lag from the broker's end offsets; series of others dropped."""
        assigned = set(self._owned())
        self._drop([tp for tp in {*self.done, *self.shown} if tp not in assigned])
        if not assigned:
            return
        ends = await self.c.end_offsets(list(assigned))
        for tp in assigned:
            done = self.done.get(tp)
            if done is None:  # nothing decided here yet: from the group's committed offset
                # (aiokafka retries committed() while the coordinator is unknown: bounded here)
                done = await asyncio.wait_for(self.c.committed(tp), self.interval_s)
                if done is None:
                    done = (await self.c.beginning_offsets([tp]))[tp]
            if tp in self._owned():  # still ours after the awaits
                self._set(tp, ends[tp] - done)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.report()
            except asyncio.CancelledError:
                raise
            except (KafkaError, AssertionError, KeyError, TimeoutError) as exc:  # a rebalance or the broker
                log.info("consumer lag not reported this round", extra={"error": repr(exc)[:300]})
            except Exception as exc:  # anything else: say so, and keep reporting
                log.warning("consumer lag not reported this round", extra={"error": repr(exc)[:300]})

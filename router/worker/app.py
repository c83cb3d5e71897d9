"""The faust app of `samex worker`: one agent routes the inbound topic in batches, a task follows
the control topic, and the web server serves /metrics, /status and /healthz.

Delivery: the agent runs with concurrency 1 (faust bug #606) and takes events in batches with
``take_events``; faust acks a batch's events only after the loop body returns, and the body only
returns after every output record of the batch is acknowledged by the broker (acks=all,
idempotent producer). faust then commits acked offsets. So an input offset is committed only
after everything it produced is durable: at-least-once, with duplicates identifiable by message id.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections import deque
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.codec import default_codec
from router.errors import RulesError
from router.kafkaio import producer
from router.metrics import EtappView, WorkerMetrics
from router.rules.engine import Engine
from router.rules.load import load_rules
from router.settings import Settings
from router.timeutil import fmt_ms
from router.worker.control import ControlState, follow_control
from router.worker.core import InRecord, OutRecord, RouterCore, observe_since_ms

log = logging.getLogger("samex.worker")


class WorkerRuntime:
    """State shared by the agent, the control task and the web pages of one worker process."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = WorkerMetrics(self.registry)
        self.codec = default_codec()
        try:
            engine = Engine(load_rules(settings.rules_dir))
        except RulesError as exc:
            raise RulesError([f"cannot start: the rule set in {settings.rules_dir} is invalid", *exc.problems]) \
                from exc
        self.control = ControlState(engine, on_rules=self._on_rules, on_refused=self._on_refused)
        self.core = RouterCore(settings, self.codec, self.metrics, engine, self.control.states, settings.worker_id)
        self.metrics.set_rules(engine.version, time.time())
        self.metrics.etapp_view = self.etapp_view
        self.caught_up = asyncio.Event()
        self.stop_event = asyncio.Event()
        self.producer: Any = None
        self.counts = {"in": 0, "routed": 0, "parked": 0, "dead_letter": 0, "batches": 0}
        self.recent_dead: deque[dict[str, Any]] = deque(maxlen=20)
        self.started_ms = int(time.time() * 1000)
        self.app: faust.App | None = None
        self.consumer: Any = None
        self.orders: Any = None
        self.orderbook: Any = None
        self.releaser: Any = None
        self.last_batch_at = 0.0

    # -- control callbacks ------------------------------------------------------------------------
    def _on_rules(self, engine: Engine) -> None:
        self.core.engine = engine
        self.metrics.set_rules(engine.version, time.time())

    def _on_refused(self, reason: str, problems: list[str]) -> None:
        self.metrics.rules_refused.labels(reason).inc()

    def etapp_view(self) -> list[EtappView]:
        """Each etapp of the active rule set as it routes now (the samex_etapp_* series)."""
        engine = self.core.engine
        now = int(time.time() * 1000)
        states = self.control.states.at(now)
        out = []
        for etapp, golive in engine.golive_ms.items():
            cur = self.control.states.current(etapp, now)
            live, state = engine.is_live(etapp, now, states)
            until = (cur.hold_until_ms or 0) / 1000 if cur and cur.state == "hold" else 0
            out.append(EtappView(etapp, state or "scheduled", cur.effective_ms / 1000 if cur else None,
                                 golive / 1000, until, live and state != "hold"))
        return out

    # -- the hot path -----------------------------------------------------------------------------
    async def wait_tables(self, timeout_s: float = 60.0) -> None:
        """Wait until the order table is recovered from its changelog (results must find orders)."""
        if self.app is None or self.orders is None:
            return
        try:
            await asyncio.wait_for(self.app.tables.recovery.completed.wait(), timeout_s)  # type: ignore[attr-defined]
        except TimeoutError:
            log.warning("order table recovery not complete; routing anyway (results may fall back to the rules)")

    async def start_producer(self) -> None:
        if self.producer is None:
            self.producer = producer(self.settings.kafka_bootstrap, linger_ms=self.settings.linger_ms,
                                     client_id=f"samex-{self.settings.worker_id}")
            await self.producer.start()

    async def send_all(self, outs: list[OutRecord]) -> None:
        """Send and wait until the broker acknowledged every record (acks=all); retry the whole list
        a few times on failure (duplicates are fine: downstream deduplicates by message id)."""
        for attempt in range(5):
            try:
                futs = [await self.producer.send(o.topic, o.value, key=o.key, headers=o.headers) for o in outs]
                await asyncio.gather(*futs)
                return
            except Exception as exc:
                log.error("send failed; retrying the batch", extra={"attempt": attempt + 1, "error": repr(exc)})
                await asyncio.sleep(min(0.2 * 2**attempt, 3))
        raise RuntimeError("could not write a batch's outputs after 5 attempts; stopping without committing")

    async def handle(self, events: list[Any]) -> None:
        if not self.caught_up.is_set():
            await self.caught_up.wait()
        await self.start_producer()
        records = [
            InRecord(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value,
                     [(k, bytes(v)) for k, v in (e.message.headers or ())], e.message.timestamp)
            for e in events
        ]
        self.metrics.batch_records.observe(len(records))
        result = self.core.process(records)
        await self.send_all(result.outputs)
        self.core.ack_parks(result)
        self.after_batch(result)
        self._update_lag(events)

    def after_batch(self, result: Any) -> None:
        observe_since_ms(self.metrics.end_to_end_seconds, time.time() * 1000, result.routed_received_ms)
        if self._count(result):
            self._log_dead_letters(result.outputs)

    def _log_dead_letters(self, outputs: list[OutRecord]) -> None:
        """One JSON log line per dead letter: message id, trace id and reason code, never the content."""
        for o in outputs:
            if o.topic == self.settings.deadletter_topic:
                d = self.codec.decode_as("deadletter", o.value)
                log.warning("message dead-lettered", extra={
                    "message_id": d["message_id"], "trace_id": d["trace_id"], "reason_code": d["reason_code"],
                    "stage": d["stage"], "input": f"{d['source']['topic']}:{d['source']['partition']}:"
                                                   f"{d['source']['offset']}"})

    def _count(self, result: Any) -> int:
        """Count the batch's outcomes for the status page; returns the number of dead letters."""
        c = self.counts
        c["batches"] += 1
        c["in"] += len(result.decisions)
        routed = parked = dead = 0
        for mid, d in result.decisions:
            outcome = d.outcome if d is not None else "dead_letter"
            if outcome == "routed":
                routed += 1
            elif outcome == "park":
                parked += 1
            else:
                dead += 1
                self.recent_dead.append({"at": fmt_ms(int(time.time() * 1000)), "message_id": mid,
                                         "reason": d.reason if d else "undecodable input",
                                         "code": d.reason_code if d else "undecodable"})
        c["routed"] += routed
        c["parked"] += parked
        c["dead_letter"] += dead
        return dead

    def _update_lag(self, events: list[Any]) -> None:
        if self.app is None:
            return
        last: dict[tuple[str, int], int] = {}
        for e in events:
            last[(e.message.topic, e.message.partition)] = e.message.offset
        for (topic, partition), offset in last.items():
            try:
                hw = self.app.consumer.highwater(faust.types.TP(topic, partition))
            except Exception:
                continue
            if hw is not None:
                self.metrics.consumer_lag.labels(topic, str(partition)).set(max(0, hw - offset - 1))

    # -- status -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        engine = self.core.engine
        now = int(time.time() * 1000)
        states = self.control.states.at(now)
        etapper = []
        for e in engine.rules.plan.etapper:
            cur = self.control.states.current(e.id, now)
            live, state = engine.is_live(e.id, now, states)
            etapper.append({"etapp": e.id, "name": e.name, "go_live": fmt_ms(engine.golive_ms[e.id]),
                            "state": state or "scheduled",
                            "routes_as": "parked" if state == "hold" else ("live" if live else "not live"),
                            "since": fmt_ms(cur.effective_ms) if cur else "-",
                            "hold_until": fmt_ms(cur.hold_until_ms) if cur and cur.state == "hold"
                            and cur.hold_until_ms else "-",
                            "why": cur.why if cur else ""})
        return {"worker": self.settings.worker_id, "rules_version": engine.version, "etapper": etapper,
                "counts": dict(self.counts), "recent_dead_letters": list(self.recent_dead),
                "started": fmt_ms(self.started_ms)}


def status_html(s: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(x['etapp'])}</td><td>{e(x['name'])}</td><td>{e(x['go_live'])}</td>"
                   f"<td class='{e(x['state'])}'>{e(x['state'])}</td><td>{e(x['routes_as'])}</td>"
                   f"<td>{e(x['since'])}</td><td>{e(x['hold_until'])}</td><td>{e(x['why'])}</td></tr>"
                   for x in s["etapper"])
    counts = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in s["counts"].items())
    dead = "".join(f"<tr><td>{e(d['at'])}</td><td>{e(d['message_id'])}</td><td>{e(d['code'])}</td>"
                   f"<td>{e(d['reason'])}</td></tr>" for d in reversed(s["recent_dead_letters"])) or \
        "<tr><td colspan=4>none</td></tr>"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>samex {e(s['worker'])}</title>
<meta http-equiv="refresh" content="5"><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;
margin-bottom:1.5em}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.hold{{background:#fe9}}
.paused,.rolled_back{{background:#fcc}}.live{{background:#cfc}}</style></head><body>
<h1>samex worker {e(s['worker'])}</h1><p>Rules version <b id="rules-version">{e(s['rules_version'])}</b>;
started {e(s['started'])}.</p>
<h2>Etapper</h2><table id="etapper"><tr><th>etapp</th><th>name</th><th>planned go-live</th><th>state</th>
<th>routes as</th><th>since</th><th>hold until</th><th>why</th></tr>{rows}</table>
<h2>Counts</h2><table id="counts">{counts}</table>
<h2>Latest dead letters</h2><table id="dead-letters"><tr><th>at</th><th>message id</th><th>code</th><th>reason</th>
</tr>{dead}</table><p><a href="/metrics">/metrics</a></p></body></html>"""


def build_app(settings: Settings, runtime: WorkerRuntime | None = None) -> tuple[faust.App, WorkerRuntime]:
    runtime = runtime or WorkerRuntime(settings)
    datadir = settings.state_dir / "faust" / settings.worker_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    brokers = [f"kafka://{b.strip()}" for b in settings.kafka_bootstrap.split(",") if b.strip()]
    # The faust app (tables, control, web) has its own group; the hot path's consumer group is
    # settings.group_id (the two use different assignment protocols and cannot share a group).
    app = faust.App(
        f"{settings.group_id}-app",
        broker=brokers,
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        topic_disable_leader=True,
        broker_commit_interval=0.5,
        # a killed worker's faust membership expires quickly, so a restart or a peer takes over fast
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=20.0,
        stream_buffer_maxsize=max(4096, settings.batch_max * 2),
        autodiscover=False,
        datadir=str(datadir),
        producer_linger_ms=settings.linger_ms,
    )
    runtime.app = app
    # Where each open order/referral was placed (placer order number / referral id -> system).
    # A changelog-backed GlobalTable: every worker holds all entries and recovers them from the
    # changelog on restart. (faust's advice for GlobalTables with several instances:
    # partitions=1, recovery_buffer_size=1.)
    runtime.orders = app.GlobalTable(
        "samex-orders", key_type=str, value_type=str,
        partitions=1, recovery_buffer_size=1, use_partitioner=True, default=None,
    )
    from router.worker.orders import OrderBook, orders_changelog_topic

    # the table's store is written directly; the changelog records travel with the batch outputs
    # (the memory store keeps its entries in a plain dict: read and write that, not through the
    # store's Mapping methods, which were about 2 % of the hot path's time in a profile)
    store = runtime.orders.data
    book = store.data if isinstance(getattr(store, "data", None), dict) else store
    runtime.orderbook = OrderBook(book, lambda: runtime.core.engine, runtime.control.states,
                                  orders_changelog_topic(settings))
    runtime.core.hooks.append(runtime.orderbook)
    inbound = app.topic(settings.inbound_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                        value_serializer="raw")

    if settings.hot_path == "faust-agent":
        # faust's own stream path, kept for comparison in bench/throughput.py
        @app.agent(inbound, concurrency=1, name="samex-route")
        async def route(stream: faust.StreamT) -> None:
            async for events in stream.take_events(settings.batch_max, within=0.005):  # type: ignore[attr-defined]
                await runtime.handle(list(events))
    else:
        @app.task
        async def hot_path() -> None:
            from router.worker.hotpath import run_hot_path

            await run_hot_path(runtime, runtime.stop_event)

    @app.on_before_shutdown.connect  # type: ignore[misc,arg-type]
    async def _stop(app: Any, **kwargs: Any) -> None:
        runtime.stop_event.set()

    @app.task
    async def control() -> None:
        await follow_control(settings, runtime.control, runtime.stop_event, runtime.caught_up)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(runtime.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/status")
    async def status(web: Any, request: Any) -> Any:
        s = runtime.status()
        if "json" in request.query_string or "application/json" in request.headers.get("Accept", ""):
            return web.json(s)
        return web.html(status_html(s))

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"ok": True, "caught_up": runtime.caught_up.is_set(),
                         "rules_version": runtime.core.engine.version})

    return app, runtime

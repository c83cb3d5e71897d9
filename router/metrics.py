"""Prometheus metrics of samex processes. The registry is passed in (tests inspect it).

No label ever carries a patient identifier or a message id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from router.decision import ETAPP_STATES

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 1500, 2000, 5000)
DECISION_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2)

prometheus_client.disable_created_metrics()  # no *_created series: less noise for operators


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.messages_in = Counter("samex_messages_in", "Inbound messages by source and kind",
                                   ["source", "kind"], registry=r)
        self.routed = Counter("samex_routed", "Messages routed, by kind, destination, etapp and rule",
                              ["kind", "destination", "etapp", "rule"], registry=r)
        self.dead_letters = Counter("samex_dead_letters", "Messages dead-lettered, by reason code and stage",
                                    ["reason", "stage"], registry=r)
        self.parked = Counter("samex_parked", "Messages parked because their etapp is on hold", ["etapp"],
                              registry=r)
        self.released = Counter("samex_released", "Parked messages released and routed", ["etapp"], registry=r)
        self.parked_waiting = Gauge("samex_parked_messages", "Parked messages not yet released", ["etapp"],
                                    registry=r)
        self.decision_seconds = Histogram("samex_decision_seconds", "Time to decide one message",
                                          buckets=DECISION_BUCKETS, registry=r)
        self.end_to_end_seconds = Histogram("samex_end_to_end_seconds",
                                            "From the envelope's received time to routed (acknowledged)",
                                            buckets=LATENCY_BUCKETS, registry=r)
        # records per poll: a worker that keeps up sees small batches; one that is behind should see
        # full ones (SAMEX_BATCH_MAX). Small batches under lag mean the fetch, not the routing, sets the pace.
        self.batch_records = Histogram("samex_batch_records", "Inbound records per batch on the hot path",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.rules_info = Gauge("samex_rules_info", "Active rule-set version (1 = active)", ["version"],
                                registry=r)
        self.rules_refused = Counter("samex_rules_refused", "Rule sets refused at load", ["reason"], registry=r)
        self.rules_loaded = Gauge("samex_rules_loaded_timestamp_seconds", "When the active rule set was loaded",
                                  registry=r)
        self.consumer_lag = Gauge("samex_consumer_lag", "Records behind the end of the partition",
                                  ["topic", "partition"], registry=r)
        self.last_message = Gauge("samex_last_message_timestamp_seconds",
                                  "Receive time of the last message per source (for silence alerts)", ["source"],
                                  registry=r)
        # The etapp series are computed at each scrape (EtappCollector) from what ``etapp_view`` returns:
        # a state change takes effect at its effective instant and a go-live at its planned instant,
        # with no event in the worker at either moment to update a gauge.
        self.etapp_view: Callable[[], Iterable[EtappView]] = tuple
        r.register(EtappCollector(lambda: self.etapp_view()))
        self._active_version: str | None = None

    def set_rules(self, version: str, loaded_at_s: float) -> None:
        if self._active_version is not None and self._active_version != version:
            self.rules_info.labels(self._active_version).set(0)
        self.rules_info.labels(version).set(1)
        self._active_version = version
        self.rules_loaded.set(loaded_at_s)


@dataclass(frozen=True, slots=True)
class EtappView:
    """One etapp as the worker routes it now."""

    etapp: str
    state: str  # the operational state in force (ETAPP_STATES)
    since_s: float | None  # when that state took effect; None when the etapp never had a change
    golive_s: float
    hold_until_s: float  # the planned end of a hold; 0 = none
    live: bool  # routes as live now (state live, or scheduled and past its go-live)


class EtappCollector:
    """``samex_etapp_*`` series from the worker's state book, read at scrape time."""

    def __init__(self, view: Callable[[], Iterable[EtappView]]) -> None:
        self.view = view

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("samex_etapp_state", "Operational state per etapp (1 = in force now)",
                              labels=["etapp", "state"]),
            GaugeMetricFamily("samex_etapp_live", "1 when the etapp routes as live now (state live, or "
                              "scheduled and past its go-live); 0 when not live, on hold, paused or rolled back",
                              labels=["etapp"]),
            GaugeMetricFamily("samex_etapp_state_since_timestamp_seconds",
                              "When the etapp's state in force took effect (absent: never changed)", labels=["etapp"]),
            GaugeMetricFamily("samex_etapp_golive_timestamp_seconds", "Planned go-live of the etapp",
                              labels=["etapp"]),
            GaugeMetricFamily("samex_etapp_hold_until_timestamp_seconds", "Planned end of a hold in force (0 = none)",
                              labels=["etapp"]),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state, live, since, golive, until = self._families()
        for e in self.view():
            for s in ETAPP_STATES:
                state.add_metric([e.etapp, s], 1 if s == e.state else 0)
            live.add_metric([e.etapp], 1 if e.live else 0)
            if e.since_s is not None:
                since.add_metric([e.etapp], e.since_s)
            golive.add_metric([e.etapp], e.golive_s)
            until.add_metric([e.etapp], e.hold_until_s)
        yield from (state, live, since, golive, until)


DELIVERY_OUTCOMES = ("acknowledged", "rejected", "skipped_duplicate")  # schemas/delivery.avsc


class ConnectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.registry = registry
        self.deliveries = Counter("samex_deliveries", "Delivery outcomes per destination system",
                                  ["system", "outcome"], registry=r)
        self.refusals = Counter("samex_delivery_refusals", "Refused or failed delivery attempts",
                                ["system", "reason"], registry=r)
        self.delivery_seconds = Histogram("samex_delivery_seconds", "Time from send to acknowledgement",
                                          ["system"], buckets=LATENCY_BUCKETS, registry=r)
        self.outbound_lag = Gauge("samex_outbound_lag", "Records waiting for delivery", ["system"], registry=r)
        self.inbound = Counter("samex_inbound", "Inbound messages by connector and answer",
                               ["connector", "outcome"], registry=r)
        # not samex_messages_in_total: that is the workers' count of the same messages, and a sum over
        # every scraped process would count each message twice
        self.messages_in = Counter("samex_connector_messages_in", "Messages a connector wrote to the inbound topic, "
                                   "by source and kind", ["source", "kind"], registry=r)
        self.dead_letters = Counter("samex_dead_letters", "Messages dead-lettered, by reason code and stage",
                                    ["reason", "stage"], registry=r)

    # Series that exist from the first scrape at 0, so that rate()/increase() and the alerts see the
    # first refusal or delivery (a series that appears at 1 has no increase to show).
    def init_outbound(self, system: str, refusal_reasons: tuple[str, ...]) -> None:
        for outcome in DELIVERY_OUTCOMES:
            self.deliveries.labels(system, outcome)
        for reason in refusal_reasons:
            self.refusals.labels(system, reason)
        self.delivery_seconds.labels(system)
        self.outbound_lag.labels(system).set(0)

    def init_inbound(self, connector: str, outcomes: tuple[str, ...]) -> None:
        for outcome in outcomes:
            self.inbound.labels(connector, outcome)

"""Prometheus metrics of samex processes. The registry is passed in (tests inspect it).

No label ever carries a patient identifier or a message id.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.etapp_state = Gauge("samex_etapp_state", "Operational state per etapp (1 = current)",
                                 ["etapp", "state"], registry=r)
        self.etapp_since = Gauge("samex_etapp_state_since_timestamp_seconds", "Since when the etapp has its state",
                                 ["etapp"], registry=r)
        self.etapp_golive = Gauge("samex_etapp_golive_timestamp_seconds", "Planned go-live of the etapp",
                                  ["etapp"], registry=r)
        self.etapp_hold_until = Gauge("samex_etapp_hold_until_timestamp_seconds",
                                      "Planned end of a hold (0 = none)", ["etapp"], registry=r)
        self._active_version: str | None = None

    def set_rules(self, version: str, loaded_at_s: float) -> None:
        if self._active_version is not None and self._active_version != version:
            self.rules_info.labels(self._active_version).set(0)
        self.rules_info.labels(version).set(1)
        self._active_version = version
        self.rules_loaded.set(loaded_at_s)

    def set_etapp(self, etapp: str, state: str, since_s: float, golive_s: float, hold_until_s: float) -> None:
        for s in ETAPP_STATES:
            self.etapp_state.labels(etapp, s).set(1 if s == state else 0)
        self.etapp_since.labels(etapp).set(since_s)
        self.etapp_golive.labels(etapp).set(golive_s)
        self.etapp_hold_until.labels(etapp).set(hold_until_s)


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
        self.messages_in = Counter("samex_messages_in", "Inbound messages by source and kind",
                                   ["source", "kind"], registry=r)
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

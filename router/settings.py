"""One frozen settings object for every samex process (environment prefix ``SAMEX_``).

Component configuration derives from it; nothing else reads the environment.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Development key for the patient hash. Real deployments set SAMEX_PATIENT_KEY.
DEV_PATIENT_KEY = "samex-dev-patient-key-not-for-production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAMEX_", frozen=True, extra="ignore")

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="bootstrap servers, comma separated")
    inbound_topic: str = Field("samex.in", description="envelopes to route (keyed by the patient hash)")
    decisions_topic: str = Field("samex.decisions", description="one decision record per input message")
    deadletter_topic: str = Field("samex.deadletter", description="input that cannot be decoded or routed")
    deliveries_topic: str = Field("samex.deliveries", description="outbound connectors' delivery records")
    control_topic: str = Field("samex.control", description="compacted: rule sets, etapp states, replay audits")
    out_topic_prefix: str = Field("samex.out.", description="destination topic = prefix + system id")
    park_topic_prefix: str = Field("samex.park.", description="park topic = prefix + etapp id")
    group_id: str = Field("samex-router", description="consumer group of the router workers")
    partitions: int = Field(6, ge=1, description="partitions for topics samex creates")
    replication_factor: int = Field(1, ge=1, description="replication factor for topics samex creates")
    max_record_bytes: int = Field(1_000_000, ge=1024, description="larger inbound records are dead-lettered")
    batch_max: int = Field(2000, ge=1, description="records per poll on the hot path")
    linger_ms: int = Field(
        0, ge=0, description="how long the producer holds a batch for more records; the hot path builds whole "
        "batches itself, so waiting only adds latency (measured: steady p50/p99 at 1,000 msg/s fell with 0)")
    fetch_max_wait_ms: int = Field(
        5, ge=0, le=500, description="longest the broker holds the hot path's fetch: aiokafka has one fetch in flight "
        "per broker, so a partition with new data can wait this long behind a fetch for the others")
    commit_interval_ms: int = Field(
        1000, ge=0, le=60_000, description="shortest time between two offset commits of the hot path (0: commit "
        "after every acknowledged batch); only acknowledged offsets are ever committed, and a rebalance or a clean "
        "stop commits at once, so a longer interval only means more re-processing after a crash")
    lag_report_interval_s: float = Field(
        5.0, gt=0, le=300, description="how often each worker reports samex_consumer_lag for every partition it owns "
        "from the broker's end offsets (besides after each batch), so that lag shows while the hot path is stuck")
    etapp_lead_ms: int = Field(1000, ge=0, description="an etapp change without --at takes effect this long after "
                               "it is published, so that every worker has it before it applies")
    etapp_max_backdate_s: int = Field(300, ge=0, description="how far in the past --at may lie")
    gc_young_threshold: int = Field(
        50_000, ge=0, description="net allocations between collections of Python's youngest GC generation on the "
        "hot path (Python's default is 700; 0 keeps it)")
    release_batch_max: int = Field(500, ge=1, description="parked records re-decided per step of a release")
    hot_path: Literal["batched", "faust-agent"] = Field(
        "batched", description="batched aiokafka loop inside the faust app, or faust's per-event agent")

    # Privacy
    patient_key: SecretStr = Field(SecretStr(DEV_PATIENT_KEY), description="key of the keyed patient hash "
                                   "(Kafka keys, trace index); set it in every real deployment")

    # Rules
    rules_dir: Path = Field(Path("rules"), description="rule folder used until a rule set is published")

    # Worker web server (/metrics, /status)
    web_host: str = Field("127.0.0.1", description="address of the worker's /metrics and /status")
    web_port: int = Field(6066, ge=0, le=65535, description="port of the worker's /metrics and /status")
    worker_id: str = Field("worker-1", description="name of this worker in metrics, logs and decision records")

    # Stores
    state_dir: Path = Field(Path(".samex"), description="local state: faust tables, delivery dedup stores, trace index")
    index_url: str = Field("", description="trace index: sqlite path (default under state_dir) or postgresql:// URL")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["json", "text"] = Field("json", description="json (one object per line) or text")

    def out_topic(self, system: str) -> str:
        return f"{self.out_topic_prefix}{system}"

    def park_topic(self, etapp: str) -> str:
        return f"{self.park_topic_prefix}{etapp}"

    @cached_property
    def patient_key_bytes(self) -> bytes:
        return self.patient_key.get_secret_value().encode()


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]

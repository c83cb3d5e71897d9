"""The local broker helper: cached jars, free ports, version in one place."""

import shutil

import pytest

from router import localkafka
from router.localkafka import LocalKafka, kafka_version, resolve_jars


def test_version_is_set_in_one_place(monkeypatch):
    monkeypatch.delenv("SAMEX_KAFKA_VERSION", raising=False)
    assert kafka_version() == localkafka.KAFKA_VERSION == "3.9.2"
    monkeypatch.setenv("SAMEX_KAFKA_VERSION", "4.1.0")
    assert kafka_version() == "4.1.0"


def test_second_resolve_downloads_nothing(monkeypatch):
    lib = resolve_jars()  # the first call (make kafka-jars) fetched them
    monkeypatch.setattr(shutil, "which", lambda _name: None)  # no Maven: must not be needed
    monkeypatch.setattr(localkafka.subprocess, "run", lambda *a, **k: pytest.fail("ran a download"))
    assert resolve_jars() == lib
    assert any(lib.glob("kafka_2.13-*.jar")) and any(lib.glob("reload4j-*.jar"))


def test_a_broker_failure_reports_the_log_tail(monkeypatch):
    # A broker whose config is broken must fail with its output, not hang or pass silently.
    broker = LocalKafka(start_timeout=20)
    monkeypatch.setattr(localkafka, "_server_properties", lambda *a, **k: "process.roles=nonsense\n")
    with pytest.raises(localkafka.LocalKafkaError) as err:
        broker.start()
    assert "process.roles" in str(err.value), str(err.value)[-2000:]

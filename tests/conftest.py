"""Shared fixtures. The ``kafka_bootstrap`` fixture starts one real broker per session.

A test that needs Kafka carries ``@pytest.mark.kafka`` and requests ``kafka_bootstrap``. If no
broker can be started the test FAILS with the broker's log tail; it never skips.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from router.localkafka import LocalKafka, LocalKafkaError, broker_from_env

REPO = Path(__file__).resolve().parent.parent
_broker_state: dict[str, object] = {}


# Property tests check properties, not speed: no per-example deadline on a shared, noisy machine.
hypothesis_settings.register_profile("samex", deadline=None)
hypothesis_settings.load_profile("samex")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A SIGTERM (CI time limit, `timeout`) ends the session like Ctrl-C, so fixtures and the tests'
    # `finally` blocks stop the broker and the worker processes instead of leaving them running.
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    existing = broker_from_env()
    if existing:
        yield existing
        return
    if "error" in _broker_state:
        pytest.fail(str(_broker_state["error"]), pytrace=False)
    broker = LocalKafka()
    try:
        broker.start()
    except LocalKafkaError as exc:
        _broker_state["error"] = f"the Kafka broker could not start:\n{exc}"
        pytest.fail(str(_broker_state["error"]), pytrace=False)
    os.environ["SAMEX_TEST_BROKER_LOG"] = str(broker.log_path)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix so tests sharing the session broker never see each other's topics."""
    return f"t{uuid.uuid4().hex[:8]}."


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Every kafka-marked test gets the broker fixture, so none can run without a broker.
    for item in items:
        if item.get_closest_marker("kafka") and "kafka_bootstrap" not in getattr(item, "fixturenames", []):
            item.fixturenames.append("kafka_bootstrap")  # type: ignore[attr-defined]

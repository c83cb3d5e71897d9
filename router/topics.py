"""Create the topics samex uses (idempotently) with the admin client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from router.settings import Settings

COMPACTED = {"cleanup.policy": "compact"}


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 6,
    replication: int = 1,
    compacted: Iterable[str] = (),
) -> None:
    compacted = set(compacted)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in dict.fromkeys(names) if n not in existing]
        if not wanted:
            return
        topics = [
            NewTopic(
                name=n,
                num_partitions=1 if n in compacted else partitions,
                replication_factor=replication,
                topic_configs=COMPACTED if n in compacted else {},
            )
            for n in wanted
        ]
        with contextlib.suppress(TopicAlreadyExistsError):
            resp = await admin.create_topics(topics)
            for name, code, *_ in getattr(resp, "topic_errors", []):
                if code not in (0, 36):  # 36 = TOPIC_ALREADY_EXISTS
                    raise RuntimeError(f"cannot create topic {name}: error code {code}")
    finally:
        await admin.close()


def router_topics(settings: Settings, systems: Iterable[str], etapper: Iterable[str]) -> list[str]:
    return [
        settings.inbound_topic,
        settings.decisions_topic,
        settings.deadletter_topic,
        settings.deliveries_topic,
        *(settings.out_topic(s) for s in systems),
        *(settings.park_topic(e) for e in etapper),
    ]


async def ensure_router_topics(settings: Settings, systems: Iterable[str], etapper: Iterable[str]) -> None:
    from router.worker.orders import orders_changelog_topic

    # the order book's changelog (a faust GlobalTable: one partition), created here so that a
    # worker never waits for faust to declare it while its peers start
    book = orders_changelog_topic(settings)
    await ensure_topics(settings.kafka_bootstrap, [book], partitions=1, replication=settings.replication_factor,
                        compacted=[book])
    await ensure_topics(
        settings.kafka_bootstrap,
        [*router_topics(settings, systems, etapper), settings.control_topic],
        partitions=settings.partitions,
        replication=settings.replication_factor,
        compacted=[settings.control_topic],
    )

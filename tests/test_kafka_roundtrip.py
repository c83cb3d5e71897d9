"""10,000 envelopes through a real broker: byte-identical, in per-key order."""

import asyncio
import random
import time
from collections import defaultdict

import pytest

from router.codec import default_codec
from router.envelope import record_key
from router.kafkaio import consumer, producer
from router.synth import load_units, traffic
from router.topics import ensure_topics

pytestmark = pytest.mark.kafka
KEY = b"test-key"


async def test_ten_thousand_envelopes_roundtrip(kafka_bootstrap, topic_prefix):
    topic = topic_prefix + "roundtrip"
    await ensure_topics(kafka_bootstrap, [topic], partitions=6)
    codec = default_codec()
    gen = traffic(random.Random(7), load_units(), int(time.time() * 1000), patients=300)
    sent: list[tuple[bytes, bytes]] = []
    for _ in range(10_000):
        rec = next(gen)
        sent.append((record_key(rec, KEY), codec.encode("envelope", rec)))
    p = producer(kafka_bootstrap)
    await p.start()
    try:
        futures = [await p.send(topic, value=v, key=k) for k, v in sent]
        metas = await asyncio.gather(*futures)
    finally:
        await p.stop()
    assert len(metas) == 10_000

    c = consumer(kafka_bootstrap, topic)
    await c.start()
    got: list = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < 10_000 and time.monotonic() < deadline:
            for recs in (await c.getmany(timeout_ms=500, max_records=5000)).values():
                got.extend(recs)
    finally:
        await c.stop()
    assert len(got) == 10_000

    # byte-identical: the multiset of (key, value) read equals what was written
    assert sorted((r.key, r.value) for r in got) == sorted(sent)
    # per-key order: within a partition, each key's values come in send order
    expected: dict[bytes, list[bytes]] = defaultdict(list)
    for k, v in sent:
        expected[k].append(v)
    actual: dict[bytes, list[bytes]] = defaultdict(list)
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    for r in sorted(got, key=lambda r: (r.partition, r.offset)):
        actual[r.key].append(r.value)
        partitions_of_key[r.key].add(r.partition)
    assert actual == expected
    assert all(len(ps) == 1 for ps in partitions_of_key.values())
    assert len(expected) > 100  # many keys, spread over partitions
    assert len({r.partition for r in got}) == 6
    # and every value still decodes to the same envelope
    for r in got[:500]:
        assert codec.decode(r.value)[0] == "envelope"


async def test_producer_settings_are_acks_all_with_idempotence():
    p = producer("127.0.0.1:1")
    assert p.client._bootstrap_servers == "127.0.0.1:1"
    assert p._txn_manager is not None  # idempotence enabled
    assert p._sender._acks == -1  # acks=all

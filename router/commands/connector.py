"""``samex connector`` (mllp-in, mllp-out; fhir-in, fhir-out when the FHIR connectors are present)
and ``samex simulate`` (systems, senders; the FHIR simulators likewise)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from connectors.common import BOOTSTRAP, check_system
from connectors.common import settings_for as _settings
from connectors.common import stop_event as _stop_event

METRICS_PORT = click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
                            help="serve Prometheus /metrics on this port (default: none)")


def _metrics(port: int | None, init: Callable[[Any], None]):  # type: ignore[no-untyped-def]
    """The connector's metrics, its series created at 0 by `init` before /metrics is served: a scrape
    that comes before the connector has started must already see them."""
    from prometheus_client import CollectorRegistry, start_http_server

    from router.metrics import ConnectorMetrics

    metrics = ConnectorMetrics(CollectorRegistry())
    init(metrics)
    if port is not None:  # on SAMEX_WEB_HOST, like the workers (0.0.0.0 in the compose stack)
        start_http_server(port, addr=_settings(None).web_host, registry=metrics.registry)
    return metrics


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{text!r}: write HOST:PORT")
    return host, int(port)


@click.group("connector")
def connector() -> None:
    """Protocol connectors between Kafka and the care systems: HL7 v2 over MLLP (and FHIR R4)."""


@connector.command("mllp-in")
@BOOTSTRAP
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=2575, show_default=True, help="MLLP port")
@click.option("--max-frame-bytes", type=click.IntRange(1024), default=1_000_000, show_default=True,
              help="larger frames are skipped and answered AR")
@click.option("--produce-timeout", "produce_timeout_s", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="seconds to wait for Kafka's acknowledgement before answering AR")
@click.option("--default-charset", type=click.Choice(["utf-8", "latin-1"]), default="utf-8", show_default=True,
              help="character set of messages with an empty MSH-18")
@METRICS_PORT
def mllp_in(bootstrap: str | None, host: str, port: int, max_frame_bytes: int, produce_timeout_s: float,
            default_charset: str, metrics_port: int | None) -> None:
    """MLLP server: HL7 v2 (REF^I12-I14, OML^O21, ORM^O01, ORU^R01, MDM) -> envelope -> inbound topic.
    ACK AA only after Kafka acknowledged the write; AE (+ dead letter) for messages that cannot be
    mapped; AR when Kafka is unavailable, for oversized and for broken frames."""
    from connectors.mllp_in import INBOUND_OUTCOMES, InboundOptions, serve
    from router.logs import setup_logging

    settings = _settings(bootstrap)
    setup_logging(settings.log_level, settings.log_format)
    options = InboundOptions(max_frame_bytes=max_frame_bytes, produce_timeout_s=produce_timeout_s,
                             default_charset=default_charset)
    metrics = _metrics(metrics_port, lambda m: m.init_inbound(options.source, INBOUND_OUTCOMES))

    async def main() -> None:
        await serve(settings, metrics, host, port, options, _stop_event())

    asyncio.run(main())


@connector.command("mllp-out")
@BOOTSTRAP
@click.option("--system", required=True, help="destination system id (consumes samex.out.<system>)")
@click.option("--endpoint", required=True, metavar="HOST:PORT", help="the system's MLLP endpoint")
@click.option("--ack-timeout", "ack_timeout_s", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="seconds to wait for the ACK before retrying")
@click.option("--backoff-cap", "backoff_cap_s", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="longest wait between retries (exponential from 0.2 s)")
@click.option("--group", "group_id", default=None, help="consumer group (default samex-out-<system>)")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder of the dedup store (default: SAMEX_STATE_DIR or .samex)")
@click.option("--only-format", type=click.Choice(["hl7v2", "fhir_r4_json", "other"]), default=None,
              help="deliver only payloads of this format and leave the others to another connector of the same "
                   "system (give it its own --group)")
@METRICS_PORT
def mllp_out(bootstrap: str | None, system: str, endpoint: str, ack_timeout_s: float, backoff_cap_s: float,
             group_id: str | None, state_dir: Path | None, only_format: str | None, metrics_port: int | None) -> None:
    """Deliver samex.out.<system> to the system's MLLP endpoint exactly once per message id: wait
    for the ACK, retry AR and timeouts with capped backoff (in order), AE -> dead letter, commit
    offsets only after the answer, dedup store in SQLite that survives restarts."""
    from connectors.dedup import DedupStore
    from connectors.mllp_out import REFUSAL_REASONS, Backoff, MllpOutbound, OutboundOptions
    from router.logs import setup_logging

    settings = _settings(bootstrap)
    check_system(settings, system)
    setup_logging(settings.log_level, settings.log_format)
    host, port = _endpoint(endpoint)
    metrics = _metrics(metrics_port, lambda m: m.init_outbound(system, REFUSAL_REASONS))
    store = DedupStore.for_system(state_dir or settings.state_dir, system)
    options = OutboundOptions(host=host, port=port, ack_timeout_s=ack_timeout_s,
                              backoff=Backoff(cap_s=backoff_cap_s), group_id=group_id, only_format=only_format)

    async def main() -> None:
        try:
            await MllpOutbound(settings, system, metrics, store, options).run(_stop_event())
        finally:
            store.close()

    asyncio.run(main())


@click.group("simulate")
def simulate() -> None:
    """Simulated care systems (MLLP endpoints that record what they receive) and traffic senders."""


@simulate.command("systems")
@click.option("--rules", "rules_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("rules"),
              show_default=True, help="rule folder whose systems.yaml lists the systems")
@click.option("--system", "only", multiple=True, help="simulate only these systems (repeatable)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--base-port", type=click.IntRange(0, 65535), default=2600, show_default=True,
              help="first port; the systems get consecutive ports (0 = any free ports)")
@click.option("--record-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write every reception as JSON lines to DIR/<system>.jsonl")
@click.option("--delay", "delay_s", type=click.FloatRange(0), default=0.0, help="seconds before each answer")
@click.option("--ae-fraction", type=click.FloatRange(0, 1), default=0.0, help="share of messages answered AE")
@click.option("--ar-fraction", type=click.FloatRange(0, 1), default=0.0, help="share of messages answered AR")
@click.option("--drop-fraction", type=click.FloatRange(0, 1), default=0.0,
              help="share of messages after which the connection is dropped without an answer")
@click.option("--ar-for", "ar_for_s", type=click.FloatRange(0), default=0.0,
              help="answer AR to everything for this many seconds after start")
def systems(rules_dir: Path, only: tuple[str, ...], host: str, base_port: int, record_dir: Path | None,
            delay_s: float, ae_fraction: float, ar_fraction: float, drop_fraction: float, ar_for_s: float) -> None:
    """Start one MLLP endpoint per system of rules/systems.yaml and print 'system host:port' lines."""
    import time

    import yaml

    from connectors.sim_mllp import Behaviour, start_systems

    doc = yaml.safe_load((rules_dir / "systems.yaml").read_text(encoding="utf-8"))
    ids = [s["id"] for s in doc.get("systems", [])]
    if only:
        unknown = set(only) - set(ids)
        if unknown:
            raise click.BadParameter(f"not in {rules_dir}/systems.yaml: {', '.join(sorted(unknown))}")
        ids = [i for i in ids if i in only]

    async def main() -> None:
        behaviour = {s: Behaviour(delay_s, ae_fraction, ar_fraction, drop_fraction,
                                  time.monotonic() + ar_for_s if ar_for_s else 0.0) for s in ids}
        sims = await start_systems(ids, host, base_port, record_dir, behaviour)
        for s, sim in sims.items():
            click.echo(f"{s} {host}:{sim.port}")
        try:
            await _stop_event().wait()
        finally:
            for sim in sims.values():
                await sim.stop()
            for s, sim in sims.items():
                click.echo(f"{s}: {len(sim.accepted())} accepted, {len(sim.received)} received", err=True)

    asyncio.run(main())


@simulate.command("senders")
@click.option("--host", default="127.0.0.1", show_default=True, help="mllp-in host")
@click.option("--port", type=click.IntRange(1, 65535), default=2575, show_default=True, help="mllp-in port")
@click.option("--rate", type=click.FloatRange(0.1), default=50.0, show_default=True, help="messages per second")
@click.option("--count", type=click.IntRange(1), default=1000, show_default=True, help="messages to send")
@click.option("--connections", type=click.IntRange(1, 1000), default=4, show_default=True,
              help="concurrent MLLP connections")
@click.option("--patients", type=click.IntRange(1), default=500, show_default=True, help="synthetic patients")
@click.option("--seed", type=int, default=1, show_default=True, help="random seed")
def senders(host: str, port: int, rate: float, count: int, connections: int, patients: int, seed: int) -> None:
    """Send realistic mixed HL7 v2 traffic from the example units (referrals, lab orders, results
    answering them, MDM notes; UTF-8 and ISO 8859-1; test personnummer only) to mllp-in."""
    import itertools
    import random

    from connectors import hl7gen
    from connectors.sim_mllp import send_traffic
    from router.synth import load_units

    gen = hl7gen.traffic(random.Random(seed), load_units(), patients=patients, prefix=f"S{seed}-")

    async def main() -> None:
        stats = await send_traffic(host, port, itertools.islice(gen, count), connections=connections, rate=rate)
        click.echo(f"sent {stats.sent}: " + " ".join(f"{k}={v}" for k, v in sorted(stats.answers.items())))

    asyncio.run(main())


def _register_fhir() -> None:
    """Hook: the FHIR connectors (connectors/fhir_cli.py) add fhir-in/fhir-out and their simulators."""
    try:
        from connectors.fhir_cli import register_fhir
    except ImportError:
        return
    register_fhir(connector, simulate)


_register_fhir()


def register(cli: click.Group) -> None:
    cli.add_command(connector)
    cli.add_command(simulate)

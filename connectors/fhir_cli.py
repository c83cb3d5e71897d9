"""Click commands of the FHIR connectors: ``connector fhir-in``, ``connector fhir-out`` and
``simulate millennium-fhir``. ``register_fhir`` adds them to existing groups; ``python -m
connectors.fhir_cli`` runs them without the rest of the CLI."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from connectors.common import BOOTSTRAP, check_system
from connectors.common import settings_for as _settings
from connectors.common import stop_event as _stop_event


@click.command("fhir-in")
@BOOTSTRAP
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8081, show_default=True, help="HTTP port")
@click.option("--system", "source_system", default="millennium", show_default=True,
              help="the sending system's id (envelope sender.system and part of the stable message id)")
def fhir_in(bootstrap: str | None, host: str, port: int, source_system: str) -> None:
    """FHIR R4 endpoint: POST /fhir/ServiceRequest, /fhir/Task, /fhir/ (transaction, batch or
    collection Bundle). Validates, maps to envelopes, writes them to the inbound topic and answers 201
    only after Kafka acknowledged; 4xx + OperationOutcome for invalid input; 503 when Kafka is down.
    GET /fhir/metadata, /metrics."""
    from prometheus_client import CollectorRegistry

    from connectors.fhir_in import serve
    from router.logs import setup_logging
    from router.metrics import ConnectorMetrics

    settings = _settings(bootstrap)
    setup_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        await serve(settings, ConnectorMetrics(CollectorRegistry()), host, port, source_system, _stop_event())

    asyncio.run(main())


@click.command("fhir-out")
@BOOTSTRAP
@click.option("--system", required=True, help="destination system id (consumes samex.out.<system>)")
@click.option("--base", "base_url", required=True, help="the destination's FHIR base URL, e.g. http://host/fhir")
@click.option("--group", "group_id", default=None, help="consumer group (default samex-out-<system>)")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="seconds to wait for the server's answer before retrying")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder of the delivered-message store (default: SAMEX_STATE_DIR or .samex)")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="serve /metrics on this port (default: no metrics server)")
@click.option("--only-format", type=click.Choice(["hl7v2", "fhir_r4_json", "other"]), default=None,
              help="deliver only payloads of this format and leave the others to another connector of the same "
                   "system (give it its own --group)")
def fhir_out(bootstrap: str | None, system: str, base_url: str, group_id: str | None, timeout_s: float,
             state_dir: Path | None, metrics_port: int | None, only_format: str | None) -> None:
    """Deliver samex.out.<system> to a FHIR R4 server exactly once: conditional create on the samex
    message id, a local delivered-store that survives restarts, offsets committed after the answer,
    retries with capped backoff for 5xx and timeouts, 4xx to the dead-letter topic."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from connectors.fhir_dedup import DeliveredStore
    from connectors.fhir_out import FhirOutbound
    from router.logs import setup_logging
    from router.metrics import ConnectorMetrics

    settings = _settings(bootstrap)
    check_system(settings, system)
    if not base_url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{base_url!r} is not an http(s) URL", param_hint="--base")
    setup_logging(settings.log_level, settings.log_format)
    metrics = ConnectorMetrics(CollectorRegistry())
    store = DeliveredStore.for_system(state_dir or settings.state_dir, system)

    async def main() -> None:
        runner = None
        # constructed first: it creates its metric series at 0, which the first scrape must see
        out = FhirOutbound(settings, system, base_url, metrics, store, group_id=group_id, timeout_s=timeout_s,
                           only_format=only_format)
        if metrics_port is not None:
            async def page(_: web.Request) -> web.Response:
                return web.Response(body=generate_latest(metrics.registry),
                                    headers={"Content-Type": CONTENT_TYPE_LATEST})

            app = web.Application()
            app.router.add_get("/metrics", page)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, settings.web_host, metrics_port).start()
        try:
            await out.run(_stop_event())
        finally:
            store.close()
            if runner is not None:
                await runner.cleanup()

    asyncio.run(main())


@click.command("millennium-fhir")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8090, show_default=True, help="HTTP port")
def millennium_fhir(host: str, port: int) -> None:
    """A simulated Millennium FHIR R4 server: stores resources, honours If-None-Exist, records what it
    receives (GET /_sim/received, /_sim/stats) and can be told to be slow or fail
    (POST /_sim/fault {"status": 503, "count": 10, "seconds": 30, "delay_s": 0.5})."""
    from connectors.sim_fhir import SimFhir, start

    async def main() -> None:
        runner, bound = await start(SimFhir(), host, port)
        click.echo(f"millennium FHIR simulator on http://{host}:{bound}", err=True)
        try:
            await _stop_event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


@click.command("fhir-sender")
@click.option("--url", "base_url", default="http://127.0.0.1:8081/fhir", show_default=True,
              help="FHIR base URL of fhir-in")
@click.option("--rate", type=click.FloatRange(0.1), default=10.0, show_default=True, help="resources per second")
@click.option("--count", type=click.IntRange(1), default=None, help="stop after this many (default: run until Ctrl-C)")
@click.option("--patients", type=click.IntRange(1), default=200, show_default=True, help="synthetic patients")
@click.option("--seed", type=int, default=1, show_default=True, help="random seed")
def fhir_sender(base_url: str, rate: float, count: int | None, patients: int, seed: int) -> None:
    """Send realistic FHIR traffic from the example units to fhir-in: lab-order and referral
    ServiceRequests, and Tasks answering earlier referrals (test personnummer only)."""
    import random

    from connectors.sim_fhir import send_resources, synthetic_resources
    from router.synth import load_units, test_personnummer

    rng = random.Random(seed)
    pool = [test_personnummer(rng, samordning=(i % 20 == 0)) for i in range(patients)]

    async def main() -> dict[int, int]:
        return await send_resources(base_url, synthetic_resources(rng, load_units(), pool), count, rate,
                                    _stop_event())

    answers = asyncio.run(main())
    click.echo(" ".join(f"{'unreachable' if k == 0 else k}={v}" for k, v in sorted(answers.items()))
               or "nothing sent")
    if answers.get(0):
        click.echo(f"samex: {base_url} could not be reached for {answers[0]} resource(s)", err=True)
        sys.exit(1)


def register_fhir(connector_group: click.Group, simulate_group: click.Group) -> None:
    connector_group.add_command(fhir_in)
    connector_group.add_command(fhir_out)
    simulate_group.add_command(millennium_fhir)
    simulate_group.add_command(fhir_sender)


@click.group()
def _standalone() -> None:
    """FHIR connectors of samex (standalone entry point)."""


_standalone.add_command(fhir_in)
_standalone.add_command(fhir_out)
_standalone.add_command(millennium_fhir)
_standalone.add_command(fhir_sender)

if __name__ == "__main__":
    _standalone()

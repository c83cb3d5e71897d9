"""``samex run`` (the local stack with a live summary) and ``samex simulate envelopes``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from router.commands.worker import BOOTSTRAP, settings_from


@click.command("run")
@click.option("--workers", type=click.IntRange(1, 8), default=2, show_default=True,
              help="router workers in the consumer group")
@click.option("--rate", type=click.FloatRange(0.1), default=50.0, show_default=True,
              help="messages per second the simulated senders send")
@click.option("--duration", type=click.FloatRange(1), default=None,
              help="stop by itself after this many seconds (default: run until Ctrl-C)")
@click.option("--rules", "rules_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="rule folder (default: rules/)")
@click.option("--plain", is_flag=True, help="print a summary line every 5 s instead of the live table")
@click.option("--traffic", type=click.Choice(["protocols", "envelopes"]), default="protocols", show_default=True,
              help="protocols: simulated senders over MLLP and FHIR, connectors and simulated systems; "
                   "envelopes: synthetic envelopes straight onto the inbound topic (router only)")
def run(workers: int, rate: float, duration: float | None, rules_dir: Path | None, plain: bool, traffic: str) -> None:
    """Run the whole stack locally: a real Kafka broker (or SAMEX_KAFKA_BOOTSTRAP), router workers,
    the trace-index feeder, MLLP and FHIR connectors in and out, simulated senders and systems
    (Millennium over MLLP and FHIR, every legacy system over MLLP), and a live summary of what
    flows where, what was delivered and what is waiting. Ctrl-C stops it all."""
    from router.errors import RulesError
    from router.runlocal import run_stack

    settings = settings_from(None, rules_dir=rules_dir)
    live = sys.stdout.isatty() and not plain
    try:
        code = run_stack(settings, workers, rate, duration, click.echo, live, traffic)
    except RulesError as exc:
        for p in exc.problems:
            click.echo(p, err=True)
        sys.exit(2)
    sys.exit(code)


@click.command("envelopes")
@BOOTSTRAP
@click.option("--rate", type=click.FloatRange(0.1), default=50.0, show_default=True, help="messages per second")
@click.option("--count", type=click.IntRange(1), default=None, help="stop after this many (default: endless)")
@click.option("--seed", type=int, default=1, show_default=True, help="random seed of the traffic")
@click.option("--bad-share", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="share of messages that no rule can route (they end as dead letters)")
def envelopes(bootstrap: str | None, rate: float, count: int | None, seed: int, bad_share: float) -> None:
    """Produce synthetic envelopes of every kind from the example units straight onto the inbound
    topic, without going through a protocol connector. Patients are test personnummer."""
    from router.runlocal import produce_envelopes

    settings = settings_from(bootstrap)
    try:
        sent = asyncio.run(produce_envelopes(settings, rate, count, seed, bad_share))
    except KeyboardInterrupt:
        return
    click.echo(f"sent {sent} envelopes to {settings.inbound_topic}")


def register(cli: click.Group) -> None:
    cli.add_command(run)
    group = cli.commands.get("simulate")
    if not isinstance(group, click.Group):

        @click.group("simulate")
        def simulate() -> None:
            """Simulated senders and destination systems for the local run and the tests."""

        group = simulate
        cli.add_command(group)
    group.add_command(envelopes)

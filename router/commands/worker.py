"""``samex worker`` and ``samex rules publish``."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from router.errors import RulesError


def settings_from(bootstrap: str | None, **extra: object):  # type: ignore[no-untyped-def]
    from router.settings import Settings

    overrides = {k: v for k, v in extra.items() if v is not None}
    if bootstrap:
        overrides["kafka_bootstrap"] = bootstrap
    return Settings(**overrides)  # type: ignore[arg-type]


BOOTSTRAP = click.option("--bootstrap", envvar="SAMEX_KAFKA_BOOTSTRAP", default=None,
                         help="Kafka bootstrap servers (default: SAMEX_KAFKA_BOOTSTRAP or 127.0.0.1:9092)")


@click.command("worker")
@BOOTSTRAP
@click.option("--rules", "rules_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="rule folder used until a rule set is published on the control topic (default: rules/)")
@click.option("--web-port", type=int, default=None, help="port of /metrics and /status (default 6066)")
@click.option("--worker-id", default=None, help="name of this worker in metrics, logs and decision records")
def worker(bootstrap: str | None, rules_dir: Path | None, web_port: int | None, worker_id: str | None) -> None:
    """Run a router worker: consume the inbound topic, decide, produce to destination, park,
    dead-letter and decision topics. Scale by running more workers (one consumer group).

    Every other setting comes from the environment (SAMEX_...); `samex settings` lists them with
    their values and meaning."""
    import faust

    from router.logs import setup_logging
    from router.topics import ensure_router_topics
    from router.worker.app import WorkerRuntime, build_app

    settings = settings_from(bootstrap, rules_dir=rules_dir, web_port=web_port, worker_id=worker_id)
    setup_logging(settings.log_level, settings.log_format)
    try:
        runtime = WorkerRuntime(settings)
    except RulesError as exc:
        for p in exc.problems:
            click.echo(p, err=True)
        sys.exit(2)
    engine = runtime.core.engine
    asyncio.run(ensure_router_topics(settings, engine.systems, engine.golive_ms))
    app, _ = build_app(settings, runtime)
    logging.getLogger("samex.worker").info(
        "worker starting", extra={"worker": settings.worker_id, "group": settings.group_id,
                                  "inbound": settings.inbound_topic, "rules_version": engine.version,
                                  "metrics": f"http://{settings.web_host}:{settings.web_port}/metrics"})
    w = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False, override_logging=False,
                     console_port=0)
    w.spinner = None  # faust's start-up spinner writes terminal control bytes into the JSON log stream
    w.execute_from_commandline()


@click.command("publish")
@click.argument("rules_dir", type=click.Path(file_okay=False, path_type=Path))
@BOOTSTRAP
@click.option("--reason", default=None, help="why this rule set is published (kept in the audit record)")
@click.option("--force-invalid", is_flag=True, hidden=True, help="publish without validation (for tests of the "
              "worker-side refusal)")
def publish_cmd(rules_dir: Path, bootstrap: str | None, reason: str | None, force_invalid: bool) -> None:
    """Validate a rule folder and publish it to the compacted control topic; every running worker
    switches to it within a second, without a restart. An invalid set is refused (exit 1)."""
    from router.rules.load import read_rule_texts, version_of
    from router.topics import ensure_router_topics
    from router.worker.control import check_publishable, publish, rules_record, who_am_i

    try:
        texts = read_rule_texts(rules_dir)
    except RulesError as exc:
        for p in exc.problems:
            click.echo(p, err=True)
        sys.exit(1)
    if not force_invalid:
        problems = check_publishable(texts, str(rules_dir).rstrip("/"))
        if problems:
            for p in problems:
                click.echo(p, err=True)
            click.echo(f"refused: {len(problems)} problem(s); nothing was published", err=True)
            sys.exit(1)
    settings = settings_from(bootstrap)
    from router.rules.engine import Engine
    from router.rules.load import load_rule_texts

    async def go() -> None:
        if not force_invalid:
            eng = Engine(load_rule_texts(texts))
            await ensure_router_topics(settings, eng.systems, eng.golive_ms)
        await publish(settings, rules_record(texts, who_am_i(), reason))

    asyncio.run(go())
    click.echo(f"published rule set {version_of(texts)} to {settings.control_topic}")


def register(cli: click.Group) -> None:
    cli.add_command(worker)
    from router.commands.rules import rules_group

    rules_group.add_command(publish_cmd)

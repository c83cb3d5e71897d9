"""``samex rehearse``: recorded traffic decided under other rules and another instant."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from router.commands.worker import BOOTSTRAP, settings_from


@click.command("rehearse")
@click.option("--rules", "rules_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="rule folder to rehearse (default: the active rule set)")
@click.option("--as-of", "as_of", default=None, help="decide as at this instant, e.g. the planned go-live "
              "'2026-10-13T06:00' (Stockholm time) or ISO 8601 with offset (default: now)")
@click.option("--from", "from_", required=True, help="first instant of recorded inbound traffic to take")
@click.option("--to", "to", default=None, help="end of the recorded traffic (exclusive; default: now)")
@click.option("--states", type=click.Choice(["recorded", "scheduled"]), default="recorded", show_default=True,
              help="etapp states: those recorded on the control topic at --as-of, or every etapp following its "
                   "planned go-live")
@click.option("--no-orders", is_flag=True, help="ignore the order book (results then follow the rules alone)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of tables")
@BOOTSTRAP
def rehearse_cmd(rules_dir: Path | None, as_of: str | None, from_: str, to: str | None, states: str,
                 no_orders: bool, as_json: bool, bootstrap: str | None) -> None:
    """Take recorded traffic from the inbound topic, decide it under the given rules and instant
    without producing anything, and print what would change compared with what was decided: per
    kind and destination, with example message ids, including messages that would become unroutable."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    from router.commands.etapp import _engine, read_control, state_book
    from router.errors import RulesError
    from router.rehearse import rehearse
    from router.rules.engine import Engine
    from router.rules.load import load_rules
    from router.timeutil import fmt_ms, parse_cli_instant

    settings = settings_from(bootstrap)
    as_of_ms, from_ms = parse_cli_instant(as_of), parse_cli_instant(from_)
    to_ms = parse_cli_instant(to) if to else None
    if to_ms is not None and to_ms <= from_ms:
        click.echo("--to must be after --from", err=True)
        sys.exit(2)
    records = asyncio.run(read_control(settings))
    try:
        engine = Engine(load_rules(rules_dir)) if rules_dir else _engine(settings, records)
    except RulesError as exc:
        for p in exc.problems:
            click.echo(p, err=True)
        sys.exit(2)
    cs = state_book(engine, records if states == "recorded" else [])
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                  TimeRemainingColumn(), console=err, transient=True, disable=as_json or not err.is_terminal) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        try:
            result = asyncio.run(rehearse(settings, engine, as_of_ms, from_ms, to_ms, cs.states,
                                          use_orders=not no_orders, progress=progress))
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was produced", err=True)
            sys.exit(130)
    summary = result.as_json()
    summary.update({"rules_version": engine.version, "as_of": fmt_ms(as_of_ms), "from": fmt_ms(from_ms),
                    "to": fmt_ms(to_ms) if to_ms else "now"})
    if as_json:
        import orjson

        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    from router.commands.out import console, table

    con = console()
    con.print(f"rules {engine.version[:12]} as of {summary['as_of']}, traffic {summary['from']} – {summary['to']}: "
              f"{summary['total']:,} messages, {summary['same']:,} unchanged, {summary['changed']:,} would change, "
              f"{result.unroutable:,} would become unroutable, {summary['not_in_decision_log']:,} without a recorded "
              "decision")
    if summary["changes"]:
        t = table("what would change", ("kind", "decided", "would be", "count", "examples"))
        for c in summary["changes"]:
            t.add_row(c["kind"], c["before"], c["after"], f"{c['count']:,}", "\n".join(c["examples"]))
        con.print(t)
    if result.reasons_unroutable:
        u = table("would become unroutable", ("reason", "count"))
        for reason, n in result.reasons_unroutable.most_common():
            u.add_row(reason, f"{n:,}")
        con.print(u)


def register(cli: click.Group) -> None:
    cli.add_command(rehearse_cmd)

"""``samex replay``: re-decide recorded messages (dry run with a diff), copy them to a sandbox
topic, or route them again for real with a reason, a cap and an audit record."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from router.commands.worker import BOOTSTRAP, settings_from


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.0f} msg/s" if task.speed else "– msg/s")

    return Rate()


@click.command("replay")
@click.option("--from", "from_", required=True, help="first instant of the window (Stockholm time unless an offset "
              "is given), e.g. '2026-11-20T08:00'")
@click.option("--to", "to", default=None, help="end of the window, exclusive (default: now)")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="(default) re-decide and print a diff against what was decided; produce nothing")
@click.option("--to-topic", "to_topic", default=None, help="copy the selection to this existing sandbox topic")
@click.option("--resend", "resend", is_flag=True, help="route the selection again for real (needs --reason)")
@click.option("--dead-letters", is_flag=True, help="select from the dead-letter topic instead of the inbound topic "
              "(re-drive after a rule fix: add --resend --reason)")
@click.option("--rules", "rules_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="decide under this rule folder (default: dry run: the version each message was decided with; "
                   "re-send: the active rule set)")
@click.option("--as-of", "as_of", default=None, help="dry run: decide as at this instant (default: the instant each "
              "message was decided)")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["remiss", "lab_order", "lab_result", "info"]),
              help="only this kind (repeatable)")
@click.option("--sender", "senders", multiple=True, help="sender unit HSA-id or system (repeatable)")
@click.option("--receiver", "receivers", multiple=True, help="receiver unit HSA-id or system (repeatable)")
@click.option("--system", "systems", multiple=True, help="a system the message came from or was routed to")
@click.option("--etapp", "etapper", multiple=True, help="etapp that made the original decision (repeatable)")
@click.option("--rule", "rules", multiple=True, help="rule that made the original decision (repeatable)")
@click.option("--dead-letter-reason", "reasons", multiple=True, help="dead-letter reason code, e.g. no_route")
@click.option("--message-id", "message_ids", multiple=True, help="message id or source id (MSH-10) (repeatable)")
@click.option("--reason", default=None, help="why (required for --resend; recorded in headers and the audit record)")
@click.option("--max", "max_n", type=int, default=100, show_default=True, help="re-send at most this many messages")
@click.option("--yes-really", is_flag=True, help="confirm a --max above 100")
@click.option("--redeliver", is_flag=True, help="ask outbound connectors to deliver again even messages they "
              "already delivered (samex-replay-redeliver: 1)")
@click.option("--no-orders", is_flag=True, help="ignore the order book (results then follow the rules alone)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON summary instead of tables")
@BOOTSTRAP
def replay_cmd(from_: str, to: str | None, dry_run: bool, resend: bool, to_topic: str | None, dead_letters: bool,
               rules_dir: Path | None, as_of: str | None, kinds: tuple[str, ...], senders: tuple[str, ...],
               receivers: tuple[str, ...], systems: tuple[str, ...], etapper: tuple[str, ...], rules: tuple[str, ...],
               reasons: tuple[str, ...], message_ids: tuple[str, ...], reason: str | None, max_n: int,
               yes_really: bool, redeliver: bool, no_orders: bool, as_json: bool, bootstrap: str | None) -> None:
    """Select recorded messages by time window and filters and replay them.

    \b
    --dry-run (default)  re-decide under the rules in force then (by version) or --rules/--as-of,
                         print what would change; nothing is produced
    --to-topic T         copy the selection to the sandbox topic T
    --resend             route again now: needs --reason, at most --max (100) messages; records carry
                         samex-replay-* headers; an audit record goes to the control topic (see trace)
    --dead-letters       take the selection from the dead-letter topic (re-drive after a rule fix)

    Exit 0 when done; 1 when a re-send or copy selected nothing (nothing is sent and no audit
    record written); 2 for bad options or an unreachable broker; 130 when stopped by Ctrl-C.
    """
    from aiokafka.errors import KafkaError

    from router.commands.etapp import read_control
    from router.errors import RulesError, SamexError
    from router.replay import Filters, ReplayError, Request, cap_check, check_window
    from router.rules.engine import Engine
    from router.rules.load import load_rule_texts, load_rules
    from router.timeutil import parse_cli_instant
    from router.worker.control import who_am_i

    settings = settings_from(bootstrap)
    try:
        if dry_run + resend + (to_topic is not None) > 1:
            raise ReplayError("choose one of --dry-run, --to-topic and --resend")
        mode = "resend" if resend else "to-topic" if to_topic is not None else "dry-run"
        from_ms = parse_cli_instant(from_)
        to_ms = parse_cli_instant(to)
        check_window(from_ms, to_ms)
        if mode == "resend":
            if not (reason and reason.strip()):
                raise ReplayError("--resend needs --reason: say why these messages are routed again")
            cap_check(max_n, yes_really)
            if as_of:
                raise ReplayError("--as-of is for dry runs; a re-send routes now")
        if redeliver and mode != "resend":
            raise ReplayError("--redeliver only goes with --resend")
        as_of_ms = parse_cli_instant(as_of) if as_of else None
        override = Engine(load_rules(rules_dir)) if rules_dir else None
        filters = Filters(frozenset(kinds), frozenset(senders), frozenset(receivers), frozenset(systems),
                          frozenset(etapper), frozenset(rules), frozenset(reasons), frozenset(message_ids))
        records = asyncio.run(read_control(settings))
        from router.replay import read_control_records

        control = read_control_records(records)
        current = None
        if control.active_texts:
            try:
                current = Engine(load_rule_texts(control.active_texts))
            except SamexError:
                current = None
        fallback_note = None
        if current is None:
            current = Engine(load_rules(settings.rules_dir))
            fallback_note = f"no rule set published on {settings.control_topic}: the rule folder {settings.rules_dir} "\
                            "is the active set"
        filters.validate([current] + ([override] if override else []))
        source_topic = settings.deadletter_topic if dead_letters else settings.inbound_topic
        from router.replay import topic_exists

        if not asyncio.run(topic_exists(settings, source_topic)):
            raise ReplayError(f"topic {source_topic} does not exist")
        if to_topic and not asyncio.run(topic_exists(settings, to_topic)):
            raise ReplayError(f"topic {to_topic} does not exist: create the sandbox topic first")
    except RulesError as exc:
        for p in exc.problems:
            click.echo(p, err=True)
        sys.exit(2)
    except SamexError as exc:
        click.echo(f"samex replay: {exc}", err=True)
        sys.exit(2)
    except KafkaError as exc:
        click.echo(f"samex replay: cannot read from Kafka at {settings.kafka_bootstrap}: {type(exc).__name__}",
                   err=True)
        sys.exit(2)
    req = Request(from_ms, to_ms, filters, dead_letters)
    summary = asyncio.run(_run(settings, req, mode, control, current, override, as_of_ms, to_topic, reason or "",
                               max_n, redeliver, not no_orders, who_am_i(), as_json))
    if fallback_note:
        summary.notes.append(fallback_note)
    _print(summary, as_json, mode)


async def _run(settings: Any, req: Any, mode: str, control: Any, current: Any, override: Any, as_of_ms: int | None,
               to_topic: str | None, reason: str, max_n: int, redeliver: bool, use_orders: bool, who: str,
               quiet: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from router.codec import default_codec
    from router.replay import (
        Diff,
        Engines,
        Redecider,
        Summary,
        audit,
        copy_to_topic,
        new_replay_id,
        outcome_of_decision,
        resend,
        select,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    codec = default_codec()
    orders = None
    if use_orders:
        import orjson

        from router.worker.orders import read_orders

        orders = {k: orjson.dumps(v).decode() for k, v in (await read_orders(settings)).items()}
    summary = Summary(mode, None if mode == "dry-run" else new_replay_id())
    err = Console(stderr=True)
    t0 = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _rate_column(),
                  TimeRemainingColumn(), console=err, transient=True, disable=quiet or not err.is_terminal) as bar:
        tasks: dict[str, Any] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        items = select(settings, req, codec, stop, progress)
        try:
            if mode == "dry-run":
                engines = Engines(control.published, current)
                rd = Redecider(engines, control.states, override, as_of_ms, orders)
                diff = summary.diff = Diff()
                async for it in items:
                    diff.add(it, outcome_of_decision(rd.decide(it)))
                    summary.selected += 1
                if engines.missing:
                    summary.notes.append(
                        f"{sum(engines.missing.values())} message(s) were decided under rule set version(s) "
                        f"{', '.join(v[:12] for v in engines.missing)} not published on {settings.control_topic}: "
                        f"re-decided under the active set {current.version[:12]} instead")
                if override is None and as_of_ms is None:
                    summary.notes.append("re-decided under the rule set version each message was decided with, "
                                         "at the instant it was decided")
            elif mode == "to-topic":
                await copy_to_topic(settings, items, to_topic or "", summary, stop)
                if summary.selected:  # nothing matched: nothing happened, and nothing to audit
                    await audit(settings, summary, who, reason or f"copy to {to_topic}", req, {"to_topic": to_topic})
            else:
                await resend(settings, items, override or current, control.states, summary, who, reason, max_n,
                             redeliver, stop, orders)
                if summary.selected:
                    await audit(settings, summary, who, reason, req,
                                {"rules_version": (override or current).version, "redeliver": redeliver,
                                 "max": max_n})
        finally:
            await items.aclose()
    summary.interrupted = summary.interrupted or stop.is_set()
    summary.seconds = time.monotonic() - t0
    return summary


def _print(summary: Any, as_json: bool, mode: str) -> None:
    if as_json:
        import orjson

        click.echo(orjson.dumps(summary.as_json(), option=orjson.OPT_INDENT_2).decode())
        sys.exit(130 if summary.interrupted else 1 if nothing_selected(summary, mode) else 0)
    from router.commands.out import console, table

    con = console()
    if summary.interrupted:
        con.print("[bold]stopped by Ctrl-C[/bold]: the summary covers what was done until then")
    for n in summary.notes:
        con.print(f"note: {n}")
    if mode == "dry-run":
        d = summary.diff
        con.print(f"dry run: {d.total:,} messages re-decided, {d.same:,} unchanged, {sum(d.changes.values()):,} "
                  f"would change, {d.without_decision:,} without a recorded decision; nothing was produced")
        if d.changes:
            t = table("what would change", ("kind", "decided", "would be", "count", "examples"))
            for c in d.as_json()["changes"]:
                t.add_row(c["kind"], c["before"], c["after"], f"{c['count']:,}", "\n".join(c["examples"]))
            con.print(t)
    elif nothing_selected(summary, mode):
        pass  # said on stderr below; no replay id, since no audit record carries it
    elif mode == "to-topic":
        con.print(f"copied {summary.written:,} of {summary.selected:,} selected messages (replay {summary.replay_id})")
    else:
        con.print(f"replay {summary.replay_id}: re-sent {summary.written:,} of {summary.selected:,} selected "
                  f"messages in {summary.seconds:.1f} s" + (f"; {summary.capped:,} not re-sent (over --max)"
                                                           if summary.capped else ""))
        for what, n in summary.routed.most_common():
            con.print(f"  {what}: {n:,}")
        con.print(f"audit record on the control topic; see: samex trace {summary.replay_id}")
    if summary.interrupted:
        sys.exit(130)
    if nothing_selected(summary, mode):
        console(stderr=True).print("nothing selected: no recorded message in the window matches the filters; nothing "
                                   "was sent and no audit record was written (exit 1)")
        sys.exit(1)


def nothing_selected(summary: Any, mode: str) -> bool:
    """A re-send or copy that matched nothing: an error (exit 1), as a mistyped message id usually is."""
    return mode != "dry-run" and not summary.selected and not summary.interrupted


def register(cli: click.Group) -> None:
    cli.add_command(replay_cmd)

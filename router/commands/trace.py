"""``samex trace``: every hop of a message in time order; ``samex index run``: keep the trace index fed."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from router.commands.worker import BOOTSTRAP, settings_from


def describe(h: Any) -> str:
    """One line saying what happened at a hop (never a patient identifier: the index has none)."""
    f = h.fields
    if h.hop == "received":
        return f"received on {f.get('topic')} [{f.get('part')}:{f.get('off')}] (source id {f.get('source_message_id')})"
    if h.hop in ("decided", "parked", "released", "re-decided"):
        what = {"routed": f"routed to {f.get('systems')}", "parked": f"parked on {f.get('systems')}",
                "dead_letter": "dead letter"}.get(f.get("outcome") or "", f.get("outcome") or "")
        head = {"re-decided": f"re-decided by replay {f.get('replay_id')}: ", "released": "released: "}.get(h.hop, "")
        return (f"{head}{what} by rule {f.get('rule') or '-'} (rules {str(f.get('rules_version') or '')[:12]}, "
                f"etapp {f.get('etapp') or '-'} {f.get('etapp_state') or ''}): {f.get('reason')}")
    if h.hop == "dead_lettered":
        where = f" for {f['systems']}" if f.get("systems") else ""
        return f"dead-lettered at {f.get('stage')}{where}: {f.get('outcome')}: {f.get('reason')}"
    if h.hop in ("delivered", "rejected", "skipped_duplicate"):
        verb = {"delivered": "delivered and acknowledged by", "rejected": "rejected by",
                "skipped_duplicate": "already delivered, skipped by"}[h.hop]
        extra = f" (replay {f['replay_id']})" if f.get("replay_id") else ""
        return f"{verb} {f.get('systems')} ack {f.get('outcome') or '-'}{extra}" + \
            (f": {f['reason']}" if f.get("reason") else "")
    if h.hop == "copied":
        return f"copied to a sandbox topic by {f.get('who')} (replay {f.get('replay_id')}): {f.get('reason')}"
    if h.hop == "replayed":
        return f"replayed by {f.get('who')} (replay {f.get('replay_id')}): {f.get('reason')}"
    return str(f)


def _hops_json(hops: list[Any]) -> list[dict[str, Any]]:
    from router.timeutil import fmt_ms

    return [{**h.as_json(), "at": fmt_ms(h.at_ms), "what": describe(h)} for h in hops]


def read_personnummer(value: str | None) -> str:
    """Validate and normalise; the number itself never leaves this function except as its hash."""
    from router.errors import IdentifierError
    from router.identifiers import parse_patient_id

    text = value if value is not None else click.prompt("personnummer (not shown, not stored)", hide_input=True,
                                                        err=True)
    try:
        return parse_patient_id(text)[0]
    except IdentifierError as exc:
        raise click.BadParameter(str(exc), param_hint="personnummer") from None


async def _sync(settings: Any, index: Any, quiet: bool) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from router.indexfeed import feed

    err = Console(stderr=True)
    with Progress(TextColumn("indexing"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                  TimeRemainingColumn(), console=err, transient=True, disable=quiet or not err.is_terminal) as bar:
        task = bar.add_task("index", total=None)
        try:
            n = await feed(settings, index, on_progress=lambda d, t: bar.update(task, completed=d, total=t))
        except Exception as exc:  # the broker may be down: answer from what the index holds
            from router.identifiers import redact

            err.print(f"warning: the index was not brought up to date ({type(exc).__name__}: "
                      f"{redact(str(exc))[:200]}); answering from what it holds")
            return 0
        if n < 0 and not quiet:
            err.print("note: `samex index run` is feeding this index; not synced here")
        return n


@click.command("trace")
@click.argument("ident", required=False)
@click.option("--patient", is_flag=True, help="search by patient: asks for a personnummer (hidden input), "
              "searches by its keyed hash; the number is neither stored nor printed")
@click.option("--personnummer", "pnr", envvar="SAMEX_TRACE_PERSONNUMMER", default=None, hidden=True,
              help="the personnummer for --patient without a prompt (scripts; prefer the prompt)")
@click.option("--sync/--no-sync", default=True, show_default=True,
              help="catch the index up with the decision, dead-letter, delivery and control topics first")
@click.option("--limit", type=click.IntRange(1, 1000), default=200, show_default=True,
              help="at most this many messages")
@click.option("--json", "as_json", is_flag=True, help="print JSON (one object with the hops) instead of a table")
@BOOTSTRAP
def trace_cmd(ident: str | None, patient: bool, pnr: str | None, sync: bool, limit: int, as_json: bool,
              bootstrap: str | None) -> None:
    """Show every hop of a message in time order: received, decided (rule, version, etapp, reason),
    parked/released, delivered and acknowledged (by which system), dead-lettered (why), replayed (by whom,
    why). IDENT is a message id, source message id (MSH-10), placer or filler order number, referral id
    or replay id."""
    from router.identifiers import patient_key
    from router.traceindex import open_index

    if patient == bool(ident):
        raise click.UsageError("give an id to search for, or --patient (not both)")
    settings = settings_from(bootstrap)
    key = patient_key(read_personnummer(pnr), settings.patient_key_bytes) if patient else None
    index = open_index(settings)
    try:
        if sync:
            asyncio.run(_sync(settings, index, as_json))
        hops = index.find_patient(key, limit) if key else index.find(ident or "", limit)
    finally:
        index.close()
    label = "the patient" if key else repr(ident)
    if as_json:
        import orjson

        ids = sorted({h.message_id for h in hops})
        click.echo(orjson.dumps({"query": "patient" if key else ident, "messages": ids, "hops": _hops_json(hops)},
                                option=orjson.OPT_INDENT_2).decode())
        sys.exit(0 if hops else 1)
    from rich.table import Table

    from router.commands.out import console
    from router.timeutil import fmt_ms

    con = console()
    if not hops:
        con.print(f"nothing found for {label}")
        sys.exit(1)
    ids = list(dict.fromkeys(h.message_id for h in hops))
    t = Table(title=f"{len(ids)} message(s) for {label}")
    for col in ("time", "message", "hop", "what"):
        t.add_column(col, overflow="fold")
    for h in hops:
        t.add_row(fmt_ms(h.at_ms), h.message_id[:13] if len(ids) > 1 else h.message_id, h.hop, describe(h))
    con.print(t)


@click.group("index")
def index_group() -> None:
    """The trace index behind `samex trace` (SQLite under the state folder, or PostgreSQL via SAMEX_INDEX_URL)."""


@index_group.command("run")
@BOOTSTRAP
@click.option("--once", is_flag=True, help="catch up and exit instead of following")
def index_run(bootstrap: str | None, once: bool) -> None:
    """Feed the trace index from the decision, delivery, dead-letter and control topics and keep
    following (Ctrl-C stops). Positions are kept in the index itself."""
    import logging
    import signal

    from router.indexfeed import feed
    from router.logs import setup_logging
    from router.traceindex import open_index

    settings = settings_from(bootstrap)
    setup_logging(settings.log_level, settings.log_format)  # JSON lines by default, as every service logs
    index = open_index(settings)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await feed(settings, index, follow=not once, stop=stop)

    try:
        n = asyncio.run(main())
    finally:
        total = index.count()
        index.close()
    logging.getLogger("samex.index").info("indexed %s records; the index holds %s hops", f"{n:,}", f"{total:,}")


def register(cli: click.Group) -> None:
    cli.add_command(trace_cmd)
    cli.add_command(index_group)

"""``samex etapp status|hold|release|go-live|pause|rollback|inflight``: cutover operations at runtime."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import click

from router.commands.worker import BOOTSTRAP, settings_from

# command -> operational state it sets
TRANSITIONS = {"hold": "hold", "release": "scheduled", "go-live": "live", "pause": "paused",
               "rollback": "rolled_back"}
HELP = {
    "hold": "Hold an etapp: from the effective instant its messages are parked on samex.park.<etapp>, in order, "
            "until release.",
    "release": "Release a held etapp: it follows its planned go-live again, and the workers route every parked "
               "message, re-decided at release time, in the original per-patient order.",
    "go-live": "Put an etapp live now (or --at a time), whatever its planned go-live says.",
    "pause": "Pause an etapp: from the effective instant its units are routed as not live (their legacy "
             "systems). Decisions already made stay made.",
    "rollback": "Roll an etapp back: like pause, recorded as a rollback (units routed to their legacy systems).",
}


async def read_control(settings: Any) -> list[dict[str, Any]]:
    """Every record on the control topic, in order."""
    from router.codec import default_codec
    from router.errors import CodecError
    from router.kafkaio import read_to_end

    codec = default_codec()
    recs = await read_to_end(settings.kafka_bootstrap, settings.control_topic)
    out = []
    for r in sorted(recs, key=lambda r: r.offset):
        if r.value is None:
            continue
        try:
            out.append(codec.decode_as("control", r.value))
        except CodecError as exc:  # the workers refuse it too; it must not block the tools
            click.echo(f"warning: control record at offset {r.offset} skipped: {exc}", err=True)
    return out


def _engine(settings: Any, records: list[dict[str, Any]]) -> Any:
    """The active rule set: the last one published on the control topic, else the rule folder."""
    from router.rules.engine import Engine
    from router.rules.load import load_rule_texts, load_rules

    published = [r for r in records if r["type"] == "rules" and r.get("rules_files")]
    if published:
        try:
            return Engine(load_rule_texts(published[-1]["rules_files"]))
        except Exception:  # a refused set on the topic: workers keep the previous one; so do we
            pass
    return Engine(load_rules(settings.rules_dir))


def state_book(engine: Any, records: list[dict[str, Any]]) -> Any:
    """A ControlState holding every etapp change recorded on the control topic."""
    from router.worker.control import ControlState

    cs = ControlState(engine)
    for r in records:
        if r["type"] == "etapp_state":
            cs.apply(r)
    return cs


@click.group("etapp")
def etapp_group() -> None:
    """Etapp operations: status, hold, release, go-live, pause, rollback, and open orders across a switch.
    Changes go to the compacted control topic as audit records (who, why, when, effective instant);
    every running worker applies them within a second."""


@etapp_group.command("status")
@BOOTSTRAP
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.option("--history", is_flag=True, help="also list every recorded change (the audit trail)")
def status(bootstrap: str | None, as_json: bool, history: bool) -> None:
    """List each etapp with its planned go-live, its operational state, since when, by whom and why."""
    from router.timeutil import fmt_ms

    settings = settings_from(bootstrap)
    records = asyncio.run(read_control(settings))
    engine = _engine(settings, records)
    cs = state_book(engine, records)
    now = int(time.time() * 1000)
    states = cs.states.at(now)
    rows = []
    for e in engine.rules.plan.etapper:
        cur = cs.states.current(e.id, now)
        live, state = engine.is_live(e.id, now, states)
        pending = [c for c in cs.states.history(e.id) if c.effective_ms > now]
        rows.append({"etapp": e.id, "name": e.name, "planned_go_live": fmt_ms(engine.golive_ms[e.id]),
                     "state": state or "scheduled",
                     "routes_as": "parked" if state == "hold" else ("live" if live else "not live"),
                     "since": fmt_ms(cur.effective_ms) if cur else "-", "by": cur.who if cur else "-",
                     "why": cur.why if cur else "",
                     "next": f"{pending[0].state} at {fmt_ms(pending[0].effective_ms)}" if pending else ""})
    changes = [{"etapp": c.etapp, "state": c.state, "effective": fmt_ms(c.effective_ms), "at": fmt_ms(c.at_ms),
                "by": c.who, "why": c.why} for c in cs.states.history()] if history else []
    if as_json:
        import orjson

        click.echo(orjson.dumps({"rules_version": engine.version, "etapper": rows, "history": changes},
                                option=orjson.OPT_INDENT_2).decode())
        return
    from router.commands.out import console, table

    t = table(f"etapper (rules {engine.version[:12]})",
              ("etapp", "planned go-live", "state", "routes as", "since", "by", "why", "next"))
    for r in rows:
        t.add_row(r["etapp"], r["planned_go_live"], r["state"], r["routes_as"], r["since"], r["by"], r["why"],
                  r["next"])
    con = console()
    con.print(t)
    if history:
        h = table("changes", ("at", "etapp", "state", "effective", "by", "why"))
        for c in changes:
            h.add_row(c["at"], c["etapp"], c["state"], c["effective"], c["by"], c["why"])
        con.print(h)


def transition_problem(engine: Any, book: Any, etapp: str, new: str, at_ms: int) -> str | None:
    """Why a change of ``etapp`` to ``new`` at ``at_ms`` makes no sense, or None."""
    cur = book.current(etapp, at_ms)
    current = cur.state if cur else "scheduled"
    live, _ = engine.is_live(etapp, at_ms, book.at(at_ms))
    if new == current:
        return f"{etapp} is already {current}"
    if new == "scheduled" and current != "hold":
        return f"{etapp} is not on hold (it is {current}); only a held etapp can be released"
    if new in ("paused", "rolled_back") and (current == "hold" or not live):
        verb = "pause" if new == "paused" else "roll back"
        return f"{etapp} is not live (it is {current}); there is nothing to {verb}"
    if new == "live" and current == "scheduled" and live:
        return f"{etapp} is already live by its planned go-live"
    return None


def _make_transition(command: str, state: str) -> click.Command:
    @click.command(command, help=HELP[command])
    @click.argument("etapp")
    @click.option("--at", "at", default=None, help="effective instant (default now), e.g. '2026-04-21T06:00' "
                  "(Stockholm time) or ISO 8601 with offset")
    @click.option("--reason", required=True, help="why (kept in the audit record and shown in status)")
    @click.option("--until", "until", default=None, hidden=command != "hold",
                  help="planned end of the hold (an alert fires when the hold outlasts it)")
    @click.option("--who", default=None, help="operator name for the audit record (default: the login name)")
    @BOOTSTRAP
    def cmd(etapp: str, at: str | None, reason: str, until: str | None, who: str | None,
            bootstrap: str | None) -> None:
        from router.timeutil import fmt_ms, parse_cli_instant
        from router.worker.control import etapp_record, publish, who_am_i

        settings = settings_from(bootstrap)
        # what can be checked without the broker first
        if not reason.strip():
            click.echo("--reason must say why", err=True)
            sys.exit(1)
        now = int(time.time() * 1000)
        effective = parse_cli_instant(at) if at else now + settings.etapp_lead_ms
        if effective < now - settings.etapp_max_backdate_s * 1000:
            click.echo(f"--at {fmt_ms(effective)} lies more than {settings.etapp_max_backdate_s} s in the past "
                       "(SAMEX_ETAPP_MAX_BACKDATE_S); decisions already made cannot be changed", err=True)
            sys.exit(1)
        until_ms = parse_cli_instant(until) if until else None
        if until_ms is not None and until_ms <= effective:
            click.echo("--until must be after the effective instant", err=True)
            sys.exit(1)
        # the etapp against the active rule set (the last one published, else the rule folder)
        records = asyncio.run(read_control(settings))
        engine = _engine(settings, records)
        if etapp not in engine.golive_ms:
            known = ", ".join(sorted(engine.golive_ms))
            click.echo(f"unknown etapp {etapp!r}; the plan has: {known}", err=True)
            sys.exit(1)
        cs = state_book(engine, records)
        problem = transition_problem(engine, cs.states, etapp, state, effective)
        if problem:
            click.echo(f"refused: {problem}; nothing was published", err=True)
            sys.exit(1)
        rec = etapp_record(etapp, state, effective, who or who_am_i(), reason, until_ms)
        asyncio.run(publish(settings, rec))
        click.echo(f"{etapp}: {state} from {fmt_ms(effective)} (published to {settings.control_topic})")

    return cmd


for _name, _state in TRANSITIONS.items():
    etapp_group.add_command(_make_transition(_name, _state))


@etapp_group.command("inflight")
@click.argument("etapp")
@BOOTSTRAP
@click.option("--json", "as_json", is_flag=True, help="print JSON lines instead of a table")
@click.option("--all", "show_all", is_flag=True, help="also list orders that were already answered")
def inflight(etapp: str, bootstrap: str | None, as_json: bool, show_all: bool) -> None:
    """List the orders and referrals placed by the etapp's units that are still open across a switch of
    the etapp: placed in one system while the etapp now routes to another. Their results and answers
    follow them to where they were placed."""
    from router.timeutil import fmt_ms
    from router.worker.orders import read_orders

    settings = settings_from(bootstrap)
    records = asyncio.run(read_control(settings))
    engine = _engine(settings, records)
    if etapp not in engine.golive_ms:
        click.echo(f"unknown etapp {etapp!r}; the plan has: {', '.join(sorted(engine.golive_ms))}", err=True)
        sys.exit(1)
    cs = state_book(engine, records)
    now = int(time.time() * 1000)
    states = cs.states.at(now)
    rows = []
    for key, entry in sorted(asyncio.run(read_orders(settings)).items(), key=lambda kv: kv[1]["placed_ms"]):
        if entry.get("etapp") != etapp or (entry.get("answered_ms") and not show_all):
            continue
        now_dest = engine.placement(entry["unit"], entry["reply_kind"], now, states)
        if now_dest == tuple(entry["systems"]) and not show_all:
            continue  # placed where it would be placed now: no switch in between
        rows.append({"key": key, "kind": entry["kind"], "unit": entry["unit"], "placed": fmt_ms(entry["placed_ms"]),
                     "placed_in": ",".join(entry["systems"]), "now_routes_to": ",".join(now_dest or ()),
                     "answered": fmt_ms(entry.get("answered_ms"))})
    if as_json:
        import orjson

        for r in rows:
            click.echo(orjson.dumps(r).decode())
        return
    from router.commands.out import console, table

    t = table(f"open orders and referrals of {etapp} across a switch ({len(rows)})",
              ("order/referral", "kind", "unit", "placed", "placed in", "now routes to", "answered"))
    for r in rows:
        t.add_row(r["key"], r["kind"], r["unit"], r["placed"], r["placed_in"], r["now_routes_to"], r["answered"])
    console().print(t)


def register(cli: click.Group) -> None:
    cli.add_command(etapp_group)


__all__ = ["Path", "read_control", "register"]

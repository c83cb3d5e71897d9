"""``samex rules``: check, explain, diff (and publish, for running workers)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from router.errors import RulesError, SamexError

DIR = click.Path(exists=True, file_okay=False, path_type=Path)  # missing or a file: a usage error, exit 2


@click.group("rules")
def rules_group() -> None:
    """Routing rules per etapp: check them, explain a decision, diff two rule sets, publish."""


@rules_group.command("check")
@click.argument("rules_dir", type=DIR, default=Path("rules"), required=False)
def check(rules_dir: Path) -> None:
    """Prove a rule folder consistent: YAML and types, references, one etapp per unit, exactly one
    applicable route per (unit × kind × interval), no route to a retired system.

    Exit 0 when clean; 1 with one 'file:line: message' per problem; 2 when RULES_DIR is not a folder."""
    from router.rules.analysis import check_texts
    from router.rules.load import read_rule_texts

    try:
        texts = read_rule_texts(rules_dir)
    except RulesError as exc:
        for p in exc.problems:
            click.echo(p)
        sys.exit(1)
    problems = check_texts(texts, str(rules_dir).rstrip("/"))
    for p in problems:
        click.echo(p)
    if problems:
        click.echo(f"{len(problems)} problem(s) in {rules_dir}", err=True)
        sys.exit(1)
    from router.rules.load import version_of

    click.echo(f"{rules_dir}: OK (version {version_of(texts)})", err=True)


def _engine(rules_dir: Path):  # type: ignore[no-untyped-def]
    from router.rules.engine import Engine
    from router.rules.load import load_rules

    try:
        return Engine(load_rules(rules_dir))
    except RulesError as exc:
        for p in exc.problems:
            click.echo(p, err=True)
        click.echo(f"samex: the rule set in {rules_dir} is invalid", err=True)
        sys.exit(2)


def _states(pairs: tuple[str, ...]) -> dict[str, str]:
    from router.decision import ETAPP_STATES

    states: dict[str, str] = {}
    for p in pairs:
        etapp, _, state = p.partition("=")
        if state not in ETAPP_STATES:
            raise click.BadParameter(f"{p!r}: write ETAPP=STATE with STATE one of {', '.join(ETAPP_STATES)}",
                                     param_hint="--state")
        states[etapp] = state
    return states


@rules_group.command("explain")
@click.option("--rules", "rules_dir", type=DIR, default=Path("rules"), show_default=True, help="rule folder")
@click.option("--as-of", "as_of", default=None, help="instant to decide at (default now), e.g. "
              "'2026-04-21T06:00 Europe/Stockholm'; without a zone it is Stockholm time")
@click.option("--state", "states", multiple=True, metavar="ETAPP=STATE",
              help="operational etapp state (scheduled, hold, live, paused, rolled_back); repeatable")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def explain_cmd(rules_dir: Path, as_of: str | None, states: tuple[str, ...], file: Path) -> None:
    """Decide one message (HL7 v2 ER7, or an envelope as JSON) and print the decision as JSON.

    A message that cannot be routed prints destinations ["dead-letter"] with the reason (exit 0);
    an unreadable file exits 2.

    \b
    Envelope JSON (kind, patient, sender and receiver are required):
      {"kind": "remiss", "subtype": "REF^I12", "patient": "<personnummer>",
       "sender": {"unit_hsa_id": "SE..."}, "receiver": {"unit_hsa_id": "SE..."}}
    kind: remiss | lab_order | lab_result | info; patient: the number as text or
    {"value": ..., "type": "personnummer"}; payload (optional): {"format": ..., "data": "..."}."""
    from router.explain import explain
    from router.timeutil import parse_cli_instant

    try:
        data = file.read_bytes()
    except OSError as exc:
        click.echo(f"samex: cannot read {file}: {exc.strerror}", err=True)
        sys.exit(2)
    try:
        at = parse_cli_instant(as_of)
    except SamexError as exc:
        raise click.BadParameter(str(exc), param_hint="--as-of") from None
    engine = _engine(rules_dir)
    given = _states(states)
    unknown = sorted(set(given) - set(engine.golive_ms))
    if unknown:
        raise click.BadParameter(f"unknown etapp {', '.join(unknown)}; the plan has: "
                                 f"{', '.join(sorted(engine.golive_ms))}", param_hint="--state")
    decision = explain(engine, data, at, given)
    out = decision.as_json()
    from router.timeutil import fmt_ms

    out["as_of"] = fmt_ms(at)
    click.echo(orjson.dumps(out).decode())


@rules_group.command("diff")
@click.argument("old", type=DIR)
@click.argument("new", type=DIR)
def diff_cmd(old: Path, new: Path) -> None:
    """Show which (unit × kind) destinations change between two rule folders, over which interval,
    and why (a go-live moved, a unit changed etapp, another rule decides, ...). Routings whose
    destinations stay but whose deciding rule changes are listed after them, marked "same
    destinations". Exit 0 when no destination changes, 1 when one does."""
    from router.rules.analysis import diff_rules, format_changes

    a, b = _engine(old), _engine(new)
    changes = diff_rules(a.rules, b.rules)
    for line in format_changes(changes):
        click.echo(line)
    moved = [c for c in changes if c.dest_change]
    pairs = {(c.unit, c.kind) for c in moved}
    click.echo(f"{len(pairs)} (unit × kind) pair(s) change destinations ({len(moved)} interval(s)); "
               f"{len(changes) - len(moved)} change only the deciding rule; versions {a.version} -> {b.version}",
               err=True)
    sys.exit(1 if moved else 0)


def register(cli: click.Group) -> None:
    cli.add_command(rules_group)

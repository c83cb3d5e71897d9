"""``samex settings``: every setting, its environment variable, value and meaning."""

from __future__ import annotations

import json
import shutil
import textwrap

import click


def describe() -> list[dict[str, object]]:
    """The settings as this process sees them (environment included); secrets are never shown."""
    from pydantic import SecretStr

    from router.settings import Settings, load_settings

    current = load_settings()
    rows: list[dict[str, object]] = []
    for name, field in Settings.model_fields.items():
        value = getattr(current, name)
        default = field.default
        secret = isinstance(default, SecretStr)
        rows.append({
            "env": f"SAMEX_{name.upper()}",
            "value": ("(set)" if value != default else "(the development key)") if secret else _plain(value),
            "default": "(hidden)" if secret else _plain(default),
            "changed": value != default,
            "description": field.description or "",
        })
    return rows


def _plain(v: object) -> object:
    return v if isinstance(v, int | float | bool | type(None)) else str(v)


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per setting, one per line")
@click.option("--changed", is_flag=True, help="only the settings whose value is not the default")
def settings_cmd(as_json: bool, changed: bool) -> None:
    """Show every setting: its environment variable (SAMEX_ prefix), the value this process would use,
    the default, and what it does. The patient key is never shown, only whether it is set."""
    rows = [r for r in describe() if r["changed"] or not changed]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, ensure_ascii=False))
        return
    for r in rows:
        mark = "*" if r["changed"] else " "
        line = f"{mark} {r['env']}={r['value']}"
        if r["changed"]:
            line += f"  (default {r['default']})"
        click.echo(line)
        if r["description"]:
            click.echo(textwrap.fill(str(r["description"]), width=min(100, shutil.get_terminal_size().columns),
                                     initial_indent="      ", subsequent_indent="      "))
    click.echo("(* = not the default)" if any(r["changed"] for r in rows) else "(all defaults)")


def register(cli: click.Group) -> None:
    cli.add_command(settings_cmd)

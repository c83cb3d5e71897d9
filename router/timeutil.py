"""Instants on the command line: ISO 8601 with offset, 'YYYY-MM-DDTHH:MM Zone/Name', or local Stockholm time."""

from __future__ import annotations

import datetime as dt
import time
from zoneinfo import ZoneInfo

from router.errors import ConfigError

STOCKHOLM = ZoneInfo("Europe/Stockholm")


def parse_cli_instant(text: str | None) -> int:
    """Epoch milliseconds. ``None``/``now`` → now; a time without zone is Europe/Stockholm local time."""
    if text is None or text.strip().lower() == "now":
        return int(time.time() * 1000)
    from router.rules.model import parse_instant

    try:
        return int(parse_instant(text).timestamp() * 1000)
    except ValueError:
        pass
    try:
        value = dt.datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise ConfigError(f"cannot read the instant {text!r}; write e.g. 2026-04-21T06:00 Europe/Stockholm") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=STOCKHOLM)
    return int(value.timestamp() * 1000)


def fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, STOCKHOLM).isoformat(timespec="seconds")

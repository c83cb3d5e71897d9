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
    from router.rules.model import WallTimeError, parse_instant, wall_time

    try:
        return int(parse_instant(text).timestamp() * 1000)
    except WallTimeError as exc:
        raise ConfigError(str(exc)) from None
    except ValueError:
        pass
    try:
        value = dt.datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise ConfigError(f"cannot read the instant {text!r}; write e.g. 2026-04-21T06:00 Europe/Stockholm") from None
    if value.tzinfo is None:
        try:
            value = wall_time(value, STOCKHOLM, text)
        except WallTimeError as exc:
            raise ConfigError(str(exc)) from None
    return int(value.timestamp() * 1000)


def fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    spec = "milliseconds" if ms % 1000 else "seconds"
    return dt.datetime.fromtimestamp(ms / 1000, STOCKHOLM).isoformat(timespec=spec)


def fmt_minute(ms: int) -> str:
    """Stockholm time to the minute when the instant is on a whole minute (go-lives are), else to the
    second or millisecond, so that an instant just before a boundary never reads as the boundary."""
    spec = "minutes" if ms % 60_000 == 0 else "seconds" if ms % 1000 == 0 else "milliseconds"
    return dt.datetime.fromtimestamp(ms / 1000, STOCKHOLM).isoformat(timespec=spec)

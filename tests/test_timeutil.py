"""Instants: wall-clock times the clocks skip or repeat are refused; printed instants keep their precision."""

from __future__ import annotations

import pytest

from router.errors import ConfigError
from router.rules.model import parse_instant
from router.timeutil import fmt_minute, fmt_ms, parse_cli_instant


@pytest.mark.parametrize("text", ["2025-03-30T02:30", "2025-03-30 02:30:00", "2025-03-30T02:30 Europe/Stockholm"])
def test_a_time_the_spring_clock_change_skips_is_refused(text):
    with pytest.raises(ConfigError, match=r"does not exist in Europe/Stockholm.*\+01:00 or \+02:00"):
        parse_cli_instant(text)


@pytest.mark.parametrize("text", ["2025-10-26T02:30", "2025-10-26T02:30 Europe/Stockholm"])
def test_a_time_the_autumn_clock_change_repeats_is_refused(text):
    with pytest.raises(ConfigError, match=r"occurs twice in Europe/Stockholm.*\+02:00 for the first, \+01:00"):
        parse_cli_instant(text)


def test_with_an_offset_both_readings_of_the_repeated_hour_are_taken():
    first = parse_cli_instant("2025-10-26T02:30+02:00")
    second = parse_cli_instant("2025-10-26T02:30+01:00")
    assert second - first == 3_600_000


def test_a_rule_file_go_live_in_the_skipped_hour_is_refused():
    with pytest.raises(ValueError, match="does not exist"):
        parse_instant("2026-03-29T02:15 Europe/Stockholm")
    assert parse_instant("2026-03-29T03:15 Europe/Stockholm").utcoffset().total_seconds() == 7200


def test_printed_instants_keep_seconds_and_milliseconds():
    ms = parse_cli_instant("2024-11-12T05:59:59.999+01:00")
    assert fmt_ms(ms) == "2024-11-12T05:59:59.999+01:00"
    assert fmt_ms(ms + 1) == "2024-11-12T06:00:00+01:00"
    assert fmt_minute(ms) == "2024-11-12T05:59:59.999+01:00"
    assert fmt_minute(ms + 1) == "2024-11-12T06:00+01:00"
    assert fmt_minute(ms - 999) == "2024-11-12T05:59:59+01:00"

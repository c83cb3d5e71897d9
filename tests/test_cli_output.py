"""Tables on a pipe keep whole values (ids must stay pastable); in a narrow terminal they fold."""

from __future__ import annotations

import io

from router.commands.out import console, table

LONG_ID = "7af805d6-1955-5b43-8b7d-4c1e2f3a4b5c-" + "0123456789" * 3


def test_a_table_on_a_pipe_keeps_whole_ids(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    t = table("what would change", ("kind", "decided", "would be", "count", "examples"))
    t.add_row("remiss", "millennium, elvis", "dead_letter (no route)", "12,345", LONG_ID)
    console().print(t)
    out = capsys.readouterr().out
    assert LONG_ID in out and "…" not in out


def test_a_narrow_terminal_folds_instead_of_cutting() -> None:
    from rich.console import Console

    buf = io.StringIO()
    con = Console(file=buf, width=60, force_terminal=True, color_system=None)
    t = table("t", ("kind", "examples"))
    t.add_row("remiss", LONG_ID)
    con.print(t)
    text = buf.getvalue()
    assert "…" not in text  # rich's ellipsis: a cut value
    assert LONG_ID[:20] in text and LONG_ID[-10:] in text  # folded over lines, every part shown

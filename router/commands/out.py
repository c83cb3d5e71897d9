"""The rich console of the command line."""

from __future__ import annotations

from typing import Any


def console(stderr: bool = False) -> Any:
    """A console for tables and messages. When the output is not a terminal (a pipe, a file, a CI
    log) it has no 80-column limit, so a table keeps whole message ids rather than cutting them with
    an ellipsis; an id that is cut cannot be pasted into `samex replay --message-id` or `samex trace`."""
    from rich.console import Console

    con = Console(stderr=stderr)
    return con if con.is_terminal else Console(stderr=stderr, width=1_000)


def table(title: str, columns: tuple[str, ...]) -> Any:
    """A table whose cells wrap (fold) in a narrow terminal instead of being cut."""
    from rich.table import Table

    t = Table(title=title)
    for col in columns:
        t.add_column(col, overflow="fold")
    return t

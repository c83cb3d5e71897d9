"""What every connector shares: retry backoff, the signal-driven stop event, settings and the
``--bootstrap`` option of their commands."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from dataclasses import dataclass
from typing import Any

import click

BOOTSTRAP = click.option("--bootstrap", envvar="SAMEX_KAFKA_BOOTSTRAP", default=None,
                         help="Kafka bootstrap servers (default: SAMEX_KAFKA_BOOTSTRAP or 127.0.0.1:9092)")


def check_system(settings: Any, system: str) -> None:
    """Refuse a destination system the rule folder does not know (a typo would consume a topic no
    one writes to, for ever). If the rule folder cannot be read, the connector still starts."""
    from router.rules.load import load_rules

    try:
        known = {s.id for s in load_rules(settings.rules_dir).systems.systems}
    except Exception:
        return
    if system not in known:
        raise click.BadParameter(f"unknown system {system!r}; {settings.rules_dir}/systems.yaml has: "
                                 f"{', '.join(sorted(known))}", param_hint="--system")


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter for delivery retries."""

    base_s: float = 0.2
    cap_s: float = 10.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        """Wait before retry ``attempt`` (1-based): base·2^(attempt-1), at most cap, ± jitter."""
        d = min(self.cap_s, self.base_s * (2 ** min(attempt - 1, 30)))
        return d * (1 + random.uniform(-self.jitter, self.jitter))


def settings_for(bootstrap: str | None) -> Any:
    from router.settings import Settings

    return Settings(**({"kafka_bootstrap": bootstrap} if bootstrap else {}))  # type: ignore[arg-type]


def stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop

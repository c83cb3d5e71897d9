"""The ``samex`` command line. Subcommand groups live in ``router/commands/``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from router.errors import SamexError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="samex")
def cli() -> None:
    """samex routes remisser, lab orders/results and information between care units while
    Västra Götalandsregionen moves to Millennium one etapp at a time."""


@cli.group()
def schemas() -> None:
    """Avro schemas of the envelope, decision, dead-letter, delivery and control records."""


@schemas.command("check")
@click.option("--dir", "schema_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="schema folder (default: the repository's schemas/)")
def schemas_check(schema_dir: Path | None) -> None:
    """Check every current schema against its released versions, in both directions."""
    from router.codec import SCHEMA_DIR, Codec
    from router.schemacompat import check_dir

    folder = schema_dir or SCHEMA_DIR
    found = check_dir(folder)
    if not found:
        try:
            Codec(folder)
        except SamexError as exc:
            found = [str(exc)]
    for p in found:
        click.echo(p)
    if found:
        click.echo(f"{len(found)} compatibility problem(s)", err=True)
        sys.exit(1)
    click.echo(f"schemas in {folder} are compatible with every released version")


@cli.command()
def kafka() -> None:
    """Start a local single-node Kafka broker (KRaft) and wait for Ctrl-C."""
    from router.localkafka import main as kafka_main

    sys.exit(kafka_main([]))


def _register() -> None:
    import importlib
    import pkgutil

    import router.commands as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"router.commands.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(cli)


_register()


def main() -> None:
    from aiokafka.errors import KafkaError
    from pydantic import ValidationError

    try:
        cli(standalone_mode=True)
    except SamexError as exc:
        click.echo(f"samex: {exc}", err=True)
        sys.exit(2)
    except ValidationError as exc:  # settings from the environment or options
        for err in exc.errors():
            field = ".".join(str(x) for x in err["loc"])
            name = f"SAMEX_{field.upper()}" if exc.title == "Settings" else field
            click.echo(f"samex: setting {name}: {err['msg']}", err=True)  # the input value is not echoed
        sys.exit(2)
    except KafkaError as exc:
        import logging

        from router.settings import load_settings

        logging.getLogger("asyncio").disabled = True  # no "Unclosed AIOKafka…" noise as the process exits

        try:
            where = load_settings().kafka_bootstrap
        except ValidationError:
            where = "the configured broker"
        click.echo(f"samex: Kafka at {where} is not reachable or refused the request ({type(exc).__name__}); "
                   "start one with `samex kafka` or set SAMEX_KAFKA_BOOTSTRAP", err=True)
        sys.exit(2)

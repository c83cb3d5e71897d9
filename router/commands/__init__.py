"""Subcommand groups of the samex CLI; each module has ``register(cli)``."""

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from router.cli import cli

REPO = Path(__file__).resolve().parent.parent


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", list(_commands(cli)), ids=" ".join)
def test_every_subcommand_has_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    # each command documents itself in one sentence or more
    assert len(result.output.splitlines()) >= 3


def test_installed_entry_point_runs():
    out = subprocess.run([str(Path(sys.executable).parent / "samex"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "samex" in out.stdout


def test_layout_and_pins():
    for name in ["router", "schemas", "rules", "connectors", "tests", "docker-compose.yml", "pyproject.toml",
                 "README.md", "Makefile", ".ci/run"]:
        assert (REPO / name).exists(), name
    text = (REPO / "pyproject.toml").read_text()
    assert '"faust-streaming>=0.15.3,<0.16"' in text and '"aiokafka>=0.14,<0.15"' in text
    assert "make test" in (REPO / ".ci/run").read_text()


def test_readme_has_exactly_the_two_setup_commands_up_front():
    readme = (REPO / "README.md").read_text()
    head = readme.split("\n## ", 2)
    setup = head[1] if len(head) > 1 else ""
    blocks = [b.split("```", 1)[0].strip() for b in setup.split("```sh\n")[1:]]
    assert blocks == ["make run", "make test"], blocks

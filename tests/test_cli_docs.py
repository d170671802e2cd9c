"""Every r2 command has help text, and the README documents it."""

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from r2.cli import COMMANDS, main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _leaves(group, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        path = prefix + (name,)
        if isinstance(command, click.Group):
            yield from _leaves(command, path)
        else:
            yield path, command


ALL = list(_leaves(main))


def test_every_registered_command_is_built():
    top = {path[0] for path, _ in ALL}
    assert top == set(COMMANDS), f"registered but missing: {sorted(set(COMMANDS) - top)}"


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=lambda p: " ".join(p))
def test_command_has_help_and_is_in_the_readme(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    _, command = next(item for item in ALL if item[0] == path)
    assert (command.help or "").strip(), f"r2 {' '.join(path)} has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden and "--help" not in param.opts:
            assert param.help, f"r2 {' '.join(path)} {param.opts[0]} has no help text"
    assert f"r2 {' '.join(path)}" in README, f"README does not mention `r2 {' '.join(path)}`"


def test_readme_has_the_two_setup_commands_and_ci_runs_the_second():
    assert "pip install -e . && r2 demo" in README
    test_command = "pip install -e '.[test]' && pytest"
    assert test_command in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert test_command in ci

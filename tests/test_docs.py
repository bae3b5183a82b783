"""The documentation keeps up with the code: every command and config key is in the README."""

from __future__ import annotations

import argparse
from pathlib import Path

from havedane import config
from havedane.cli import parser

README = (Path(__file__).parent.parent / "README.md").read_text()


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_has_help_and_a_readme_entry() -> None:
    for name, command in commands().items():
        assert command.description, f"havedane {name} has no help text"
        assert f"`havedane {name}" in README, f"README does not document havedane {name}"


def test_every_config_key_is_in_the_readme() -> None:
    for section, keys in config.SCHEMA.items():
        for key in keys:
            name = f"`[{section}] {key}`" if section else f"`{key}`"
            assert name in README, f"README does not document {name}"


def test_readme_starts_with_the_two_commands() -> None:
    head = README.split("---", 1)[0]
    assert "./scripts/serve" in head and "./scripts/test" in head
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "./scripts/test" in ci

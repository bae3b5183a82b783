"""The documentation keeps up with the code: every command and config key is in the README."""

from __future__ import annotations

import argparse
import re
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


def readme_flags(name: str) -> set[str]:
    """The flags the README's command table gives `havedane NAME` (all rows for it)."""
    rows = [line for line in README.splitlines() if line.startswith(f"| `havedane {name}")]
    assert rows, f"README's command table has no row for havedane {name}"
    cells = [re.split(r"(?<!\\)\|", row)[1] for row in rows]  # the first cell; `\|` is a pipe inside it
    return {flag for cell in cells for flag in re.findall(r"--[a-z][a-z-]*", cell)}


def parser_flags(command: argparse.ArgumentParser) -> set[str]:
    """Every long option of a command and of its subcommands; --help and --config are said
    once above the table for every command."""
    flags = set()
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= parser_flags(sub)
        flags |= {o for o in action.option_strings if o.startswith("--")}
    return flags - {"--help", "--config"}


def test_the_command_table_and_help_agree_flag_by_flag() -> None:
    for name, command in commands().items():
        assert readme_flags(name) == parser_flags(command), f"havedane {name}: README vs --help"

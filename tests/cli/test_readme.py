"""The README's CLI table and the Typer app list the same commands.

The table is the one under the README's ``## The CLI`` heading (up to the next heading). Its first
column names commands in backticks; one cell may name several siblings of a command group, the
group written once: "`toyworld images` / `train` / `evaluate`" is ``toyworld images``,
``toyworld train`` and ``toyworld evaluate``. The app's commands are the leaves of the click tree
Typer builds (groups such as ``toyworld`` count through their subcommands; hidden commands are
left out).
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from precompute.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## The CLI"


def cli_section(text: str) -> str:
    """The README text from the ``## The CLI`` heading to the next heading of level 1-3."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == SECTION]
    assert starts, f"README.md has no {SECTION!r} heading"
    body = []
    for line in lines[starts[0] + 1:]:
        if re.match(r"#{1,3} ", line):
            break
        body.append(line)
    return "\n".join(body)


def table_commands(section: str) -> list[str]:
    """The commands named in the first column of the first table whose header's first cell is 'command'."""
    rows = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    assert rows, f"the README's {SECTION!r} section has no table"
    header = [c.strip().lower() for c in rows[0].strip("|").split("|")]
    assert header[0] == "command", f"the CLI table's first column is {header[0]!r}, expected 'command'"
    names: list[str] = []
    for row in rows[1:]:
        first = row.strip("|").split("|")[0].strip()
        if set(first) <= set("-: "):  # the |---|---| separator
            continue
        items = [" ".join(t.split()) for t in re.findall(r"`([^`]+)`", first)]
        assert items, f"a row of the CLI table names no command in backticks: {row!r}"
        group = items[0].split()[:-1]  # "toyworld images" -> ["toyworld"]
        for item in items:
            words = item.split()
            names.append(" ".join(group + words) if len(words) < len(items[0].split()) else item)
    return names


def app_commands() -> set[str]:
    """Full paths of every visible leaf command of the Typer app, e.g. 'run', 'toyworld train'."""

    def walk(group, prefix: tuple[str, ...]):
        for name, cmd in group.commands.items():
            if getattr(cmd, "hidden", False):
                continue
            if hasattr(cmd, "commands"):  # a sub-typer (typer vendors its own click, so no isinstance)
                yield from walk(cmd, prefix + (name,))
            else:
                yield " ".join(prefix + (name,))

    return set(walk(typer.main.get_command(app), ()))


def test_parser_reads_a_group_written_once():
    section = "\n".join([
        "| command | what it does |",
        "|---|---|",
        "| `run` | everything |",
        "| `toyworld images` / `train` / `evaluate` | the toy world |",
    ])
    assert table_commands(section) == ["run", "toyworld images", "toyworld train", "toyworld evaluate"]


def test_parser_stops_at_the_next_heading():
    text = "# x\n\n## The CLI\n\n| command | w |\n|---|---|\n| `run` | r |\n\n## Other\n\n| command | w |\n| `nope` | n |\n"
    assert table_commands(cli_section(text)) == ["run"]


def test_every_readme_command_exists_and_every_command_is_in_the_readme():
    listed = table_commands(cli_section(README.read_text(encoding="utf-8")))
    assert len(listed) == len(set(listed)), f"the README's CLI table names a command twice: {sorted(listed)}"
    commands = app_commands()
    assert {"run", "decompose", "toyworld train"} <= commands  # the walk reaches sub-typers
    missing = sorted(commands - set(listed))
    unknown = sorted(set(listed) - commands)
    assert not missing, f"commands of `clip-interpret` missing from the README's CLI table: {missing}"
    assert not unknown, f"the README's CLI table names commands that `clip-interpret` does not have: {unknown}"

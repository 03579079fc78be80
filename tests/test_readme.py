"""The README tells the truth: its settings, commands, make targets, paths and links exist."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from streamgenre.apps.cli import build_parser
from streamgenre.config import Settings, settings_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def section_block(heading: str) -> str:
    """The first fenced block after ``heading``."""
    text = README.read_text()
    after = text[text.index(f"\n{heading}\n"):]
    start = after.index("```\n") + len("```\n")
    return after[start:after.index("```", start)]


def readme_commands() -> dict[str, set[str]]:
    """Each ``streamgenre COMMAND`` line of the "Command line" block, with the options it shows."""
    commands: dict[str, set[str]] = {}
    for line in section_block("## Command line").splitlines():
        words = line.split("#")[0].split()
        if len(words) >= 2 and words[0] == "streamgenre":
            options = {m for w in words[2:] for m in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", w)}
            commands.setdefault(words[1], set()).update(options)
    return commands


def test_readme_settings_table_is_generated_from_settings() -> None:
    text = README.read_text()
    start, end = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
    table = text[text.index(start) + len(start) : text.index(end)]
    assert table == settings_table(), "regenerate it with `python -m streamgenre.config`"


def test_every_setting_in_the_table_exists_and_vice_versa() -> None:
    text = README.read_text()
    table = text[text.index("<!-- settings-table:start -->"):text.index("<!-- settings-table:end -->")]
    documented = set(re.findall(r"^\| `STREAMGENRE_([A-Z0-9_]+)` \|", table, re.MULTILINE))
    fields = {name.upper() for name in Settings.model_fields}
    assert documented - fields == set(), "the README documents settings that do not exist"
    assert fields - documented == set(), "settings missing from the README table"


def test_readme_lists_real_commands() -> None:
    assert {"run", "ingest", "tail", "demo"} <= readme_commands().keys()


@pytest.mark.parametrize("command", sorted(readme_commands()))
def test_every_readme_command_answers_help_with_its_options(command: str) -> None:
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(out):
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0, f"`streamgenre {command} --help` failed"
    help_text = out.getvalue()
    assert help_text.startswith(f"usage: streamgenre {command}")
    missing = sorted(o for o in readme_commands()[command] if not re.search(rf"(?<![\w-]){o}(?![\w-])", help_text))
    assert not missing, f"the README shows `streamgenre {command}` options it does not have: {missing}"


def test_readme_has_the_two_setup_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    mentioned = set(re.findall(r"`make ([\w-]+)`", text)) | {"demo", "test"}
    assert mentioned - targets == set(), "the README names make targets the Makefile lacks"


def test_data_path_block_names_real_modules() -> None:
    paths = re.findall(r"^\s*((?:stream|model|apps|bench)/\w+\.py)", section_block("## The data path"), re.MULTILINE)
    assert len(paths) >= 8
    assert [p for p in paths if not (ROOT / "streamgenre" / p).is_file()] == []


def test_relative_links_lead_to_files() -> None:
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README.read_text())
    assert links
    assert [link for link in links if not (ROOT / link).exists()] == []

"""The README documents every setting, exactly as the code defines them."""

from __future__ import annotations

from pathlib import Path

from streamgenre.config import settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_settings_table_is_generated_from_settings() -> None:
    text = README.read_text()
    start, end = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
    table = text[text.index(start) + len(start) : text.index(end)]
    assert table == settings_table(), "regenerate it with `python -m streamgenre.config`"


def test_readme_has_the_two_setup_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text

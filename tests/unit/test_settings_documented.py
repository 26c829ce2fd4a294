"""Every setting is in the README's configuration table (a newcomer configures from there)."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings


def test_every_setting_is_in_the_readme() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("## Configuration") :]
    missing = [
        f"HANDOFF_{name.upper()}"
        for name in Settings.model_fields
        if f"`HANDOFF_{name.upper()}`" not in table
    ]
    assert not missing, f"add to the README's configuration table: {missing}"

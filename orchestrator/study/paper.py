"""The paper's published numbers that a study's report puts beside its own (``paper:`` names a
file in ``orchestrator/study/paper_numbers/``, each cell with its table reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainables.errors import ConfigError
from trainables.schema import load_yaml_file

PAPER_DIR = Path(__file__).resolve().parent / "paper_numbers"


def load_paper_numbers(name: str | None, where: str = "paper") -> dict[str, Any]:
    """The paper's published numbers named by a study's ``paper:`` key; an unknown name or a
    file of the wrong shape is an error, like every other name in a study."""
    if not name:
        return {}
    known = sorted(p.stem for p in PAPER_DIR.glob("*.yaml"))
    if name not in known:
        raise ConfigError(f"{where}: unknown paper-numbers file {name!r}; expected one of: {', '.join(known)}")
    data = load_yaml_file(PAPER_DIR / f"{name}.yaml")
    if not isinstance(data, dict) or not isinstance(data.get("cells", []), list):
        raise ConfigError(f"{where}: {PAPER_DIR / name}.yaml: expected a mapping with a list of cells")
    return data

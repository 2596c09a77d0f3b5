"""Study reports: PNG plots and a markdown table in the output directory."""
from __future__ import annotations

from pathlib import Path


def write_report(study, rows: list[dict], output_dir: Path) -> list[Path]:
    """Write the report for ``study.report``; returns the files written."""
    from orchestrator.summary import table

    path = output_dir / "report.md"
    path.write_text(f"# {study.name}\n\n{study.description}\n\n```\n{table(rows)}\n```\n")
    return [path]

"""What a study leaves for people: MLflow runs (``tracking``, and ``callbacks`` for the trials'),
the console (``progress``, ``tables``), summary files (``summary``), reports (``reports``) and
paired tests between certified trials (``paired``);
numbers formatted one way (``format``). The names below load their module when first used."""

from __future__ import annotations

from trainables.lazy import surface

__all__ = [
    "MLflowTrialCallback",
    "Progress",
    "StoreWarmup",
    "Tracker",
    "add_certification",
    "add_intervals",
    "add_paper",
    "ci",
    "paired_tests",
    "provenance",
    "rows_from_records",
    "table",
    "trial_row",
    "write_report",
    "write_summary",
]
_HOME = {
    "StoreWarmup": "tracking",
    "Tracker": "tracking",
    "provenance": "tracking",
    "MLflowTrialCallback": "callbacks",
    "Progress": "progress",
    "table": "tables",
    "ci": "format",
    "paired_tests": "paired",
    "add_certification": "summary",
    "add_intervals": "summary",
    "add_paper": "summary",
    "rows_from_records": "summary",
    "trial_row": "summary",
    "write_summary": "summary",
    "write_report": "reports",
}


__getattr__ = surface(__name__, _HOME)

"""The study file as data: its typed spec (``spec``), loading and planning (``load``), the rules it
must follow (``rules``), the search space's vocabulary (``space``), stage references (``refs``),
the names of a trial's numbers (``names``), finalist selection (``selection``), accuracy
intervals (``intervals``) and the paper's numbers (``paper``; its data files are the package
``paper_numbers``). No Ray, no MLflow, no torch. The layers above import these names from here."""

from .intervals import count_of, finite, intervals, mcnemar, wilson
from .load import DEFAULT_STUDY, certify_study, list_studies, load_raw, parse, plan, publish
from .names import NOT_METRICS, PLACEMENT, SETTINGS, TEST, TUNE_INTERNAL, VAL, under, val_name
from .paper import load_paper_numbers, load_paper_settings, paper_cell, paper_metrics, settings_findings
from .refs import collect_refs, entry_base, is_ref, parse_ref, strip_refs, substitute
from .rules import resolve as resolve_config
from .selection import EVALUATED, select
from .space import (
    DefineByRun,
    config_key,
    default_point,
    distribution,
    grid_points,
    nested,
    optuna_name,
    optuna_params,
    resolve_refs_for,
    sampler_label,
    searched_values,
    seed_group,
    short_name,
    stage_refs,
    startup_trials,
    trial_config,
)
from .spec import Plan, StageSpec, Study

__all__ = [
    "DEFAULT_STUDY",
    "DefineByRun",
    "EVALUATED",
    "NOT_METRICS",
    "PLACEMENT",
    "Plan",
    "SETTINGS",
    "StageSpec",
    "Study",
    "TEST",
    "TUNE_INTERNAL",
    "VAL",
    "collect_refs",
    "config_key",
    "count_of",
    "default_point",
    "distribution",
    "entry_base",
    "finite",
    "grid_points",
    "intervals",
    "is_ref",
    "list_studies",
    "load_paper_numbers",
    "load_paper_settings",
    "paper_cell",
    "paper_metrics",
    "certify_study",
    "load_raw",
    "mcnemar",
    "nested",
    "optuna_name",
    "optuna_params",
    "parse",
    "parse_ref",
    "publish",
    "plan",
    "resolve_config",
    "resolve_refs_for",
    "sampler_label",
    "searched_values",
    "seed_group",
    "select",
    "settings_findings",
    "short_name",
    "stage_refs",
    "startup_trials",
    "strip_refs",
    "substitute",
    "trial_config",
    "under",
    "val_name",
    "wilson",
]

"""The study file as data: its typed spec (``spec``), loading and planning (``load``), the rules it
must follow (``rules``), the search space's vocabulary (``space``), stage references (``refs``),
the names of a trial's numbers (``names``), finalist selection (``selection``), accuracy
intervals (``intervals``) and the paper's numbers (``paper``; its data files are the package
``paper_numbers``, so its loader is not on this surface, where the data package's name would
shadow it). No Ray, no MLflow, no torch."""

from .intervals import finite, intervals, wilson
from .load import DEFAULT_STUDY, list_studies, load_raw, parse, plan
from .names import TEST, VAL
from .refs import is_ref, resolve_refs_for, strip_refs, substitute
from .selection import select
from .space import sampler_label
from .spec import Plan, StageSpec, Study

__all__ = [
    "DEFAULT_STUDY",
    "TEST",
    "VAL",
    "Plan",
    "StageSpec",
    "Study",
    "finite",
    "intervals",
    "is_ref",
    "list_studies",
    "load_raw",
    "parse",
    "plan",
    "resolve_refs_for",
    "sampler_label",
    "select",
    "strip_refs",
    "substitute",
    "wilson",
]

"""Stage references: ``"stage:NAME/key=value[,key=value]"`` names the final checkpoint of the
completed trial of an earlier stage whose config has those values (the init study starts
SPROUT from the models its first stage trained). A value ``{key}`` is the trial's own value of
``key`` (``stage:natural/model_args.width={model_args.width}``: the natural model of the trial's
own width), filled in for each trial of a grid stage. Checked when a study is validated, resolved
to checkpoint paths between stages, substituted into each trial's config by its driver.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from trainables.checkpoint import CHECKPOINT_FILE
from trainables.errors import ConfigError
from trainables.files import join_uri

from ..record import TrialStatus

STAGE_REF = "stage:"
TEMPLATE = re.compile(r"\{([A-Za-z0-9_.]+)\}")  # {key}: the trial's own value of key


def is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(STAGE_REF)


def is_template(value: Any) -> bool:
    """A reference that names the trial's own values (``{key}``): concrete only per trial."""
    return is_ref(value) and bool(TEMPLATE.search(value))


def expand_ref(ref: str, flat: Mapping[str, Any], where: str = "stage reference") -> str:
    """``ref`` with every ``{key}`` replaced by the trial's value of ``key`` (its flat config)."""

    def fill(m: re.Match) -> str:
        if m.group(1) not in flat:
            raise ConfigError(f"{where}: {ref!r}: a trial of this stage has no {m.group(1)} to fill {{{m.group(1)}}}")
        return str(flat[m.group(1)])

    return TEMPLATE.sub(fill, ref)


def parse_ref(ref: str, where: str) -> tuple[str, dict[str, str]]:
    """``stage:NAME/k=v,k2=v2`` -> (NAME, {k: v, k2: v2}); a condition without ``=`` is refused."""
    stage, _, cond = ref[len(STAGE_REF) :].partition("/")
    wanted = {}
    for c in filter(None, cond.split(",")):
        key, eq, value = c.partition("=")
        if not eq or not key:
            raise ConfigError(f"{where}: {ref!r}: expected stage:NAME/key=value[,key=value], got the condition {c!r}")
        wanted[key] = value
    return stage, wanted


def check_ref(ref: str, where: str, earlier: list[str]) -> None:
    stage, _ = parse_ref(ref, where)
    if stage not in earlier:
        raise ConfigError(
            f"{where}: {ref!r} refers to stage {stage!r}; expected one of the earlier stages: "
            f"{', '.join(earlier) or '(none)'}"
        )


def retarget_refs(value: Any, key: str, new: str) -> Any:
    """``value`` (any nesting) with every reference's ``key=...`` condition set to ``new``: what
    ``--smoke-test`` does when it replaces every model with the small one."""
    if is_ref(value):
        stage, wanted = parse_ref(value, "stage reference")
        if key not in wanted:
            return value
        wanted[key] = new
        return f"{STAGE_REF}{stage}/" + ",".join(f"{k}={v}" for k, v in wanted.items())
    if isinstance(value, Mapping):
        return {k: retarget_refs(v, key, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(retarget_refs(v, key, new) for v in value)
    return value


def entry_base(stage, entry: Mapping[str, Any]) -> dict:
    """What an evaluation stage's checkpoint is described by: the stage's base (references
    stripped) with the entry's own keys (model, model_args, dataset, method, ...) on top."""
    from trainables.schema import deep_merge

    return deep_merge(strip_refs(stage.base), {k: v for k, v in entry.items() if k not in ("name", "checkpoint")})


def strip_refs(base: Mapping[str, Any]) -> dict:
    """The base with stage references replaced by None (resolved at run time)."""
    b = copy.deepcopy(dict(base))
    if is_ref(b.get("init_checkpoint")):
        b["init_checkpoint"] = None
    return b


def collect_refs(stage) -> set[str]:
    """Every stage reference a stage's base, search and evaluation use."""
    found: set[str] = set()

    def walk(v):
        if is_ref(v):
            found.add(v)
        elif isinstance(v, Mapping):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(stage.base)
    walk(stage.search.params)
    walk(list(stage.search.cases))
    walk(stage.evaluation.transfer_source)
    walk([c.get("checkpoint") for c in stage.checkpoints or () if isinstance(c, Mapping)])
    return found


def ref_target(ref: str, rows: list[dict]) -> str | None:
    """The final checkpoint file of the first completed trial of the named stage that matches (an
    evaluation stage's: the file it evaluated, published weights with their format)."""
    from trainables.schema import flatten

    stage, wanted = parse_ref(ref, "stage reference")
    for r in rows:
        if r["stage"] != stage or r["status"] != TrialStatus.COMPLETED or not r["checkpoint"]:
            continue
        flat = flatten(r["config"])
        if all(str(flat.get(k)) == v for k, v in wanted.items()):
            # an evaluation stage's checkpoint is a file (or FORMAT:FILE); a trial's, a directory
            return r["checkpoint"] if r.get("evaluated") else join_uri(r["checkpoint"], CHECKPOINT_FILE)
    return None


def resolve_refs(concrete: set[str], stage_name: str, rows: list[dict], refs: dict[str, str]) -> dict[str, str]:
    """``refs`` with every concrete reference of a stage resolved against the earlier stages' rows."""
    out = dict(refs)
    for ref in sorted(concrete):
        target = ref_target(ref, rows)
        if target is None:
            raise ConfigError(f"stage {stage_name}: {ref!r} matches no completed trial of an earlier stage")
        out[ref] = target
    return out


def substitute(value: Any, refs: Mapping[str, str], flat: Mapping[str, Any] | None = None) -> Any:
    """``value`` with stage references replaced by the checkpoint paths in ``refs``; a template
    (``{key}``) is first filled from ``flat``, the trial's own flat config."""
    if is_ref(value):
        return refs[expand_ref(value, flat or {}) if is_template(value) else value]
    if isinstance(value, dict):
        return {k: substitute(v, refs, flat) for k, v in value.items()}
    return value

"""Everything checked before Ray starts: the study file and the command line, data roots,
checkpoints named by path, the output directory, the MLflow store, the storage path, the
cluster to join and what it can grow to, and (with ``--resume``) that the launch is the same.
Bad input fails here in one line, before anything is written; ``prepare`` returns what the
sweep then runs (a ``Launch``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError

from . import cluster
from .cluster import check_tracking_uri, default_tracking_uri, normalize_uri
from .record import launch_file_in
from .study import DEFAULT_STUDY, Plan, certify_study, entry_base, is_ref, load_raw, parse, publish, strip_refs
from .study import plan as make_plan


@dataclass
class Launch:
    """A checked launch: what runs, where its outputs and checkpoints go, which Ray it uses."""

    args: argparse.Namespace
    plan: Plan
    output_dir: Path
    tracking_uri: str
    storage_path: str
    address: str | None  # a cluster to join, or None: a private local Ray
    shape: Any  # what the cluster can grow to (cluster.ClusterShape), when known
    fingerprint: str
    created: list[Path] = field(default_factory=list)  # removed again if the launch never starts
    optuna_storage: str = ""  # the Optuna studies' database (an SQLAlchemy URL)

    @property
    def study(self):
        return self.plan.study


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's changes to the study: resources, budgets, seed and ``--set`` keys."""
    from trainables.schema import parse_override, set_nested

    out: dict[str, Any] = {}
    for key in ("num_workers", "gpus_per_worker", "max_concurrent_trials", "num_samples", "seed", "seeds"):
        v = getattr(args, key, None)
        if v is not None:
            out[key] = v
    if args.set:
        base: dict[str, Any] = {}
        for item in args.set:
            path, value = parse_override(item)
            set_nested(base, path, value)
        out["base"] = base
    return out


def plan_fingerprint(plan: Plan) -> str:
    """What a launch ran: every stage's base, search, evaluation and certification after
    --smoke-test and the command line. ``--resume`` refuses a plan that changed (a trial's record
    would not match it, nor a certification shard its finalist)."""
    from trainables.schema import to_dict

    stages = [
        {
            "name": s.name,
            "base": s.base,
            "search": to_dict(s.search),
            "evaluation": to_dict(s.evaluation),
            "certify": to_dict(s.certify),
            **({"checkpoints": list(s.checkpoints)} if s.evaluates else {}),
        }
        for s in plan.stages
    ]
    blob = json.dumps({"seed": plan.seed, "stages": stages}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_fields(plan: Plan) -> dict[str, Any]:
    """The settings of a launch that a person changes between a launch and its resume, by name
    (``stages[NAME].data.val_size``, ``stages[NAME].certify.shard_size``, ...): ``--resume`` names
    the one that changed."""
    from trainables.schema import to_dict

    out: dict[str, Any] = {"seed": plan.seed}
    for s in plan.stages:
        at = f"stages[{s.name}]"
        out[f"{at}.data.val_size"] = (s.base.get("data") or {}).get("val_size")
        out[f"{at}.epochs"] = s.base.get("epochs")
        out[f"{at}.search.num_samples"] = s.search.num_samples
        out[f"{at}.search.seeds"] = list(s.search.seeds)
        out[f"{at}.evaluation.protocol"] = s.evaluation.protocol
        out[f"{at}.evaluation.overrides"] = s.evaluation.overrides
        out.update({f"{at}.certify.{k}": v for k, v in to_dict(s.certify).items()})
    return json.loads(json.dumps(out, default=str))


def published_targets(args: argparse.Namespace) -> dict[str, str]:
    """``--published TARGET=FORMAT:FILE`` as {target: spec}, each checked before anything runs."""
    from trainables.published import split_format

    if args.smoke_test:
        raise ConfigError("--published: not with --smoke-test (published weights are for the paper's data set)")
    out = {}
    for item in args.published:
        target, eq, spec = item.partition("=")
        if not eq or not target or not spec:
            raise ConfigError(f"--published {item!r}: expected TARGET=FORMAT:FILE (a stage, or STAGE/CASE)")
        try:
            fmt, path = split_format(spec)
        except ConfigError as e:
            raise ConfigError(f"--published {target}: {e}") from None
        if fmt is None:
            raise ConfigError(
                f"--published {target}: {spec!r}: expected FORMAT:FILE with FORMAT one of the published formats"
            )
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"--published {target}: {path}: no such file")
        out[target] = f"{fmt}:{Path(path).expanduser().resolve()}"
    return out


def with_export(raw: dict, formats: list[str]) -> dict:
    """The study mapping with ``formats`` added to every stage's ``certify.export``."""
    import copy

    raw = copy.deepcopy(raw)
    for stage in raw.get("stages") or [raw]:
        if isinstance(stage, dict):
            cert = dict(stage.get("certify") or {})
            cert["export"] = list(dict.fromkeys([*(cert.get("export") or []), *formats]))
            stage["certify"] = cert
    return raw


def check_plan(args: argparse.Namespace) -> Plan:
    """The study file and the command line as a plan, with the data roots and checkpoints it
    names checked: what a real run and ``--dry-run`` both check first."""
    if getattr(args, "certify", None):
        raw, source = certify_study(args.certify, model=args.model, dataset=args.dataset, protocol=args.protocol)
    else:
        for flag in ("model", "dataset", "protocol"):
            if getattr(args, flag, None):
                raise ConfigError(f"--{flag}: only with --certify FILE")
        raw, source = load_raw(name=args.study or (None if args.config else DEFAULT_STUDY), path=args.config)
    if getattr(args, "published", None):
        raw = publish(raw, published_targets(args), source)
    if getattr(args, "export", None):  # --export: every stage's certify.export
        raw = with_export(raw, args.export)
    plan = make_plan(parse(raw, source), source, smoke=args.smoke_test, overrides=overrides(args))
    if not args.skip_data_check:
        check_data(plan)
    check_checkpoints(plan)
    return plan


def cluster_shape(args: argparse.Namespace):
    """What the cluster can grow to, when a cluster config is named (or left by ``ray up``)."""
    return cluster.find_cluster_config(args.cluster_config) if args.cluster_config else None


def prepare(args: argparse.Namespace) -> Launch:
    """Every check that needs no Ray, in the order a person would fix them; nothing is written
    on bad input."""
    from trainables.cli import writable_dir

    plan = check_plan(args)
    study = plan.study
    given_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")  # the cluster files set it on the head
    tracking_uri = normalize_uri(given_uri) if given_uri else None
    if not args.tracking_timeout >= 0:
        raise ConfigError(f"--tracking-timeout: expected a number of seconds >= 0, got {args.tracking_timeout:g}")
    if tracking_uri and not tracking_uri.startswith("sqlite:"):
        check_tracking_uri(tracking_uri, wait_s=args.tracking_timeout)
    if not args.resource_timeout > 0:
        raise ConfigError(f"--resource-timeout: expected a number of seconds > 0, got {args.resource_timeout:g}")
    address = cluster.ray_address(args.address)
    if address:
        cluster.check_address_reachable(address)
    shape = cluster.find_cluster_config(args.cluster_config) if (address or args.cluster_config) else None
    if shape is not None:  # a trial that can never fit is refused before anything runs
        cluster.concurrency(shape, cluster.plan_need(plan.resources), None, [])
    output_dir = pick_output_dir(args, study.name + ("-smoke" if args.smoke_test else ""), study.name)
    fingerprint = plan_fingerprint(plan)
    storage_path = _storage_path(args, output_dir, plan, study.name)
    multi, why = cluster.is_multi_node(shape, [])
    cluster.check_storage(
        storage_path, multi_node=multi, declared_shared=args.shared_storage, where=why, source=storage_source(args)
    )
    if "://" in storage_path:  # an object store exists and takes these credentials: said now, not after training
        cluster.probe_storage(storage_path, storage_source(args))
    created = [
        d
        for d in (output_dir, None if "://" in storage_path else Path(storage_path).expanduser().resolve())
        if d is not None and not d.exists()
    ]
    optuna_url = _optuna_storage(args, output_dir)
    if getattr(args, "optuna_storage", None):  # one the user named: it opens before anything is written
        check_optuna_storage(optuna_url)
    output_dir = writable_dir(output_dir, private=True)
    tracking_uri = tracking_uri or default_tracking_uri(output_dir)
    check_tracking_uri(tracking_uri)
    if "://" not in storage_path:
        storage_path = str(writable_dir(storage_path, "--storage-path"))
    return Launch(args, plan, output_dir, tracking_uri, storage_path, address, shape, fingerprint, created, optuna_url)


OPTUNA_DB = "optuna.db"


def _optuna_storage(args: argparse.Namespace, output_dir: Path) -> str:
    """The Optuna studies' database: --optuna-storage, or on --resume the launch's own (another
    one is refused: the search would not continue), or an SQLite file in the output directory."""
    given = getattr(args, "optuna_storage", None)
    if given and given.startswith("sqlite:///") and not given.startswith("sqlite:////"):
        given = f"sqlite:///{Path(given[len('sqlite:///') :]).expanduser().resolve()}"
    if args.resume:
        try:
            stored = json.loads(launch_file_in(output_dir).read_text()).get("optuna_storage")
        except (OSError, ValueError, AttributeError):
            stored = None
        if given and stored and given != stored:
            raise ConfigError(
                f"--resume: --optuna-storage {given} is not the database the launch in {output_dir} searched in "
                f"({stored}); leave it out or give that URL"
            )
        given = given or stored
    return given or f"sqlite:///{(output_dir / OPTUNA_DB).resolve()}"


def check_optuna_storage(url: str) -> None:
    """The database opens and is one (Optuna creates its tables, or finds them): one line if not."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        optuna.storages.RDBStorage(url).get_all_studies()
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's and Optuna's many errors are one line here
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--optuna-storage {url}: not a database Optuna can open ({first})") from None


def storage_source(args: argparse.Namespace) -> str:
    """Where the storage path was set, for its errors."""
    if args.storage_path:
        return "--storage-path"
    if os.environ.get(cluster.STORAGE_ENV):
        return f"{cluster.STORAGE_ENV} (set in the cluster file's head environment, or by you)"
    return "the default storage path"


def _storage_path(args: argparse.Namespace, output_dir: Path, plan: Plan, study: str) -> str:
    """Where checkpoints go: --storage-path, else $SPROUT_STORAGE_PATH (the cluster files set it
    on the head), or on --resume the launch's own, or OUTPUT/ray."""
    given = args.storage_path or os.environ.get(cluster.STORAGE_ENV) or None
    path = given and (given if "://" in given else str(Path(given).expanduser().resolve()))
    if args.resume:
        if not launch_file_in(output_dir).exists():
            raise ConfigError(f"--resume: nothing to resume in {output_dir} (no earlier launch of {study} there)")
        path = resumed_launch(launch_file_in(output_dir), plan, path) or path
    return path or str(output_dir / "ray")


def _creatable(path: Path) -> bool:
    """A directory that exists or that this process can create (its nearest existing parent is writable)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def check_data(plan) -> None:
    """A missing data root fails here, before Ray starts."""
    from trainables.config import resolve
    from trainables.data import data_root, get_dataset
    from trainables.errors import DataError

    seen = set()
    for stage in plan.stages:
        cfg = resolve(strip_refs(stage.base))
        key = (cfg.dataset, cfg.data.root)
        if key in seen or cfg.dataset == "digits":
            continue
        seen.add(key)
        root = data_root(cfg.data.root)  # this node's; a worker resolves its own the same way
        if cfg.dataset == "imagenet" or not cfg.data.download:
            try:
                get_dataset(cfg.dataset, root=cfg.data.root, download=False, image_size=cfg.data.image_size)
            except DataError as e:
                raise DataError(f"stage {stage.name}: {e}") from None
        elif not _creatable(root):
            raise DataError(f"stage {stage.name}: data.root {root}: cannot be created (no writable parent)")


def check_checkpoints(plan) -> None:
    """Init checkpoints and transfer sources named by path load now (weights_only, matching
    architecture), not hours later on a worker."""
    from trainables.config import resolve
    from trainables.loading import build_model, load_model_from_checkpoint

    for stage in plan.stages:
        ck = stage.base.get("init_checkpoint")
        if isinstance(ck, str) and not is_ref(ck) and ck != "random":
            build_model(resolve(stage.base))
        src = stage.evaluation.transfer_source
        if src and not is_ref(src):
            load_model_from_checkpoint(src)
        for i, entry in enumerate(stage.checkpoints or ()):  # an evaluation stage's: built now, once
            if not is_ref(entry["checkpoint"]):
                _check_evaluated(stage, i, entry)


def _check_evaluated(stage, i: int, entry: dict) -> None:
    """An evaluation stage's checkpoint loads (weights_only) and, when published, fits the model
    it names (keys and shapes; no data needed); the error names the stage and the entry."""
    from trainables.errors import CheckpointError
    from trainables.loading import evaluation_config
    from trainables.published import load_published, split_format
    from trainables.schema import to_dict

    try:  # one of ours carries its own config; published weights must fit the model named for them
        cfg = evaluation_config(entry["checkpoint"], entry_base(stage, entry))
        fmt, path = split_format(entry["checkpoint"])
        if fmt is not None:
            load_published(path, fmt, cfg.model, to_dict(cfg.model_args))
    except (CheckpointError, ConfigError) as e:
        raise type(e)(f"stage {stage.name}: checkpoints[{i}] ({entry['name']}): {e}") from None


def _check_same_study(runs_file: Path, study: str) -> None:
    try:
        earlier = json.loads(runs_file.read_text()).get("study")
    except (OSError, ValueError, AttributeError):
        return  # nothing to resume is said by the caller; an unreadable file by the tracker
    if earlier and earlier != study:
        raise ConfigError(
            f"--resume: {runs_file.parent} holds a launch of study {earlier!r}, not {study!r}; "
            "resume it with its own study file or choose another --output-dir"
        )


def resumed_launch(runs_file: Path, plan: Plan, storage_path: str | None) -> str | None:
    """--resume runs the study its launch ran: the same stages, budgets, search, validation
    split, certification and seed after --smoke-test and the command line (trials are matched
    to their records by config, certification shards to their finalists), with its checkpoints
    where the launch put them. Returns the launch's storage path (used when --storage-path is not
    given again)."""
    try:
        state = json.loads(runs_file.read_text())
        earlier, stored = state.get("plan"), state.get("storage_path")
    except (OSError, ValueError, AttributeError):
        return None
    fingerprint = plan_fingerprint(plan)
    if earlier and earlier != fingerprint:
        then, now = state.get("plan_fields") or {}, plan_fields(plan)
        changed = next((k for k in now if k in then and then[k] != now[k]), None)
        what = (
            f"{changed} was {then[changed]!r} in the launch in {runs_file.parent}, expected the same, got "
            f"{now[changed]!r}"
            if changed
            else f"the study, --smoke-test or the command-line values differ from the launch in {runs_file.parent} "
            f"(plan {fingerprint}, launched as {earlier})"
        )
        raise ConfigError(
            f"--resume: {what}; resume with the same file and options, or start a new launch in another --output-dir"
        )
    if storage_path and stored and storage_path != stored:
        raise ConfigError(
            f"--resume: --storage-path {storage_path} is not where the launch in {runs_file.parent} keeps "
            f"its checkpoints ({stored}); leave it out or give that path"
        )
    return stored


def pick_output_dir(args, name: str, study: str) -> Path:
    """An explicit --output-dir holding an earlier launch needs --resume; the default one
    moves on to NAME-2, NAME-3, ... so that re-running the main job never mixes two launches.
    ``--resume`` continues only a launch of the same study."""
    if args.output_dir:
        out = Path(args.output_dir).expanduser().resolve()
        if launch_file_in(out).exists() and not args.resume:
            raise ConfigError(
                f"--output-dir {out}: holds an earlier launch of this study; "
                f"pass --resume to continue it or choose another directory"
            )
    else:
        out = Path("runs", name).resolve()
    if args.resume:
        _check_same_study(launch_file_in(out), study)
        return out
    if args.output_dir:
        return out
    i = 1
    while launch_file_in(out).exists():
        i += 1
        out = Path("runs", f"{name}-{i}").resolve()
    return out

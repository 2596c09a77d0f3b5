"""Checks that run before Ray starts: data roots, checkpoints named by path, the output
directory. Bad input fails here in one line, before anything is written."""
from __future__ import annotations

from pathlib import Path

from .stages import is_ref, strip_refs


def check_data(plan) -> None:
    """A missing data root fails here, before Ray starts."""
    from trainables.data import get_dataset
    from trainables.errors import DataError
    from trainables.config import resolve

    seen = set()
    for stage in plan.stages:
        cfg = resolve(strip_refs(stage.base))
        key = (cfg.dataset, cfg.data.root)
        if key in seen or cfg.dataset == "digits":
            continue
        seen.add(key)
        root = Path(cfg.data.root or "./data").expanduser().resolve()
        if cfg.dataset == "imagenet" or not cfg.data.download:
            try:
                get_dataset(cfg.dataset, root=cfg.data.root, download=False, image_size=cfg.data.image_size)
            except DataError as e:
                raise DataError(f"stage {stage.name}: {e}") from None
        elif not root.parent.exists():
            raise DataError(f"stage {stage.name}: data.root {root}: its parent directory does not exist")


def check_checkpoints(plan) -> None:
    """Init checkpoints and transfer sources named by path load now (weights_only, matching
    architecture), not hours later on a worker."""
    from trainables.evaluate import load_model_from_checkpoint
    from trainables.loop import build_model
    from trainables.config import resolve

    for stage in plan.stages:
        ck = stage.base.get("init_checkpoint")
        if isinstance(ck, str) and not is_ref(ck) and ck != "random":
            build_model(resolve(stage.base))
        src = stage.evaluation.transfer_source
        if src and not is_ref(src):
            load_model_from_checkpoint(src)


def _check_same_study(runs_file: Path, study: str) -> None:
    import json

    from trainables.errors import ConfigError

    try:
        earlier = json.loads(runs_file.read_text()).get("study")
    except (OSError, ValueError, AttributeError):
        return  # nothing to resume is said by the caller; an unreadable file by the tracker
    if earlier and earlier != study:
        raise ConfigError(f"--resume: {runs_file.parent} holds a launch of study {earlier!r}, not {study!r}; "
                          "resume it with its own study file or choose another --output-dir")


def resumed_launch(runs_file: Path, fingerprint: str, storage_path: str | None) -> str | None:
    """--resume runs the study its launch ran: the same stages, budgets, search and seed after
    --smoke-test and the command line (trials are matched to their records by config), with
    its checkpoints where the launch put them. Returns the launch's storage path (used when
    --storage-path is not given again)."""
    import json

    from trainables.errors import ConfigError

    try:
        state = json.loads(runs_file.read_text())
        earlier, stored = state.get("plan"), state.get("storage_path")
    except (OSError, ValueError, AttributeError):
        return None
    if earlier and earlier != fingerprint:
        raise ConfigError(f"--resume: the study, --smoke-test or the command-line values differ from the launch in "
                          f"{runs_file.parent} (plan {fingerprint}, launched as {earlier}); resume with the same "
                          "file and options, or start a new launch in another --output-dir")
    if storage_path and stored and storage_path != stored:
        raise ConfigError(f"--resume: --storage-path {storage_path} is not where the launch in {runs_file.parent} keeps "
                          f"its checkpoints ({stored}); leave it out or give that path")
    return stored


def pick_output_dir(args, name: str, study: str) -> Path:
    """An explicit --output-dir holding an earlier launch needs --resume; the default one
    moves on to NAME-2, NAME-3, ... so that re-running the main job never mixes two launches.
    ``--resume`` continues only a launch of the same study."""
    from trainables.errors import ConfigError

    from .tracking import RUNS_FILE

    if args.output_dir:
        out = Path(args.output_dir).expanduser().resolve()
        if (out / RUNS_FILE).exists() and not args.resume:
            raise ConfigError(f"--output-dir {out}: holds an earlier launch of this study; "
                              f"pass --resume to continue it or choose another directory")
    else:
        out = Path("runs", name).resolve()
    if args.resume:
        _check_same_study(out / RUNS_FILE, study)
        return out
    if args.output_dir:
        return out
    i = 1
    while (out / RUNS_FILE).exists():
        i += 1
        out = Path("runs", f"{name}-{i}").resolve()
    return out

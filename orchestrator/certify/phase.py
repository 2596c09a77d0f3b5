"""Certification: the phase after a stage's trials, in which its finalists are evaluated with the
stage's full protocol on the test split.

The trials' worker groups are gone by then (``TorchTrainer.fit`` released them). Each
finalist's test images are cut into shards (``certify.shard_size``); every shard of every
finalist is one Ray task with a trial worker's resources (a GPU on a GPU cluster), all submitted
at once, so that every GPU of the cluster, and whatever the autoscaler adds for the queued
tasks, works on certification together. A shard writes its per-image results to the study's
storage when it finishes (``orchestrator.certify.shards``); a finalist's metrics, its per-image
worst case and its masking checks are computed from the union of its shards, which equals an
unsharded evaluation of the same images. A sweep stopped during certification and resumed runs
only the shards that have no result yet. The console says how far it is at least every
``HEARTBEAT_S`` seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainables.files import join_uri

from ..study import TEST, under
from .shards import ShardJob, count_images, cuts, read_bytes, read_shard, run_shard, write_bytes

HEARTBEAT_S = 30.0  # the longest the console stays silent while shards run
RESULT_FILE = "certification.json"
ADVERSARIAL_FILE = "autoattack_adversarial.pt"
AA_LOG_FILE = "autoattack.log"


@dataclass
class Finalist:
    """One finalist's certification: its shards and, once they are all done, its result."""

    stage: str
    trial_id: str
    config: dict  # its resolved training config
    checkpoint: str  # its checkpoint directory (an evaluated checkpoint: its file or format:file)
    directory: str  # its certification directory in the storage
    evaluated: bool = False  # an evaluation stage's checkpoint: its model is built from ``config``
    jobs: list[ShardJob] = field(default_factory=list)
    done: dict[int, Any] = field(default_factory=dict)  # shard start -> Shard
    result: dict[str, Any] | None = None  # its test-split numbers, under test/ names
    files: list[str] = field(default_factory=list)  # what it wrote beside its shards
    error: str | None = None
    worst_case: str | None = None  # per image: "1" correct clean and under every attack

    @property
    def images(self) -> int:
        return sum(j.stop - j.start for j in self.jobs)


@dataclass(frozen=True)
class Settings:
    """What every shard of a stage shares."""

    protocol: str
    overrides: dict
    seed: int
    shard_size: int
    transfer_source: str | None
    keep_adversarial: bool
    cpus: float  # a trial worker's resources
    gpus: float
    export: tuple[str, ...] = ()  # claims to write (certify.export): "robustbench"
    study: str = ""


def certification_dir(storage_path: str, study: str, stage: str, trial_id: str) -> str:
    """A finalist's certification directory: under the study's storage (an object store's URI
    keeps its query, its endpoint for example, at the end)."""
    return join_uri(storage_path, f"{study}-certify", stage, trial_id)


def _images(settings: Settings, config: dict) -> int:
    """The finalist's protocol images, counted here when the data is here, else on a worker."""
    from trainables.errors import DataError

    try:
        return count_images(config, settings.protocol, settings.overrides)
    except DataError:  # the data lives on the workers only (--skip-data-check)
        import ray

        task = ray.remote(num_cpus=settings.cpus, num_gpus=settings.gpus)(count_images)
        return ray.get(task.remote(config, settings.protocol, settings.overrides))


def plan(finalists: list[Finalist], settings: Settings) -> None:
    """Cut each finalist's images into shards and pick up those an earlier launch finished."""
    for f in finalists:
        n = _images(settings, f.config)
        f.jobs = [
            ShardJob(
                f.stage,
                f.trial_id,
                a,
                b,
                f.checkpoint,
                f.directory,
                settings.protocol,
                dict(settings.overrides),
                settings.seed,
                settings.transfer_source,
                settings.keep_adversarial,
                f.config if f.evaluated else None,
            )
            for a, b in cuts(n, settings.shard_size)
        ]
        for job in f.jobs:
            shard = read_shard(job)
            if shard is not None:
                f.done[job.start] = shard


class Progress:
    """Console lines: when shards finish, and at least every HEARTBEAT_S seconds."""

    def __init__(self, stage: str, total_shards: int, total_images: int, say: Callable[[str], None]):
        self.stage, self.total_shards, self.total_images, self.say = stage, total_shards, total_images, say
        self.t0 = time.monotonic()
        self.last = self.t0
        self.shards = self.images = 0

    def line(self, what: str = "") -> None:
        elapsed = time.monotonic() - self.t0
        rate = self.images / elapsed if elapsed > 0 and self.images else 0.0
        left = (self.total_images - self.images) / rate if rate else float("nan")
        eta = f"~{left:.0f} s left" if rate else "time left unknown yet"
        self.say(
            f"[{self.stage}] certify: {self.shards}/{self.total_shards} shards, {self.images}/{self.total_images} "
            f"test images, {rate:.1f} images/s, {eta}{what}"
        )
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= HEARTBEAT_S


def _progress(finalists: list[Finalist], todo: int, say: Callable[[str], None]) -> Progress:
    """The phase's progress, counting what earlier launches finished (and saying so)."""
    total = sum(len(f.jobs) for f in finalists)
    progress = Progress(finalists[0].stage if finalists else "certify", total, sum(f.images for f in finalists), say)
    progress.shards = total - todo
    progress.images = sum(j.stop - j.start for f in finalists for j in f.jobs if j.start in f.done)
    if progress.shards:
        say(f"[{progress.stage}] certify: {progress.shards} of {total} shards finished in an earlier launch")
    return progress


def run(
    finalists: list[Finalist],
    settings: Settings,
    *,
    console=None,
    say: Callable[[str], None] = print,
    on_finalist: Callable[[Finalist], None] | None = None,
) -> float:
    """Certify ``finalists``: every missing shard as a Ray task, all at once; each finalist's
    result as soon as its last shard is in (``on_finalist``). Returns the seconds the shards of
    this launch ran (their sum)."""
    import ray

    from ..record import drain

    todo = [(f, j) for f in finalists for j in f.jobs if j.start not in f.done]
    progress = _progress(finalists, len(todo), say)
    task = ray.remote(num_cpus=settings.cpus, num_gpus=settings.gpus, max_retries=1)(run_shard)
    pending = {
        task.remote(j, threads=max(1, int(settings.cpus)), gpus=settings.gpus, console=console): (f, j) for f, j in todo
    }
    seconds = 0.0
    if pending:
        progress.line(f" ({len(pending)} shard task(s) submitted)")
    for f in finalists:
        if len(f.done) == len(f.jobs):
            _finish(f, settings, on_finalist)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
        for line in drain(console):
            say(line)
        for ref in ready:
            f, job = pending.pop(ref)
            try:
                info = ray.get(ref)
                shard = read_shard(job)
                if shard is None:
                    raise RuntimeError(f"shard {job.name} reported done but its result is not readable at {job.path}")
            except Exception as e:  # noqa: BLE001 - one finalist's certification fails, the others go on
                from ..record import error_cause

                f.error = f.error or error_cause(e)
                say(f"[{f.stage}] certify {f.trial_id}: shard {job.name} failed: {f.error}")
                continue
            f.done[job.start] = shard
            seconds += info["seconds"]
            progress.shards += 1
            progress.images += job.stop - job.start
            progress.line(
                f" (trial {f.trial_id} images {job.start}-{job.stop - 1}: {info['seconds']:.0f} s on {info['device']})"
            )
            if len(f.done) == len(f.jobs):
                _finish(f, settings, on_finalist)
        if pending and progress.due():
            progress.line()
    return seconds


def _finish(f: Finalist, settings: Settings, on_finalist) -> None:
    """A finalist's metrics from the union of its shards; its files beside them (and, with
    ``save_adversarial``, AutoAttack's inputs and log beside its checkpoint)."""
    from trainables.evaluation import finish, get_protocol, protocol_eps, union, worst_case_bits, worst_case_keys

    protocol = get_protocol(settings.protocol, settings.overrides)
    whole = union(list(f.done.values()))
    dataset = f.config["dataset"]
    eps = protocol_eps(protocol, dataset, f.config.get("eps"))
    result = finish(whole, protocol, eps=eps, dataset=dataset)
    # per image, for paired tests between finalists on the same images (not a metric)
    f.worst_case = worst_case_bits(whole.per_image, [k[:-4] for k in worst_case_keys(protocol)])
    result["worst_case_per_image"] = f.worst_case
    result["shards"] = len(f.jobs)
    result["shard_placement"] = whole.notes.get("placement", [])
    record = {"stage": f.stage, "trial_id": f.trial_id, "checkpoint": f.checkpoint, "split": "test", **result}
    write_bytes(join_uri(f.directory, RESULT_FILE), json.dumps(record, indent=2, default=str).encode())
    f.files = [join_uri(f.directory, RESULT_FILE)]
    if whole.notes.get("autoattack_log"):
        write_bytes(join_uri(f.directory, AA_LOG_FILE), "\n".join(whole.notes["autoattack_log"]).encode())
        f.files.append(join_uri(f.directory, AA_LOG_FILE))
    if settings.keep_adversarial and whole.adversarial:
        _save_adversarial(f, whole)
    if "robustbench" in settings.export:
        _export_robustbench(f, settings, result)
    f.result = under(TEST, {k: v for k, v in result.items() if k not in ("attack_seconds", "worst_case_per_image")})
    f.result[TEST + "masking_details"] = [
        f"{n}: {result['masking_checks'][n]['detail']}"
        for n in result.get("masking_flags", [])
        if n in result.get("masking_checks", {})
    ]
    for name, seconds in (result.get("attack_seconds") or {}).items():
        f.result[f"{TEST}seconds/{name.replace('@', '_at_')}"] = seconds
    if on_finalist is not None:
        on_finalist(f)


def _export_robustbench(f: Finalist, settings: Settings, result: dict) -> None:
    """RobustBench's model_info JSON, in the certification directory and beside the checkpoint
    (with the AutoAttack log, and the adversarial examples when they are kept)."""
    from .export import ROBUSTBENCH_FILE, robustbench_info

    data = json.dumps(robustbench_info(f.stage, f.trial_id, f.config, result, settings.study), indent=2).encode()
    places = [f.directory] + ([] if f.evaluated else [f.checkpoint])
    for place in places:
        write_bytes(join_uri(place, ROBUSTBENCH_FILE), data)
    if not f.evaluated and read_bytes(join_uri(f.directory, AA_LOG_FILE)) is not None:
        write_bytes(join_uri(f.checkpoint, AA_LOG_FILE), read_bytes(join_uri(f.directory, AA_LOG_FILE)))
    f.files.append(join_uri(f.directory, ROBUSTBENCH_FILE))


def _save_adversarial(f: Finalist, whole) -> None:
    """AutoAttack's adversarial inputs (with their labels and test-set indices) and its log,
    beside the finalist's checkpoint (an evaluated one's: in its certification directory): what a
    RobustBench-style claim asks for."""
    import io

    import torch

    beside = f.directory if f.evaluated else f.checkpoint  # an evaluated checkpoint is a file, not ours
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in whole.adversarial.items()}, buf)
    write_bytes(join_uri(beside, ADVERSARIAL_FILE), buf.getvalue())
    log = read_bytes(join_uri(f.directory, AA_LOG_FILE))
    if log is not None and beside != f.directory:
        write_bytes(join_uri(beside, AA_LOG_FILE), log)
    f.files += [join_uri(beside, ADVERSARIAL_FILE)]

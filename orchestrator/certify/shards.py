"""One shard of a finalist's certification: a Ray task that evaluates a run of consecutive test
images of the protocol with the finalist's weights and writes what it measured, per image, to
the study's storage before it returns. A shard that finished is never run again: ``--resume``
reads its file. Files are plain JSON (and, with ``save_adversarial``, tensors loaded with
``weights_only``): nothing a shard wrote is unpickled.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from trainables.checkpoint import CHECKPOINT_FILE
from trainables.files import join_uri

SHARD_FORMAT = "sprout-orchestrator/certify-shard/1"


@dataclass(frozen=True)
class ShardJob:
    """What one shard task evaluates and where it writes."""

    stage: str
    trial_id: str
    start: int  # protocol image indices [start, stop)
    stop: int
    checkpoint: str  # the finalist's checkpoint directory (a path or a URI of the storage)
    directory: str  # the finalist's certification directory in the storage
    protocol: str
    overrides: dict
    seed: int
    transfer_source: str | None = None  # a checkpoint file
    keep_adversarial: bool = False
    # an evaluated (not trained) checkpoint: its resolved config, whose init_checkpoint names the
    # weights (one of our files or published ones); ``checkpoint`` is then that file
    config: dict | None = None

    @property
    def name(self) -> str:
        return f"shard_{self.start:07d}-{self.stop:07d}"

    @property
    def path(self) -> str:
        return join_uri(self.directory, f"{self.name}.json")

    @property
    def adversarial_path(self) -> str:
        return join_uri(self.directory, f"{self.name}.adversarial.pt")


def cuts(n: int, shard_size: int) -> list[tuple[int, int]]:
    """``n`` images cut into runs of ``shard_size`` (the last one shorter)."""
    return [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]


# ----------------------------------------------------------------------------- storage
def filesystem(uri: str):
    """(pyarrow file system, path) of a local path or a storage URI (s3://, gs://, ...)."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file: to a temporary name and moved into place where the file system can."""
    import pyarrow.fs

    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        tmp = f"{path}.tmp-{time.time_ns()}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
        return
    with fs.open_output_stream(path) as f:  # an object store writes an object whole
        f.write(data)


def read_bytes(uri: str) -> bytes | None:
    """A file's bytes, or None when it does not exist."""
    import pyarrow.fs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def read_shard(job: ShardJob):
    """The shard's result if a task wrote it (and it is one of ours, for this job), else None."""
    from trainables.evaluation import Shard

    raw = read_bytes(job.path)
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        if d.get("format") != SHARD_FORMAT or d.get("job") != asdict(job):
            return None
        shard = Shard.from_json(d["shard"])
    except (ValueError, KeyError, TypeError):
        return None  # a truncated or foreign file: the shard runs again
    if job.keep_adversarial:
        adv = read_bytes(job.adversarial_path)
        if adv is None:
            return None
        import torch

        shard.adversarial = torch.load(io.BytesIO(adv), map_location="cpu", weights_only=True)
    return shard


# ----------------------------------------------------------------------------- the task
def _device(gpus: float):
    import torch

    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def _load(job: ShardJob):
    """Model, config and data of a finalist: its training run's checkpoint directory (local or in
    the storage), or the weights an evaluation stage names, built from its config."""
    import ray.train

    from trainables.config import resolve
    from trainables.data import get_dataset
    from trainables.loading import build_model, load_model_from_checkpoint

    if job.config is not None:
        cfg = resolve(job.config)
        bundle = get_dataset(
            cfg.dataset, root=cfg.data.root, download=cfg.data.download, image_size=cfg.data.image_size
        )
        return build_model(cfg, bundle), cfg, bundle
    with ray.train.Checkpoint(job.checkpoint).as_directory() as d:
        return load_model_from_checkpoint(f"{d}/{CHECKPOINT_FILE}")


def run_shard(job: ShardJob, *, threads: int, gpus: float, console=None) -> dict[str, Any]:
    """Evaluate one shard and write its result; returns what the progress line needs."""
    import ray
    import torch

    from trainables.evaluation import evaluate_shard, get_protocol, protocol_eps
    from trainables.loading import load_model_from_checkpoint

    from ..record import console_say

    torch.set_num_threads(max(1, threads))
    t0, began = time.perf_counter(), time.time()
    model, cfg, bundle = _load(job)
    device = _device(gpus)
    model.to(device).eval()
    source = load_model_from_checkpoint(job.transfer_source)[0] if job.transfer_source else None
    protocol = get_protocol(job.protocol, job.overrides)
    shard = evaluate_shard(
        model,
        bundle,
        protocol,
        eps=protocol_eps(protocol, bundle.name, cfg.eps),
        start=job.start,
        stop=job.stop,
        seed=job.seed,
        device=device,
        transfer_source=source,
        keep_adversarial=job.keep_adversarial,
        log=console_say(console, f"[{job.stage}] certify {job.trial_id}", f"images {job.start}-{job.stop - 1}"),
    )
    # where and when it ran: a finalist's shards spread over the cluster's nodes at once
    shard.notes["placement"] = [
        {
            "images": [job.start, job.stop],
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": device.type,
            "began": began,
            "ended": time.time(),
        }
    ]
    if job.keep_adversarial:
        buf = io.BytesIO()
        torch.save(shard.adversarial, buf)
        write_bytes(job.adversarial_path, buf.getvalue())
    write_bytes(job.path, json.dumps({"format": SHARD_FORMAT, "job": asdict(job), "shard": shard.to_json()}).encode())
    return {"images": shard.n, "seconds": time.perf_counter() - t0, "device": device.type}


def count_images(config: dict, protocol: str, overrides: dict) -> int:
    """How many test images the protocol evaluates for a trial of this (resolved) training
    config: the protocol's ``n``, at most the test split."""
    from trainables.data import get_dataset
    from trainables.evaluation import evaluation_size, get_protocol

    data = config.get("data") or {}
    bundle = get_dataset(config["dataset"], root=data.get("root"), download=False, image_size=data.get("image_size"))
    return evaluation_size(bundle, get_protocol(protocol, overrides))

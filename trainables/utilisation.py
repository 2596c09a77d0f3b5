"""What a training worker's device did during an epoch: its process's CPU and memory, and its
GPU's utilisation and memory through NVML where there is one, sampled by a background thread;
and how long the loop waited for the data loader. Reported per worker as ``system/worker_R/...``
(MLflow's system metrics), so an idle GPU waiting on its loader, or three idle GPUs of a
four-worker trial, show in the trial's run."""

from __future__ import annotations

import threading
from typing import Any

import torch

INTERVAL_S = 0.5


class UsageSampler:
    """Samples while the ``with`` block runs; ``means()`` after it."""

    def __init__(self, device: torch.device, interval_s: float = INTERVAL_S):
        import psutil

        self.device, self.interval = device, interval_s
        self.proc = psutil.Process()
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="usage-sampler")
        self._nvml = device.type == "cuda" and _nvml_ok(device)

    def _sample(self) -> dict[str, float]:
        s = {"cpu_percent": self.proc.cpu_percent(None), "ram_mb": self.proc.memory_info().rss / 2**20}
        if self.device.type == "cuda":
            s["gpu_mem_mb"] = torch.cuda.memory_allocated(self.device) / 2**20
            if self._nvml:
                s["gpu_util"] = float(torch.cuda.utilization(self.device))
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self._sample())

    def __enter__(self) -> UsageSampler:
        self.proc.cpu_percent(None)  # the first call only starts psutil's interval
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if not self.samples:  # an epoch shorter than one interval: one sample at its end
            self.samples.append(self._sample())

    def means(self) -> dict[str, float]:
        keys = self.samples[0].keys() if self.samples else ()
        return {k: sum(s[k] for s in self.samples) / len(self.samples) for k in keys}


def _nvml_ok(device: torch.device) -> bool:
    try:
        torch.cuda.utilization(device)
        return True
    except Exception:  # noqa: BLE001 - no pynvml, or NVML refuses: no GPU utilisation then
        return False


def per_worker(usage: dict[str, float], rank: int, world: int) -> dict[str, Any]:
    """Every worker's figures under ``system/worker_R/`` (gathered on every rank when there are
    several; rank 0 reports them)."""
    import torch.distributed as dist

    gathered: list[Any] = [usage]
    if world > 1 and dist.is_available() and dist.is_initialized():
        gathered = [None] * world
        dist.all_gather_object(gathered, usage)
    return {f"system/worker_{r}/{k}": v for r, u in enumerate(gathered) for k, v in (u or {}).items()}

"""Ray Train's Torch backend, set up from a controller that does not import torch.

Ray Train V2 starts a controller process per trial; it unpickles the trainer's backend config
and runs the backend's ``on_start`` and ``on_shutdown`` there. Ray's ``TorchConfig`` lives in a
module that imports torch at its top, so every trial's controller paid torch's import (about
1.6 CPU-seconds here) to run three remote calls on the workers. This config and backend do what
Ray's ``_TorchBackend`` does (the master address of worker 0, the distributed environment
variables, one ``init_process_group`` per worker, the shutdown), with every torch call in
functions that run on the workers, which import torch anyway. They call Ray's own worker-side
functions in ``ray.train.torch.config`` (private; ``tests/test_startup.py`` fails if Ray renames
or reshapes them).

One thing differs from Ray's: the process-group backend follows what the workers have (NCCL
when every worker sees CUDA, gloo otherwise), so a node that advertises a GPU torch cannot use
(a simulated cluster, a broken driver) trains on CPU, saying so, instead of failing to create
an NCCL group.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig

from .trace import stamp

AUTO_BACKEND = "auto"  # resolved per worker group when it starts: nccl or gloo


# ----------------------------------------------------------------------------- on the workers
def _cuda_usable() -> bool:
    import torch

    return torch.cuda.is_available()


def _address_and_port() -> tuple[str, int]:
    stamp("worker_up")  # worker 0's process is up, Ray Train's worker loaded: the process group next
    from ray.train._internal.utils import get_address_and_port

    return get_address_and_port()


def _set_master(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


def _distributed_env() -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    _set_torch_distributed_env_vars()


def _process_group(**kwargs) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(**kwargs)
    stamp("process_group")


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


class _CudaDevice:
    """The training function's context on a worker, as Ray's: its CUDA device is the default."""

    def __enter__(self):
        import torch

        if torch.cuda.is_available():
            from ray.train.torch import get_device

            device = get_device()
            if device.type == "cuda":
                torch.cuda.set_device(device)

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------- in the controller
class LazyTorchBackend(Backend):
    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group, backend_config: LazyTorchConfig) -> None:
        backend = backend_config.backend
        if backend in (None, AUTO_BACKEND):
            gpus = worker_group.get_resources_per_worker().get("GPU", 0) > 0
            backend = "nccl" if gpus and all(worker_group.execute(_cuda_usable)) else "gloo"
        addr, port = worker_group.execute_single(0, _address_and_port)
        worker_group.execute(_set_master, addr=addr, port=port)
        worker_group.execute(_distributed_env)  # LOCAL_RANK, RANK, WORLD_SIZE, ... before init_process_group
        n = len(worker_group)
        ray.get(
            [
                worker_group.execute_single_async(
                    i,
                    _process_group,
                    backend=backend,
                    world_rank=i,
                    world_size=n,
                    init_method="env://",
                    timeout_s=backend_config.timeout_s,
                )
                for i in range(n)
            ]
        )

    def on_shutdown(self, worker_group, backend_config) -> None:
        from ray.exceptions import GetTimeoutError

        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        from ray.train.constants import (  # Ray's own setting and default
            DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
        )

        timeout = float(
            os.environ.get(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)
        )
        try:
            ray.get(futures, timeout=timeout)
        except GetTimeoutError:  # as Ray's: say so; the workers are stopped next anyway
            logging.getLogger(__name__).warning(f"Torch process group shutdown timed out after {timeout} seconds")


@dataclass
class LazyTorchConfig(BackendConfig):
    """What ``TorchTrainer(torch_config=...)`` takes: Ray's TorchConfig fields (``init_method``
    is always ``env``), with the ``auto`` backend by default."""

    backend: str | None = AUTO_BACKEND
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return LazyTorchBackend

    @property
    def train_func_context(self):
        return _CudaDevice

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}

"""Data sets, registered by name. Every image is a float tensor in [0, 1]; normalization lives
in the model, so attack budgets are in pixel units.

Small data sets (``digits``, CIFAR) are held as tensors and batched by :class:`TensorLoader`,
which augments on the device the data lives on (on a GPU: the airbench approach, no CPU
loader). ImageNet goes through a torchvision ``ImageFolder`` and a ``DataLoader``.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .devices import generator, home
from .errors import DataError
from .files import index_digest
from .registry import Registry


@dataclass(frozen=True)
class DatasetEntry:
    load: Callable[..., DataBundle]  # load(root=, download=, image_size=)
    eps: float  # the data set's standard L-inf budget, pixel units
    default_model: str
    default_epochs: int | None  # overrides the method's default epochs when set
    mean: tuple[float, ...]  # for models that normalize as their first layer
    std: tuple[float, ...]
    batch_size: int = 128  # default per-worker batch size
    optim: dict = field(default_factory=dict)  # optimizer values over every method's defaults
    # C&W-L2 accuracy is reported at this L2 radius (pixel units). CIFAR: the SPROUT paper's
    # 0.05. Digits (8x8): 0.5, where the radius separates models (measured, C&W 3x100 on 50
    # images: natural 78 %, SPROUT 90 %, PGD-AT 96 %; at 0.05 every model scores 100 %).
    cw_l2_radius: float = 0.05
    # the validation split a selecting stage holds out of the training split when its study
    # names none (data.val_size): a count of images, or a fraction of the training split
    val_default: float = 5000
    num_train: int | None = None  # the training split's size where it is fixed (bad-input checks)


DATASETS: Registry[DatasetEntry] = Registry("data set")


def register_dataset(name: str, **defaults: Any):
    def deco(fn: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
        DATASETS.register(name)(DatasetEntry(load=fn, **defaults))
        return fn

    return deco


def list_datasets() -> list[str]:
    return DATASETS.names()


@dataclass
class DataBundle:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    x_train: torch.Tensor | None  # (N, C, H, W) float in [0, 1], or None for folder data
    y_train: torch.Tensor | None  # (N,) int64
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    augment: str  # "none" | "crop_flip" | "folder" (augmentation inside the Dataset)
    class_names: list[str] = field(default_factory=list)
    train_dataset: Any = None  # torch Dataset for folder data
    test_dataset: Any = None
    x_val: torch.Tensor | None = None  # the validation split (held out of the training split), if any
    y_val: torch.Tensor | None = None
    val_dataset: Any = None
    val_index: torch.Tensor | None = None  # its images' indices in the original training split

    @property
    def has_val(self) -> bool:
        return self.y_val is not None or self.val_dataset is not None

    def val_tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``limit`` validation images as tensors, chosen as ``test_tensors`` chooses (the split
        is in a seeded order, so any prefix mixes the classes)."""
        if not self.has_val:
            raise DataError(f"{self.name}: no validation split (set data.val_size)")
        return self.as_test_of_validation().test_tensors(limit)

    def as_test_of_validation(self) -> DataBundle:
        """A view whose "test" images are the validation split: what evaluation code reads."""
        from dataclasses import replace

        return replace(self, x_test=self.x_val, y_test=self.y_val, test_dataset=self.val_dataset)

    @property
    def num_train(self) -> int:
        return len(self.y_train) if self.y_train is not None else len(self.train_dataset)

    def test_tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``limit`` test images as tensors (the evaluation works on tensors)."""
        if self.x_test is not None:
            n = len(self.y_test) if limit is None else min(limit, len(self.y_test))
            return self.x_test[:n], self.y_test[:n]
        ds = self.test_dataset
        n = len(ds) if limit is None else min(limit, len(ds))
        # A fixed, evenly spread subset so that every class appears in small evaluations.
        idx = np.linspace(0, len(ds) - 1, n).round().astype(int) if n < len(ds) else range(n)
        xs, ys = zip(*(ds[int(i)] for i in idx))
        return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def get_dataset(name: str, **kwargs: Any) -> DataBundle:
    return DATASETS.get(name).load(**kwargs)


def val_count(val_size: float, num_train: int, where: str = "data.val_size") -> int:
    """Images in the validation split: ``val_size`` is a count (>= 1) or a fraction in (0, 1)."""
    n = int(round(val_size * num_train)) if 0 < val_size < 1 else int(val_size)
    if not 1 <= n < num_train:
        raise DataError(
            f"{where}: {val_size:g} gives {n} validation images; expected at least 1 and fewer than "
            f"the {num_train} training images"
        )
    return n


def stratified_split(labels: torch.Tensor, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices): ``n_val`` images held out with every class in its
    share of the training split (largest remainders), chosen by a seeded permutation; the
    validation indices come in a seeded shuffled order so any prefix mixes the classes."""
    g = torch.Generator().manual_seed(seed)
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * n_val / len(labels)
    take = exact.floor().long()
    short = n_val - int(take.sum())
    if short:
        take[torch.argsort(exact - take.double(), descending=True, stable=True)[:short]] += 1
    val, train = [], []
    for c, k in zip(classes.tolist(), take.tolist()):
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        val.append(idx[:k])
        train.append(idx[k:])
    val_idx = torch.cat(val)
    val_idx = val_idx[torch.randperm(len(val_idx), generator=g)]
    return torch.cat(train).sort().values, val_idx


def split_inputs(bundle: DataBundle) -> list[dict]:
    """What a trial trains and screens on, as MLflow dataset inputs: per split its name, size and
    the digest of its image indices in the data set's training split."""
    val = bundle.val_index.numpy() if bundle.val_index is not None else np.zeros(0, dtype=np.int64)
    if bundle.y_train is not None:
        total = len(bundle.y_train) + len(val)
    else:
        ds = bundle.train_dataset
        total = len(getattr(ds, "dataset", ds))  # a Subset's whole, else the set itself
    train = np.setdiff1d(np.arange(total), val)
    out = [{"context": "training", "name": f"{bundle.name}-train", "size": len(train), "digest": index_digest(train)}]
    if len(val):
        out.append({"context": "validation", "name": f"{bundle.name}-validation", "size": len(val),
                    "digest": index_digest(val)})  # fmt: skip
    return out


def with_validation(bundle: DataBundle, val_size: float | None, seed: int = 0) -> DataBundle:
    """``bundle`` with a class-stratified validation split of ``val_size`` held out of its
    training split (None or 0: unchanged). The same ``seed`` gives the same split, whatever the
    training seed: every trial of a search is measured on the same validation images."""
    from dataclasses import replace

    if not val_size:
        return bundle
    if bundle.y_train is not None:
        n_val = val_count(val_size, len(bundle.y_train))
        tr, va = stratified_split(bundle.y_train, n_val, seed)
        return replace(
            bundle,
            x_train=bundle.x_train[tr],
            y_train=bundle.y_train[tr],
            x_val=bundle.x_train[va],
            y_val=bundle.y_train[va],
            val_index=va,
        )
    from torch.utils.data import Subset

    labels = torch.tensor(bundle.train_dataset.targets, dtype=torch.long)
    n_val = val_count(val_size, len(labels))
    tr, va = stratified_split(labels, n_val, seed)
    # validation images get the test transform (no random crop or flip)
    val_view = copy.copy(bundle.train_dataset)
    val_view.transform = bundle.test_dataset.transform
    return replace(
        bundle,
        train_dataset=Subset(bundle.train_dataset, tr.tolist()),
        val_dataset=Subset(val_view, va.tolist()),
        val_index=va,
    )


# ----------------------------------------------------------------------------- digits
# A small CNN from random init on 1437 images: batch 32 and lr 0.1 for every method (the
# CIFAR references' SPROUT lr of 0.01 assumes a start from a naturally trained model).
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``load_digits`` reads them (pixels 0-16, labels), from the CSV file
    scikit-learn ships, without importing scikit-learn: its import (and scipy's) cost each trial
    worker and certification shard about 1.2 CPU-seconds for a 1797-row file.
    ``tests/test_data.py`` checks both give the same arrays."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():  # another layout: scikit-learn's own loader
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data, d.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int)


@register_dataset(
    "digits",
    eps=0.1,
    cw_l2_radius=0.5,
    default_model="small_cnn",
    default_epochs=15,
    mean=(0.3,),
    std=(0.4,),
    batch_size=32,
    optim={"lr": 0.1},
    val_default=0.2,
    num_train=1437,
)
def digits(root: str | None = None, download: bool = True, image_size: int | None = None) -> DataBundle:
    """scikit-learn's bundled handwritten digits: 8x8 greyscale, 1797 images, 10 classes.
    A fixed seeded split (seed 0): 1437 train, 360 test. Needs no network."""
    images, target = _digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = 360
    test, train = perm[:n_test], perm[n_test:]
    return DataBundle(
        name="digits",
        num_classes=10,
        in_channels=1,
        image_size=8,
        x_train=x[train],
        y_train=y[train],
        x_test=x[test],
        y_test=y[test],
        augment="none",
        class_names=[str(i) for i in range(10)],
    )


# ----------------------------------------------------------------------------- CIFAR
class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's python format is a pickle; only the globals that numpy arrays need are allowed,
    so a crafted file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing (expected the CIFAR python-format batch)") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is a malformed file
        raise DataError(f"{path}: not a CIFAR python-format batch ({e})") from None


def _cifar_arrays(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _load_pickle(path)
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        raise DataError(f"{path}: expected a dict with 'data' and {label_key!r}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected 'data' of shape (N, 3072), got {data.shape}")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()).float().div_(255.0)
    return x, torch.from_numpy(labels)


DATA_ROOT_ENV = "SPROUT_DATA_ROOT"  # a node's data root when a config names none (a cluster file may set it)
DEFAULT_DATA_ROOT = "~/.cache/sprout/data"
IMAGENET_ROOT_ENV = "SPROUT_IMAGENET_ROOT"  # ImageNet's mount on each node, named in the cluster files


def _on_node() -> str:
    """Which machine a missing path is missing on (a trial or shard runs on any node)."""
    import socket

    return f"on node {socket.gethostname()}"


def _root_source(root: str | None) -> str:
    """Where a data root came from, for the error that says it is missing."""
    if root:
        return "data.root"
    return f"${DATA_ROOT_ENV}" if os.environ.get(DATA_ROOT_ENV) else f"the default {DEFAULT_DATA_ROOT}"


def data_root(root: str | None) -> Path:
    """A data set's root on the node that reads it: ``data.root``, else $SPROUT_DATA_ROOT, else
    ~/.cache/sprout/data; absolute and under that node's home, whatever the process's directory."""
    return Path(root or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT).expanduser().resolve()


def _download_once(name: str, root_path: Path, base: Path, tv_cls: str) -> None:
    """Download a CIFAR set into ``root_path``, once per node: the trials and shards that start
    together on one node wait on a file lock, and those after the first find the folder."""
    import torchvision
    from filelock import FileLock

    root_path.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root_path / f".{name}.download.lock")):
        if base.is_dir():
            return
        try:
            getattr(torchvision.datasets, tv_cls)(str(root_path), train=True, download=True)
        except Exception as e:  # noqa: BLE001 - no network, disk full, ...
            raise DataError(f"{base}: missing and the download failed ({type(e).__name__}: {e})") from None


def _cifar(
    name: str,
    root: str | None,
    download: bool,
    folder: str,
    train_files: list[str],
    test_file: str,
    meta_file: str,
    label_key: str,
    names_key: str,
    num_classes: int,
    tv_cls: str,
) -> DataBundle:
    root_path = data_root(root)
    base = root_path / folder
    if not base.is_dir():
        if not download:
            raise DataError(
                f"{base}: missing {_on_node()} ({_root_source(root)}); expected the {name} python-format folder "
                "(or set download=true)"
            )
        _download_once(name, root_path, base, tv_cls)
    xs, ys = zip(*(_cifar_arrays(base / f, label_key) for f in train_files))
    x_test, y_test = _cifar_arrays(base / test_file, label_key)
    meta = _load_pickle(base / meta_file)
    class_names = list(meta.get(names_key, [])) if isinstance(meta, dict) else []
    y_train = torch.cat(ys)
    if int(y_train.max()) >= num_classes or int(y_test.max()) >= num_classes:
        raise DataError(f"{base}: labels outside 0..{num_classes - 1}")
    return DataBundle(
        name=name,
        num_classes=num_classes,
        in_channels=3,
        image_size=32,
        x_train=torch.cat(xs),
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        augment="crop_flip",
        class_names=class_names,
    )


@register_dataset(
    "cifar10",
    eps=8 / 255,
    default_model="vgg16",
    default_epochs=None,
    val_default=5000,
    num_train=50_000,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2471, 0.2435, 0.2616),
)
def cifar10(root: str | None = None, download: bool = True, image_size: int | None = None) -> DataBundle:
    return _cifar(
        "cifar10",
        root,
        download,
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        10,
        "CIFAR10",
    )


@register_dataset(
    "cifar100",
    eps=8 / 255,
    default_model="vgg16",
    default_epochs=None,
    val_default=5000,
    num_train=50_000,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)
def cifar100(root: str | None = None, download: bool = True, image_size: int | None = None) -> DataBundle:
    return _cifar(
        "cifar100",
        root,
        download,
        "cifar-100-python",
        ["train"],
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
        100,
        "CIFAR100",
    )


# ----------------------------------------------------------------------------- ImageNet
@register_dataset(
    "imagenet",
    eps=4 / 255,
    default_model="resnet152",
    default_epochs=None,
    val_default=10_000,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)
def imagenet(root: str | None = None, download: bool = True, image_size: int | None = None) -> DataBundle:
    """An ImageFolder root with ``train/`` and ``val/`` (one folder per class in each): ``data.root``,
    else $SPROUT_IMAGENET_ROOT, the mount the cluster files name on every node. ImageNet cannot
    be downloaded automatically; ``download`` is ignored. Checked on the node that reads it."""
    from torchvision import datasets, transforms

    source = "data.root"
    if root is None and os.environ.get(IMAGENET_ROOT_ENV):
        root, source = os.environ[IMAGENET_ROOT_ENV], f"${IMAGENET_ROOT_ENV}, the cluster file's mount"
    if root is None:
        raise DataError(
            f"data.root: the imagenet data set needs a root with train/ and val/ (or ${IMAGENET_ROOT_ENV}, "
            "which the cluster files set to its mount)"
        )
    base = Path(root).expanduser().resolve()
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise DataError(
                f"{base / split}: missing {_on_node()} ({source}); expected an ImageFolder directory "
                "(one folder per class)"
            )
    size = image_size or 224
    resize = int(round(size * 256 / 224))
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
        ]
    )
    test_tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor()])
    try:
        train = datasets.ImageFolder(str(base / "train"), transform=train_tf)
        val = datasets.ImageFolder(str(base / "val"), transform=test_tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"{base}: not a valid ImageFolder root ({e})") from None
    if train.classes != val.classes:
        raise DataError(f"{base}: train/ and val/ hold different class folders")
    return DataBundle(
        name="imagenet",
        num_classes=len(train.classes),
        in_channels=3,
        image_size=size,
        x_train=None,
        y_train=None,
        x_test=None,
        y_test=None,
        augment="folder",
        class_names=list(train.classes),
        train_dataset=train,
        test_dataset=val,
    )


# ----------------------------------------------------------------------------- loaders
def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, per sample, batched
    on whatever device ``x`` lives on. x: (N, C, H, W)."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)[None]  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)[None]  # (N, W)
    out = xp[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    flip = (torch.rand(n, generator=gen, device=gen.device) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class TensorLoader:
    """Batches of an in-memory tensor data set, sharded across ranks like DistributedSampler.

    The order of epoch ``e`` is a permutation seeded by ``(seed, e)``: the same on every rank
    and on every re-run, so a resumed epoch sees the same batches.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool,
        augment: str,
        seed: int,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
    ):
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.rank, self.world = dist_info()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.y)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if self.world > 1:
            per_rank = -(-n // self.world)
            idx = torch.cat([idx, idx[: per_rank * self.world - n]])  # pad as DistributedSampler
            idx = idx[self.rank :: self.world]
        return idx

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices().to(self.device)
        gen = generator(self.device, self.seed * 7_919 + self.epoch * 31 + self.rank)
        for i in range(len(self)):
            b = idx[i * self.batch_size : (i + 1) * self.batch_size]
            xb, yb = self.x[b], self.y[b]
            if self.augment == "crop_flip":
                xb = crop_flip(xb, gen)
            yield xb, yb


def make_train_loader(bundle: DataBundle, *, batch_size: int, seed: int, device: torch.device, num_workers: int = 4):
    """The training loader: a TensorLoader for tensor data (on ``device`` when it is a GPU),
    a DataLoader with a DistributedSampler, pinned memory and workers for folder data."""
    if bundle.x_train is not None:
        on_device = home(device)
        return TensorLoader(
            bundle.x_train,
            bundle.y_train,
            batch_size=batch_size,
            shuffle=True,
            augment=bundle.augment,
            seed=seed,
            device=on_device,
        )
    from torch.utils.data import DataLoader, DistributedSampler

    rank, world = dist_info()
    sampler = DistributedSampler(bundle.train_dataset, num_replicas=world, rank=rank, seed=seed) if world > 1 else None
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        bundle.train_dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        drop_last=True,
        generator=g,
    )
    return loader


def set_loader_epoch(loader: Any, epoch: int) -> None:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    elif getattr(loader, "sampler", None) is not None and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)

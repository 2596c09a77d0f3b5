"""Data loading on small files in the real formats, written here."""

import pickle

import numpy as np
import pytest
import torch

from trainables.data import TensorLoader, crop_flip, get_dataset
from trainables.errors import DataError


def write_cifar10(root, n=20, seed=0):
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return base


def test_cifar10_python_format(tmp_path):
    write_cifar10(tmp_path)
    b = get_dataset("cifar10", root=str(tmp_path), download=False)
    assert b.x_train.shape == (100, 3, 32, 32) and b.x_test.shape == (20, 3, 32, 32)
    assert 0 <= b.x_train.min() and b.x_train.max() <= 1 and b.num_classes == 10
    assert b.class_names[3] == "c3"


def test_cifar100_python_format(tmp_path):
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for name, n in (("train", 30), ("test", 10)):
        (base / name).write_bytes(
            pickle.dumps(
                {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(rng.integers(0, 100, n))}
            )
        )
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)]}))
    b = get_dataset("cifar100", root=str(tmp_path), download=False)
    assert b.num_classes == 100 and b.x_train.shape == (30, 3, 32, 32)


def test_cifar_missing_or_malformed_root_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py: missing"):
        get_dataset("cifar10", root=str(tmp_path), download=False)
    base = write_cifar10(tmp_path)
    (base / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch: not a CIFAR python-format batch"):
        get_dataset("cifar10", root=str(tmp_path), download=False)


def test_cifar_file_with_a_code_payload_is_refused(tmp_path):
    base = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (base / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match="not allowed"):
        get_dataset("cifar10", root=str(tmp_path), download=False)


def test_imagenet_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02", "n03"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")
    b = get_dataset("imagenet", root=str(tmp_path), image_size=32)
    assert b.num_classes == 3 and b.class_names == ["n01", "n02", "n03"]
    x, y = b.test_tensors(5)
    assert x.shape == (5, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    xt, yt = b.train_dataset[0]
    assert xt.shape == (3, 32, 32)
    from trainables.data import make_train_loader

    xb, yb = next(iter(make_train_loader(b, batch_size=4, seed=0, device=torch.device("cpu"), num_workers=0)))
    assert xb.shape == (4, 3, 32, 32)


def test_imagenet_missing_split_is_one_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"val: missing on node .* \(data.root\); expected an ImageFolder"):
        get_dataset("imagenet", root=str(tmp_path))


def test_digits_split_is_fixed(digits):
    again = get_dataset("digits")
    assert len(digits.y_train) == 1437 and len(digits.y_test) == 360
    assert torch.equal(digits.y_test, again.y_test) and digits.x_train.shape[1:] == (1, 8, 8)


def test_tensor_loader_shards_and_reproduces():
    x, y = torch.rand(50, 3, 8, 8), torch.arange(50)
    a = [b for _, b in TensorLoader(x, y, batch_size=8, shuffle=True, augment="none", seed=3)]
    b = [b for _, b in TensorLoader(x, y, batch_size=8, shuffle=True, augment="none", seed=3)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert sorted(torch.cat(a).tolist()) == list(range(50))
    shards = []
    for rank in range(2):
        loader = TensorLoader(x, y, batch_size=8, shuffle=True, augment="none", seed=3)
        loader.rank, loader.world = rank, 2
        shards.append(torch.cat([b for _, b in loader]))
    assert len(shards[0]) == len(shards[1]) == 25
    assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(50))


def test_crop_flip_keeps_shape_and_content():
    x = torch.rand(6, 3, 32, 32)
    out = crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.max() <= x.max()


# ----------------------------------------------------------------------------- validation split
def test_validation_split_is_stratified_seeded_and_disjoint(digits):
    from trainables.data import with_validation

    a = with_validation(digits, 0.2, seed=0)
    b = with_validation(digits, 0.2, seed=0)
    c = with_validation(digits, 0.2, seed=1)
    assert len(a.y_val) == round(0.2 * 1437) == 287 and len(a.y_train) == 1437 - 287
    assert torch.equal(a.val_index, b.val_index) and not torch.equal(a.val_index, c.val_index)
    # held out of the training split: disjoint, and together they are the whole of it
    train_rows = {tuple(r) for r in a.x_train.flatten(1).tolist()}
    assert not any(tuple(r) in train_rows for r in a.x_val.flatten(1).tolist()[:50])
    assert sorted(a.val_index.tolist()) == sorted(set(a.val_index.tolist()))
    assert torch.equal(a.x_val, digits.x_train[a.val_index])
    # every class in its share of the training split (to within one image)
    share = torch.bincount(digits.y_train, minlength=10).double() * 287 / 1437
    assert (torch.bincount(a.y_val, minlength=10).double() - share).abs().max() <= 1
    # a prefix of the split mixes the classes (the monitor reads the first n)
    assert len(set(a.y_val[:30].tolist())) >= 8
    # a count, and the test split untouched
    d = with_validation(digits, 100, seed=0)
    assert len(d.y_val) == 100 and torch.equal(d.y_test, digits.y_test)
    assert with_validation(digits, None) is digits and with_validation(digits, 0) is digits


@pytest.mark.parametrize(
    "size, message", [(1437, "fewer than the 1437 training images"), (0.0001, "gives 0 validation images")]
)
def test_a_validation_split_that_leaves_nothing_is_one_clear_error(digits, size, message):
    from trainables.data import with_validation

    with pytest.raises(DataError, match=message):
        with_validation(digits, size)


def test_folder_data_validation_split_uses_the_test_transform(tmp_path):
    from PIL import Image

    from trainables.data import with_validation

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(5):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")
    b = with_validation(get_dataset("imagenet", root=str(tmp_path), image_size=32), 4)
    assert len(b.train_dataset) == 6 and len(b.val_dataset) == 4
    x1, y1 = b.val_tensors()
    x2, _ = b.val_tensors()
    assert torch.equal(x1, x2)  # no random crop or flip: the same images every time
    assert sorted(y1.tolist()) == [0, 0, 1, 1]


def _fake_download(root_path, marker):
    """One process's CIFAR load that finds the set missing: a fake torchvision download (slow,
    counted) in its place."""
    import time
    from pathlib import Path

    import torchvision

    from trainables import data

    class Slow:
        def __init__(self, root, train, download):
            with open(marker, "a") as f:
                f.write("download\n")
            time.sleep(1.0)
            (Path(root) / "cifar-10-batches-py").mkdir(parents=True)

    torchvision.datasets.CIFAR10 = Slow
    data._download_once("cifar10", Path(root_path), Path(root_path) / "cifar-10-batches-py", "CIFAR10")


@pytest.mark.slow  # four processes that import torch
def test_cifar_is_downloaded_once_per_node_under_a_lock(tmp_path):
    """Four processes of one node asking for a missing CIFAR at once: one downloads, the others
    wait on the lock and find the folder."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    marker = tmp_path / "downloads.txt"
    procs = [ctx.Process(target=_fake_download, args=(str(tmp_path / "root"), str(marker))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    assert marker.read_text().splitlines() == ["download"]


def test_the_data_root_is_absolute_under_the_nodes_home_unless_named(tmp_path, monkeypatch):
    from trainables.data import data_root

    monkeypatch.delenv("SPROUT_DATA_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert data_root(None) == tmp_path / "home" / ".cache" / "sprout" / "data"  # not ./data of the process
    monkeypatch.setenv("SPROUT_DATA_ROOT", "/mnt/datasets")
    assert str(data_root(None)) == "/mnt/datasets" and str(data_root("/elsewhere")) == "/elsewhere"


def test_imagenet_is_found_at_the_mount_the_cluster_file_names(tmp_path, monkeypatch):
    """No data.root: $SPROUT_IMAGENET_ROOT (set on every node by the cluster files) is the root;
    a data.root still wins, and neither is one error naming both."""
    import socket

    from PIL import Image

    mount = tmp_path / "mnt" / "imagenet"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (mount / split / c).mkdir(parents=True)
            Image.new("RGB", (40, 40), (10, 20, 30)).save(mount / split / c / "0.png")
    monkeypatch.setenv("SPROUT_IMAGENET_ROOT", str(mount))
    assert get_dataset("imagenet", image_size=32).class_names == ["a", "b"]
    with pytest.raises(DataError, match=rf"{tmp_path}/elsewhere/train: missing on node .* \(data.root\)"):
        get_dataset("imagenet", root=str(tmp_path / "elsewhere"))
    monkeypatch.setenv("SPROUT_IMAGENET_ROOT", str(tmp_path / "unmounted"))
    with pytest.raises(DataError) as e:
        get_dataset("imagenet")
    assert str(e.value) == (
        f"{tmp_path}/unmounted/train: missing on node {socket.gethostname()} ($SPROUT_IMAGENET_ROOT, the cluster "
        "file's mount); expected an ImageFolder directory (one folder per class)"
    )
    monkeypatch.delenv("SPROUT_IMAGENET_ROOT")
    with pytest.raises(DataError, match=r"^data.root: the imagenet data set needs a root .* \$SPROUT_IMAGENET_ROOT"):
        get_dataset("imagenet")


def test_the_digits_read_without_scikit_learn_are_its_load_digits():
    """The embedded digits come from scikit-learn's CSV file without importing scikit-learn (a
    trial worker saves its import); the arrays are exactly what ``load_digits`` gives, and no
    scikit-learn module is loaded for them."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from trainables.data import _digits_arrays

    images, target = _digits_arrays()
    d = load_digits()
    assert np.array_equal(images, d.data) and np.array_equal(target, d.target) and images.dtype == d.data.dtype
    code = "import sys; from trainables.data import get_dataset; get_dataset('digits'); print('sklearn' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "False", p.stderr[-2000:]

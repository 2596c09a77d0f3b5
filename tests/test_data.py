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
        (base / name).write_bytes(pickle.dumps({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                                "fine_labels": list(rng.integers(0, 100, n))}))
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
    with pytest.raises(DataError, match=r"val: missing; expected an ImageFolder"):
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

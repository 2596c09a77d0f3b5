import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    from trainables.data import get_dataset

    return get_dataset("digits")


@pytest.fixture
def tiny_batch():
    """8 random 1x8x8 images in [0, 1] with labels of 10 classes."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)

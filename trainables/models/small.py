"""A small CNN for the embedded ``digits`` data set (8x8) and for quick tests."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..schema import check
from . import register_model


@dataclass(frozen=True)
class SmallCNNArgs:
    width: int = 32  # channels of the first conv; the second has 2x
    normalize: bool = False

    def validate(self, where: str) -> None:
        check(1 <= self.width <= 1024, where, "width", "an integer in [1, 1024]", self.width)


@register_model("small_cnn", SmallCNNArgs)
def small_cnn(args: SmallCNNArgs, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    w = args.width
    # BatchNorm keeps SGD at lr 0.1 stable from every seed (without it some seeds never learn)
    return nn.Sequential(
        nn.Conv2d(in_channels, w, 3, padding=1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(inplace=True),
        nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * w),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * w),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * w, 4 * w),
        nn.ReLU(inplace=True),
        nn.Linear(4 * w, num_classes),
    )

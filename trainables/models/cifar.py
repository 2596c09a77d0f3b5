"""CIFAR architectures: VGG-16 with BatchNorm, WideResNet-d-k (TRADES layout), PreAct ResNet-18.

All of them end in adaptive average pooling, so they also run on the 8x8 ``digits`` images
in smoke tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..schema import check
from . import register_model

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


@dataclass(frozen=True)
class VGGArgs:
    width_factor: float = 1.0  # multiplies every channel count (1.0 is VGG-16)
    normalize: bool = False  # the SPROUT reference trains on raw [0, 1] inputs

    def validate(self, where: str) -> None:
        check(0 < self.width_factor <= 8, where, "width_factor", "a number in (0, 8]", self.width_factor)


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int, in_channels: int, width_factor: float):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                # ceil_mode keeps 1x1 maps at 1x1, so small inputs (digits) still work
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out = max(1, int(round(v * width_factor)))
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("vgg16", VGGArgs)
def vgg16(args: VGGArgs, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return VGG(_VGG16, num_classes, in_channels, args.width_factor)


# ----------------------------------------------------------------------------- WideResNet
@dataclass(frozen=True)
class WRNArgs:
    depth: int = 34  # 6n + 4
    width: int = 10  # k: channels 16, 16k, 32k, 64k
    dropout: float = 0.0
    normalize: bool = False

    def validate(self, where: str) -> None:
        check(
            self.depth >= 10 and (self.depth - 4) % 6 == 0,
            where,
            "depth",
            "6n+4 with n >= 1 (10, 16, 28, 34, ...)",
            self.depth,
        )
        # WRN-34-32 has ~470M parameters; wider does not fit one GPU's memory for training
        check(1 <= self.width <= 32, where, "width", "an integer in [1, 32]", self.width)
        check(self.depth <= 130, where, "depth", "at most 130", self.depth)
        check(0.0 <= self.dropout < 1.0, where, "dropout", "a number in [0, 1)", self.dropout)


class _WideBlock(nn.Module):
    """Pre-activation basic block as in the TRADES WideResNet."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.equal = cin == cout
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.dropout > 0:
            y = F.dropout(y, p=self.dropout, training=self.training)
        y = self.conv2(y)
        return y + (x if self.equal else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int, dropout: float):
        super().__init__()
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        blocks = []
        for g, stride in zip(range(3), (1, 2, 2)):
            for i in range(n):
                blocks.append(_WideBlock(ch[g] if i == 0 else ch[g + 1], ch[g + 1], stride if i == 0 else 1, dropout))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(o, 1).flatten(1))


@register_model("wrn", WRNArgs)
def wrn(args: WRNArgs, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return WideResNet(args.depth, args.width, num_classes, in_channels, args.dropout)


# ----------------------------------------------------------------------------- PreAct ResNet-18
@dataclass(frozen=True)
class PreActArgs:
    width: int = 64  # channels of the first stage
    normalize: bool = False
    # what a projection shortcut takes: "input", the block's input (locuslab/fast_adversarial,
    # RobustBench's PreActBlock), or "preact", its pre-activated input (kuangliu's pytorch-cifar,
    # RobustBench's PreActBlockV2); the two layouts have the same weights, not the same function
    shortcut: str = "input"

    def validate(self, where: str) -> None:
        check(1 <= self.width <= 512, where, "width", "an integer in [1, 512]", self.width)
        check(self.shortcut in ("input", "preact"), where, "shortcut", "input or preact", self.shortcut)


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, preact_shortcut: bool = False):
        super().__init__()
        self.preact_shortcut = preact_shortcut
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        # locuslab/fast_adversarial preact_resnet.py: the projection shortcut takes the block's
        # input x, not the pre-activated o (kuangliu's pytorch-cifar uses o: shortcut "preact")
        sc = x if self.shortcut is None else self.shortcut(o if self.preact_shortcut else x)
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + sc


class PreActResNet18(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int, preact_shortcut: bool = False):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        layers, cin = [], w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            for j in range(2):
                layers.append(_PreActBlock(cin, cout, (1 if i == 0 else 2) if j == 0 else 1, preact_shortcut))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(o, 1).flatten(1))


@register_model("preact_resnet18", PreActArgs)
def preact_resnet18(args: PreActArgs, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return PreActResNet18(num_classes, in_channels, args.width, args.shortcut == "preact")

"""ImageNet models from torchvision (random init; ``init_checkpoint`` loads trained weights)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from . import register_model


@dataclass(frozen=True)
class TVResNetArgs:
    normalize: bool = True  # ImageNet mean/std as the first layer, inputs stay in [0, 1]


def _tv(name: str):
    def make(args: TVResNetArgs, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return net

    return make


register_model("resnet50", TVResNetArgs)(_tv("resnet50"))
register_model("resnet152", TVResNetArgs)(_tv("resnet152"))

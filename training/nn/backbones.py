"""Backbones to stride 32 in plain torch, looked up by name in one registry.

``build_backbone("mobilenetv2", width=1.0)`` returns a module whose forward gives one
feature map of stride 32 and which has ``out_channels``. A new backbone is one constructor
function plus one line in ``BACKBONES``.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn


def _make_divisible(value: float, divisor: int = 8) -> int:
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


def conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_act(cin, cout, 3, stride), conv_bn_act(cout, cout, 3, 1, act=False))
        self.short = None if stride == 1 and cin == cout else conv_bn_act(cin, cout, 1, stride, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + (x if self.short is None else self.short(x)))


class ResNet(nn.Module):
    """ResNet with basic blocks (ResNet-18 at depths (2, 2, 2, 2), width 1.0)."""

    def __init__(self, depths=(2, 2, 2, 2), width: float = 1.0):
        super().__init__()
        chans = [_make_divisible(c * width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(conv_bn_act(3, chans[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], chans[0]
        for i, (depth, cout) in enumerate(zip(depths, chans)):
            blocks = [BasicBlock(cin, cout, 1 if i == 0 else 2)]
            blocks += [BasicBlock(cout, cout, 1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(cin, hidden, 1))
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden), conv_bn_act(hidden, cout, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (ReLU instead of ReLU6: same speed, and int8 quantisers fold it more simply).

    ``last_channels`` = 0 drops the final 1x1 expansion (the 320-channel map feeds the heads).
    """

    # expand, channels, repeats, first stride
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, width: float = 1.0, last_channels: int = 1280):
        super().__init__()
        cin = _make_divisible(32 * width)
        layers: list[nn.Module] = [conv_bn_act(3, cin, 3, 2)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        if last_channels:
            last = _make_divisible(last_channels * max(1.0, width))
            layers.append(conv_bn_act(cin, last, 1))
            cin = last
        self.features = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _init_weights(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class DlibLandmarkTrunk(nn.Module):
    """The first ``levels`` levels of dlib's face-recognition ResNet (:mod:`training.nn.dlib_resnet`;
    4 = stride 32, its last level dropped) as a feature extractor: a trunk that learned faces from
    about 3 million photos. ``pretrained`` copies dlib's weights from the installed file (after the
    registry's random initialisation). dlib's convs do not pad the stem or the down blocks, so
    the map is smaller than input/32 (192 -> 5x5, 224 -> 6x6): :func:`feature_size` measures it.
    Input: dlib's normalisation, RGB ``(pixel - mean) / 256`` (:data:`DLIB_NORMALISATION`)."""

    def __init__(self, levels: int = 4, pretrained: bool = True):
        super().__init__()
        from training.nn.dlib_resnet import LEVELS, DlibResNet

        if not 1 <= levels <= len(LEVELS):
            raise ValueError(f"levels must be 1..{len(LEVELS)}, got {levels}")
        net = DlibResNet()
        del net.fc
        net.levels = net.levels[:levels]
        self.net, self.levels, self.pretrained = net, levels, pretrained
        self.out_channels = LEVELS[levels - 1][0]

    def load_pretrained(self) -> dict:
        """Copy dlib's weights into the kept levels; returns the file's provenance."""
        from training.nn.dlib_resnet import load_dlib_resnet

        model, parsed = load_dlib_resnet()
        own = self.net.state_dict()
        self.net.load_state_dict({k: v for k, v in model.state_dict().items() if k in own})
        return {"path": str(parsed.path), "sha256": parsed.sha256}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x, self.levels)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": lambda width=1.0: ResNet((2, 2, 2, 2), width),
    "resnet10": lambda width=1.0: ResNet((1, 1, 1, 1), width),
    "mobilenetv2": lambda width=1.0, last_channels=1280: MobileNetV2(width, last_channels),
    "dlib_resnet": lambda levels=4, pretrained=True: DlibLandmarkTrunk(levels, pretrained),
}
# What each backbone wants at its input (mean, std per RGB channel on 0..255 pixels); absent: the
# ImageNet statistics. dlib's network was trained on (pixel - mean) / 256.
DLIB_NORMALISATION = ((122.782, 117.001, 104.298), (256.0, 256.0, 256.0))
INPUT_NORMALISATION = {"dlib_resnet": DLIB_NORMALISATION}


def build_backbone(name: str, **kwargs) -> nn.Module:
    try:
        ctor = BACKBONES[name]
    except KeyError:
        raise ValueError(f"backbone: unknown name {name!r}; known: {', '.join(sorted(BACKBONES))}") from None
    try:
        module = _init_weights(ctor(**kwargs))
    except TypeError as err:
        raise ValueError(f"backbone {name!r}: bad options {kwargs}: {err}") from None
    if getattr(module, "pretrained", False):
        module.load_pretrained()
    return module


@functools.lru_cache(maxsize=64)
def _feature_size(name: str, options: tuple, input_size: int) -> int:
    kwargs = dict(options)
    if "pretrained" in kwargs:
        kwargs["pretrained"] = False  # the size does not depend on the weights
    with torch.no_grad():
        out = BACKBONES[name](**kwargs).eval()(torch.zeros(1, 3, input_size, input_size))
    return int(out.shape[-1])


def feature_size(name: str, options: dict, input_size: int) -> int:
    """Side of the backbone's output map for a square ``input_size`` input (measured once)."""
    if name not in BACKBONES:
        raise ValueError(f"backbone: unknown name {name!r}; known: {', '.join(sorted(BACKBONES))}")
    return _feature_size(name, tuple(sorted(options.items())), input_size)

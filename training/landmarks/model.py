"""PIPNet: a stride-32 backbone and five parallel 1x1 heads on its last feature map."""

from __future__ import annotations

import torch
from torch import nn

from edge.landmarks.pipnet_decode import HEAD_NAMES
from training.nn.backbones import build_backbone


class PipNet(nn.Module):
    """Outputs (score, off_x, off_y, nb_x, nb_y), each (N, channels, H/32, W/32).

    score/off_x/off_y have one channel per landmark; nb_x/nb_y have ``num_lms * num_nb``,
    channel ``i * num_nb + j`` for landmark i's j-th neighbour.
    """

    stride = 32
    head_names = HEAD_NAMES

    def __init__(self, backbone: str = "resnet18", num_lms: int = 68, num_nb: int = 10, **backbone_options):
        super().__init__()
        self.num_lms, self.num_nb = num_lms, num_nb
        self.backbone = build_backbone(backbone, **backbone_options)
        c = self.backbone.out_channels
        self.score = nn.Conv2d(c, num_lms, 1)
        self.off_x = nn.Conv2d(c, num_lms, 1)
        self.off_y = nn.Conv2d(c, num_lms, 1)
        self.nb_x = nn.Conv2d(c, num_lms * num_nb, 1)
        self.nb_y = nn.Conv2d(c, num_lms * num_nb, 1)
        for head in (self.score, self.off_x, self.off_y, self.nb_x, self.nb_y):
            nn.init.normal_(head.weight, std=0.001)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.backbone(x)
        return self.score(f), self.off_x(f), self.off_y(f), self.nb_x(f), self.nb_y(f)

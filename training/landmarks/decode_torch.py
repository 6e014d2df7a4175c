"""PIPNet decoding in torch, for exporting a graph that outputs landmarks directly.

It must agree with edge.landmarks.pipnet_decode.decode_pipnet (a test feeds both the same
head outputs); the device uses the numpy one on raw heads by default.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edge.landmarks.pipnet_decode import vote_table


class PipNetDecoder(nn.Module):
    """(score, off_x, off_y, nb_x, nb_y) -> landmarks (N, L, 2) in input pixels."""

    def __init__(self, neighbours: np.ndarray, stride: float):
        super().__init__()
        table = vote_table(np.asarray(neighbours))
        self.num_nb = int(np.asarray(neighbours).shape[1])
        self.stride = float(stride)
        self.register_buffer("voter", torch.from_numpy(table.voter), persistent=False)
        self.register_buffer("slot", torch.from_numpy(table.slot), persistent=False)
        self.register_buffer("mask", torch.from_numpy(table.mask).float(), persistent=False)

    def forward(self, score, off_x, off_y, nb_x, nb_y) -> torch.Tensor:
        n, lms, h, w = score.shape
        c = self.num_nb
        idx = score.reshape(n, lms, h * w).argmax(dim=2)  # (N, L)
        cx = (idx % w).float()
        cy = torch.div(idx, w, rounding_mode="floor").float()
        own_x = cx + off_x.reshape(n, lms, h * w).gather(2, idx.unsqueeze(2)).squeeze(2)
        own_y = cy + off_y.reshape(n, lms, h * w).gather(2, idx.unsqueeze(2)).squeeze(2)
        nb_idx = idx.repeat_interleave(c, dim=1).unsqueeze(2)  # (N, L*C, 1)
        nbx = cx.repeat_interleave(c, dim=1) + nb_x.reshape(n, lms * c, h * w).gather(2, nb_idx).squeeze(2)
        nby = cy.repeat_interleave(c, dim=1) + nb_y.reshape(n, lms * c, h * w).gather(2, nb_idx).squeeze(2)
        flat = self.voter * c + self.slot  # (L, V) index into the L*C votes
        votes_x = nbx[:, flat]  # (N, L, V)
        votes_y = nby[:, flat]
        count = 1.0 + self.mask.sum(dim=1)
        x = (own_x + (votes_x * self.mask).sum(dim=2)) / count
        y = (own_y + (votes_y * self.mask).sum(dim=2)) / count
        return torch.stack([x, y], dim=-1) * self.stride

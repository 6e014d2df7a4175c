"""Margin heads (ArcFace, CosFace, SphereFace, Pose-Adaptive ArcFace), RegularFace's exclusive
regularizer and PoseFace's orthogonality loss.

Every margin head holds the class weights W (C, D) and maps unit embeddings and labels to
scaled logits: ``s * cos(theta_j)`` for the other classes and ``s * psi(theta_y)`` for the
sample's own class, where psi adds the head's margin. Cross-entropy on those logits is the loss.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class MarginHead(nn.Module):
    """Normalised class weights and the target-logit margin, per sample when ``margins`` is a tensor."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.scale = scale

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).t()

    def target_logit(self, cos: torch.Tensor, yaw_deg: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, yaw_deg: torch.Tensor | None = None
    ) -> torch.Tensor:
        cos = self.cosines(embeddings).clamp(-1.0, 1.0)
        target = cos.gather(1, labels[:, None]).squeeze(1)
        new_target = self.target_logit(target, yaw_deg)
        logits = cos.scatter(1, labels[:, None], new_target[:, None])
        return logits * self.scale


def arc_margin(cos: torch.Tensor, margin: torch.Tensor | float) -> torch.Tensor:
    """cos(theta + m), continued past theta + m = pi by the usual linear fall-off
    ``cos(theta) - m sin(m)`` so the target logit keeps decreasing in theta."""
    margin = torch.as_tensor(margin, dtype=cos.dtype, device=cos.device)
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-9))
    shifted = cos * torch.cos(margin) - sin * torch.sin(margin)
    threshold = torch.cos(math.pi - margin)
    return torch.where(cos > threshold, shifted, cos - margin * torch.sin(margin))


class ArcFace(MarginHead):
    """Additive angular margin: psi = cos(theta + m). Defaults s=32, m=0.5: m as in the ArcFace
    paper; s=32 instead of 64 because with ~2k classes a smaller scale trains more stably."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 32.0, margin: float = 0.5):
        super().__init__(embedding_dim, num_classes, scale)
        self.margin = margin

    def target_logit(self, cos, yaw_deg):
        return arc_margin(cos, self.margin)


class CosFace(MarginHead):
    """Additive cosine margin: psi = cos(theta) - m (CosFace's m=0.35)."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 32.0, margin: float = 0.35):
        super().__init__(embedding_dim, num_classes, scale)
        self.margin = margin

    def target_logit(self, cos, yaw_deg):
        return cos - self.margin


class SphereFace(MarginHead):
    """Multiplicative angular margin on normalised features: psi = (-1)^k cos(m theta) - 2k for
    theta in [k pi/m, (k+1) pi/m], monotone in theta. Default m=1.35, the real-valued margin
    that trains on normalised features (the integer m=4 of the paper needs its annealing)."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 32.0, margin: float = 1.35):
        super().__init__(embedding_dim, num_classes, scale)
        self.margin = margin

    def target_logit(self, cos, yaw_deg):
        theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
        k = torch.floor(self.margin * theta / math.pi).detach()
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        return sign * torch.cos(self.margin * theta) - 2.0 * k


def pose_ramp(yaw_deg: torch.Tensor, full_at_deg: float) -> torch.Tensor:
    """r in [0, 1]: |yaw| / full_at_deg, clipped (0 for a frontal face, 1 from full_at_deg on)."""
    return (yaw_deg.abs() / full_at_deg).clamp(0.0, 1.0)


class PoseAdaptiveArcFace(MarginHead):
    """PAA: ArcFace with a per-sample margin m_i = m_b + r_i * dm, r_i = pose_ramp(|yaw_i|).

    Defaults: m_b = 0.5 (so a frontal face gets exactly ArcFace's margin and the two heads differ
    only where pose differs), dm = 0.2 (a full profile gets 0.7: a larger margin, hence a larger
    loss and gradient, for the rare profile samples, kept below the point where cos(theta + m)
    saturates for typical early angles), ramp reaching 1 at 60 degrees (the start of the
    profile bin in the report).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float = 32.0,
        margin: float = 0.5,
        margin_delta: float = 0.2,
        ramp_full_deg: float = 60.0,
    ):
        super().__init__(embedding_dim, num_classes, scale)
        self.margin, self.margin_delta, self.ramp_full_deg = margin, margin_delta, ramp_full_deg

    def margins(self, yaw_deg: torch.Tensor) -> torch.Tensor:
        return self.margin + pose_ramp(yaw_deg, self.ramp_full_deg) * self.margin_delta

    def target_logit(self, cos, yaw_deg):
        if yaw_deg is None:
            raise ValueError("pose-adaptive ArcFace needs each sample's yaw")
        return arc_margin(cos, self.margins(yaw_deg.to(cos.dtype)))


HEADS: dict[str, Callable[..., MarginHead]] = {
    "arcface": ArcFace,
    "cosface": CosFace,
    "sphereface": SphereFace,
    "paa": PoseAdaptiveArcFace,
}


def build_head(name: str, embedding_dim: int, num_classes: int, **kwargs) -> MarginHead:
    try:
        cls = HEADS[name]
    except KeyError:
        raise ValueError(f"unknown margin head {name!r}: known {', '.join(sorted(HEADS))}") from None
    return cls(embedding_dim, num_classes, **kwargs)


def exclusive_regularizer(weight: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """RegularFace: mean over classes i of max_{j != i} cos(W_i, W_j).

    The nearest other class j is picked without gradient; the gradient then flows through the
    cosine of each chosen pair, pushing both weights apart. ``classes`` limits i to those
    classes (e.g. the ones in the batch, for large C); j always ranges over all classes.
    """
    w = F.normalize(weight, dim=1)
    rows = w if classes is None else w[classes]
    with torch.no_grad():
        cos = rows @ w.t()
        own = torch.arange(len(w), device=w.device) if classes is None else classes
        cos[torch.arange(len(rows)), own] = -2.0
        nearest = cos.argmax(dim=1)
    return (rows * w[nearest]).sum(dim=1).mean()


def orthogonality_loss(w_id: torch.Tensor, w_pose: torch.Tensor) -> torch.Tensor:
    """||W_id^ W_pose^T||_F^2 over row-normalised projection matrices (out, in): the squared
    cosines between every identity and every pose direction in the trunk's feature space.
    Rows are normalised so the loss cannot be met by shrinking weights (BN follows both)."""
    return (F.normalize(w_id, dim=1) @ F.normalize(w_pose, dim=1).t()).pow(2).sum()

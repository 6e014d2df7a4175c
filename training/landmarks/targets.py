"""PIPNet training targets and loss.

Targets of one face, for a (H, W) map of stride s and landmarks p (L, 2) in input pixels:
grid position g = p / s; the landmark's cell is floor(g) (clipped to the map); its offsets
are g - cell (cell units); neighbour j of landmark i has offsets g[nb[i, j]] - cell[i].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def make_targets(points: np.ndarray, neighbours: np.ndarray, map_size: tuple[int, int], stride: float) -> dict:
    """Compact targets of one face: its cell index per landmark and all offsets.

    ``points`` (L, 2) in input pixels; returns ``cell`` (L,) int64 flat index y * W + x,
    ``off`` (L, 2), ``nb_off`` (L, C, 2) float32.
    """
    h, w = map_size
    g = np.asarray(points, dtype=np.float64) / stride
    cell_xy = np.floor(g)
    cell_xy[:, 0] = np.clip(cell_xy[:, 0], 0, w - 1)
    cell_xy[:, 1] = np.clip(cell_xy[:, 1], 0, h - 1)
    off = g - cell_xy
    nb_off = g[neighbours] - cell_xy[:, None, :]
    cell = (cell_xy[:, 1] * w + cell_xy[:, 0]).astype(np.int64)
    return {"cell": cell, "off": off.astype(np.float32), "nb_off": nb_off.astype(np.float32)}


def _gather_at_cells(maps: torch.Tensor, cells: torch.Tensor, repeat: int = 1) -> torch.Tensor:
    """Values of (N, K*repeat, H, W) maps at the per-landmark cells (N, K): (N, K*repeat)."""
    n, ch = maps.shape[:2]
    idx = cells.repeat_interleave(repeat, dim=1) if repeat > 1 else cells
    return maps.reshape(n, ch, -1).gather(2, idx.unsqueeze(2)).squeeze(2)


def coarse_score_target(cells: torch.Tensor, map_size: tuple[int, int], factor: int) -> torch.Tensor:
    """One-hot (N, L, H/f, W/f) target at the coarse cell containing each landmark's cell."""
    h, w = map_size
    cy, cx = cells // w, cells % w
    hc, wc = -(-h // factor), -(-w // factor)
    coarse = (cy // factor) * wc + (cx // factor)
    return F.one_hot(coarse, hc * wc).float().reshape(*cells.shape, hc, wc)


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``weights`` is 1 (0 where none is); entries left
    out never reach the sum, so an unlabelled point's NaN target cannot either."""
    kept = torch.where(weights > 0, values, torch.zeros_like(values))
    return (kept * weights).sum() / weights.sum().clamp_min(1.0)


def pipnet_loss(
    outputs: tuple[torch.Tensor, ...],
    cell: torch.Tensor,
    off: torch.Tensor,
    nb_off: torch.Tensor,
    coarse_factor: torch.Tensor | None = None,
    score_weight: float = 10.0,
    nb_weight: float = 1.0,
    mask: torch.Tensor | None = None,
    nb_mask: torch.Tensor | None = None,
) -> dict:
    """10 x MSE over the whole score map + L1 of offsets and neighbour offsets at the true cell.

    ``coarse_factor`` (N,) int, optional: 1 for faces with full supervision; f > 1 for
    pseudo-labelled faces in an early STC stage, supervised only on the score map max-pooled
    by f against a one-hot target at the coarse cell (no offsets).

    ``mask`` (N, L) and ``nb_mask`` (N, L, C), optional: partial labels (CFP's fiducials map to
    some of the 68 points). A landmark that is not labelled gets no score-map, offset or
    neighbour term; neighbour j of landmark i is supervised only where both are labelled. Without
    masks every landmark counts, as before.
    """
    score, off_x, off_y, nb_x, nb_y = outputs
    n, lms, h, w = score.shape
    c = nb_x.shape[1] // lms
    if coarse_factor is None:
        coarse_factor = torch.ones(n, dtype=torch.long, device=score.device)
    mask = torch.ones(n, lms, device=score.device) if mask is None else mask.to(score.dtype)
    nb_mask = mask[:, :, None].expand(n, lms, c) if nb_mask is None else nb_mask.to(score.dtype)
    full = coarse_factor == 1

    score_err, score_w = [], []
    if full.any():
        target = F.one_hot(cell[full], h * w).float().reshape(-1, lms, h, w)
        score_err.append(((score[full] - target) ** 2).mean(dim=(2, 3)))
        score_w.append(mask[full])
    for f in torch.unique(coarse_factor[~full]).tolist():
        sel = coarse_factor == f
        pooled = F.max_pool2d(score[sel], kernel_size=f, stride=f, ceil_mode=True)
        target = coarse_score_target(cell[sel], (h, w), f)
        score_err.append(((pooled - target) ** 2).mean(dim=(2, 3)))
        score_w.append(mask[sel])
    loss_score = _masked_mean(torch.cat(score_err), torch.cat(score_w))

    zero = score.sum() * 0.0
    if full.any():
        cf, m, nm = cell[full], mask[full], nb_mask[full].reshape(-1, lms * c)
        loss_off = _masked_mean((_gather_at_cells(off_x[full], cf) - off[full][..., 0]).abs(), m) + _masked_mean(
            (_gather_at_cells(off_y[full], cf) - off[full][..., 1]).abs(), m
        )
        loss_nb = _masked_mean(
            (_gather_at_cells(nb_x[full], cf, c) - nb_off[full][..., 0].reshape(-1, lms * c)).abs(), nm
        ) + _masked_mean((_gather_at_cells(nb_y[full], cf, c) - nb_off[full][..., 1].reshape(-1, lms * c)).abs(), nm)
    else:
        loss_off = loss_nb = zero
    total = score_weight * loss_score + loss_off + nb_weight * loss_nb
    return {"total": total, "score": loss_score.detach(), "offset": loss_off.detach(), "neighbour": loss_nb.detach()}

"""PIPNet decoding in numpy: argmax cell, in-cell offsets, and the Neighbor Regression Module.

A PIPNet model outputs, on one (H, W) feature map of stride ``stride`` (input pixels per
cell):
- ``score``  (N, L, H, W): one map per landmark; the landmark lies in the argmax cell.
- ``off_x``, ``off_y`` (N, L, H, W): its position inside that cell, in cell units.
- ``nb_x``, ``nb_y`` (N, L*C, H, W): channel ``i*C + j`` is the position of landmark i's j-th
  neighbour (``neighbours[i, j]``) relative to landmark i's cell, in cell units.

Each landmark's estimate is the plain mean of its own prediction and every vote cast for it
by the landmarks that count it among their neighbours. Training's evaluation, the exported
graph's tests and the device all decode with this module, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEAD_NAMES = ("score", "off_x", "off_y", "nb_x", "nb_y")


def neighbour_table(mean_face: np.ndarray, num_nb: int) -> np.ndarray:
    """(L, num_nb) indices of each landmark's nearest other landmarks on the mean face.

    Ties are broken by index, so the table is reproducible from the mean face alone.
    """
    mean_face = np.asarray(mean_face, dtype=np.float64)
    n = len(mean_face)
    if not 0 < num_nb < n:
        raise ValueError(f"num_nb must be in 1..{n - 1}, got {num_nb}")
    d = np.linalg.norm(mean_face[:, None, :] - mean_face[None, :, :], axis=-1)
    d[np.arange(n), np.arange(n)] = np.inf
    return np.argsort(d, axis=1, kind="stable")[:, :num_nb].astype(np.int64)


@dataclass(frozen=True)
class VoteTable:
    """For every landmark, who votes for it: ``voter[i, v]`` predicts i as neighbour ``slot[i, v]``.

    Padded to a rectangle; ``mask[i, v]`` is False on padding.
    """

    voter: np.ndarray  # (L, V) int
    slot: np.ndarray  # (L, V) int
    mask: np.ndarray  # (L, V) bool


def vote_table(neighbours: np.ndarray) -> VoteTable:
    neighbours = np.asarray(neighbours, dtype=np.int64)
    n, c = neighbours.shape
    votes: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(c):
            votes[neighbours[i, j]].append((i, j))
    width = max(1, max(len(v) for v in votes))
    voter = np.zeros((n, width), np.int64)
    slot = np.zeros((n, width), np.int64)
    mask = np.zeros((n, width), bool)
    for i, v in enumerate(votes):
        for k, (a, b) in enumerate(v):
            voter[i, k], slot[i, k], mask[i, k] = a, b, True
    return VoteTable(voter, slot, mask)


def decode_pipnet(
    score: np.ndarray,
    off_x: np.ndarray,
    off_y: np.ndarray,
    nb_x: np.ndarray,
    nb_y: np.ndarray,
    neighbours: np.ndarray,
    stride: float,
) -> np.ndarray:
    """Landmarks (N, L, 2) in input-image pixels (x, y) from the five heads.

    Cell (cx, cy) covers input pixels [cx*stride, (cx+1)*stride); a position of ``cx + off``
    cells is ``(cx + off) * stride`` pixels.
    """
    score = np.asarray(score)
    n, lms, h, w = score.shape
    c = neighbours.shape[1]
    if off_x.shape != score.shape or off_y.shape != score.shape:
        raise ValueError(f"offset maps {off_x.shape}/{off_y.shape} must match the score map {score.shape}")
    if nb_x.shape != (n, lms * c, h, w) or nb_y.shape != nb_x.shape:
        raise ValueError(f"neighbour maps {nb_x.shape} must be {(n, lms * c, h, w)} for {c} neighbours")
    flat = score.reshape(n, lms, h * w)
    idx = flat.argmax(axis=2)  # (N, L): the first maximum, as torch.argmax and ONNX ArgMax
    cy, cx = np.divmod(idx, w)
    b = np.arange(n)[:, None]
    lm_idx = np.arange(lms)[None, :]
    own_x = cx + off_x.reshape(n, lms, h * w)[b, lm_idx, idx]
    own_y = cy + off_y.reshape(n, lms, h * w)[b, lm_idx, idx]

    # neighbour j of landmark i, read at landmark i's winning cell
    nb_idx = np.repeat(idx, c, axis=1)  # (N, L*C)
    ch = np.arange(lms * c)[None, :]
    nbx = (np.repeat(cx, c, axis=1) + nb_x.reshape(n, lms * c, h * w)[b, ch, nb_idx]).reshape(n, lms, c)
    nby = (np.repeat(cy, c, axis=1) + nb_y.reshape(n, lms * c, h * w)[b, ch, nb_idx]).reshape(n, lms, c)

    table = vote_table(neighbours)
    votes_x = nbx[:, table.voter, table.slot]  # (N, L, V)
    votes_y = nby[:, table.voter, table.slot]
    m = table.mask[None].astype(np.float64)
    count = 1.0 + m.sum(axis=2)
    x = (own_x + (votes_x * m).sum(axis=2)) / count
    y = (own_y + (votes_y * m).sum(axis=2)) / count
    return np.stack([x, y], axis=-1) * float(stride)

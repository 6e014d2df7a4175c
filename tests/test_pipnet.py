"""PIPNet: neighbour table, targets, loss masking, STC coarse targets, decoders (torch = numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.landmarks.pipnet_decode import decode_pipnet, neighbour_table, vote_table
from training.landmarks.decode_torch import PipNetDecoder
from training.landmarks.model import PipNet
from training.landmarks.targets import coarse_score_target, make_targets, pipnet_loss


def _mean_face(n=68, seed=0):
    return np.random.default_rng(seed).uniform(10, 180, (n, 2))


def test_neighbour_table_is_nearest_others():
    mf = np.array([[0, 0], [1, 0], [3, 0], [10, 0]], float)
    nb = neighbour_table(mf, 2)
    np.testing.assert_array_equal(nb, [[1, 2], [0, 2], [1, 0], [2, 1]])
    assert not any(i in row for i, row in enumerate(neighbour_table(_mean_face(), 10)))


def test_vote_table_inverts_the_neighbour_table():
    nb = neighbour_table(_mean_face(), 10)
    t = vote_table(nb)
    for i in range(68):
        got = {(int(v), int(s)) for v, s, m in zip(t.voter[i], t.slot[i], t.mask[i]) if m}
        want = {(a, b) for a in range(68) for b in range(10) if nb[a, b] == i}
        assert got == want


def test_targets_hand_computed():
    pts = np.array([[40.0, 70.0], [100.0, 5.0], [250.0, -3.0]])  # last one leaves the 8x8 map
    nb = np.array([[1], [0], [0]])
    t = make_targets(pts, nb, (8, 8), 32)
    # (40, 70) -> grid (1.25, 2.1875): cell x1 y2 -> index 2*8+1
    assert t["cell"].tolist() == [17, 3, 7]
    np.testing.assert_allclose(t["off"][0], [0.25, 0.1875])
    np.testing.assert_allclose(t["off"][2], [250 / 32 - 7, -3 / 32])  # clipped cell, offset outside [0, 1)
    # neighbour of 0 is landmark 1 at grid (3.125, 0.15625), relative to cell (1, 2)
    np.testing.assert_allclose(t["nb_off"][0, 0], [2.125, -1.84375])


def _random_outputs(n=2, lms=68, c=10, h=6, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    score = torch.randn(n, lms, h, w, generator=g)
    return (
        score,
        torch.rand(n, lms, h, w, generator=g),
        torch.rand(n, lms, h, w, generator=g),
        torch.randn(n, lms * c, h, w, generator=g),
        torch.randn(n, lms * c, h, w, generator=g),
    )


def test_torch_and_numpy_decoders_agree():
    nb = neighbour_table(_mean_face(), 10)
    outs = _random_outputs()
    got_np = decode_pipnet(*(o.numpy() for o in outs), nb, 32)
    got_torch = PipNetDecoder(nb, 32)(*outs).numpy()
    np.testing.assert_allclose(got_torch, got_np, rtol=0, atol=1e-4)


def test_decoding_perfect_heads_returns_the_targets():
    mf = _mean_face()
    nb = neighbour_table(mf, 10)
    pts = mf + np.random.default_rng(1).normal(0, 2, mf.shape)
    t = make_targets(pts, nb, (6, 6), 32)
    score = np.zeros((1, 68, 36))
    score[0, np.arange(68), t["cell"]] = 1
    off_x, off_y = np.zeros((1, 68, 36)), np.zeros((1, 68, 36))
    off_x[0, np.arange(68), t["cell"]] = t["off"][:, 0]
    off_y[0, np.arange(68), t["cell"]] = t["off"][:, 1]
    nbx, nby = np.zeros((1, 680, 36)), np.zeros((1, 680, 36))
    ch = np.arange(680)
    cells = np.repeat(t["cell"], 10)
    nbx[0, ch, cells] = t["nb_off"][..., 0].ravel()
    nby[0, ch, cells] = t["nb_off"][..., 1].ravel()
    r = lambda a: a.reshape(1, -1, 6, 6)  # noqa: E731
    got = decode_pipnet(r(score), r(off_x), r(off_y), r(nbx), r(nby), nb, 32)
    np.testing.assert_allclose(got[0], pts, atol=1e-9)


def test_loss_reads_offsets_only_at_the_true_cell():
    nb = neighbour_table(_mean_face(), 10)
    pts = _mean_face(seed=3)
    t = {k: torch.from_numpy(v)[None] for k, v in make_targets(pts, nb, (6, 6), 32).items()}
    outs = [o[:1].clone().requires_grad_(True) for o in _random_outputs()]
    loss = pipnet_loss(tuple(outs), t["cell"], t["off"], t["nb_off"])
    loss["total"].backward()
    grad_x = outs[1].grad[0].reshape(68, 36)
    nonzero = grad_x.abs() > 0
    assert nonzero.sum(dim=1).tolist() == [1] * 68
    assert nonzero.float().argmax(dim=1).tolist() == t["cell"][0].tolist()
    assert (outs[0].grad.abs() > 0).float().mean() > 0.99  # the score map is supervised everywhere
    grad_nb = outs[3].grad[0].reshape(680, 36)
    assert ((grad_nb.abs() > 0).sum(dim=1) == 1).all()


def test_coarse_supervision_has_no_offset_loss():
    nb = neighbour_table(_mean_face(), 10)
    t = {k: torch.from_numpy(v)[None] for k, v in make_targets(_mean_face(seed=4), nb, (6, 6), 32).items()}
    outs = [o[:1].clone().requires_grad_(True) for o in _random_outputs()]
    loss = pipnet_loss(tuple(outs), t["cell"], t["off"], t["nb_off"], coarse_factor=torch.tensor([3]))
    loss["total"].backward()
    assert outs[1].grad is None or outs[1].grad.abs().sum() == 0
    assert outs[3].grad is None or outs[3].grad.abs().sum() == 0
    assert outs[0].grad.abs().sum() > 0
    # max-pooled by 3: only the 4 cells that win their 3x3 block get a gradient per landmark
    assert ((outs[0].grad[0].reshape(68, 36).abs() > 0).sum(dim=1) == 4).all()


def test_coarse_target_marks_the_coarse_cell():
    cells = torch.tensor([[0, 5, 35, 20]])  # 6x6 map: (0,0), (5,0), (5,5), (2,3)
    t = coarse_score_target(cells, (6, 6), 3)
    assert t.shape == (1, 4, 2, 2)
    assert [tuple(torch.nonzero(t[0, i]).tolist()[0]) for i in range(4)] == [(0, 0), (0, 1), (1, 1), (1, 0)]


@pytest.mark.parametrize("backbone,opts", [("resnet18", {}), ("mobilenetv2", {"width": 0.5, "last_channels": 0})])
def test_model_shapes_and_head_init(backbone, opts):
    m = PipNet(backbone, 68, 10, **opts)
    outs = m(torch.zeros(1, 3, 192, 192))
    assert [tuple(o.shape) for o in outs] == [(1, 68, 6, 6)] * 3 + [(1, 680, 6, 6)] * 2
    for head in (m.score, m.off_x, m.nb_y):
        assert head.weight.std().item() == pytest.approx(0.001, rel=0.2)
        assert head.bias.abs().max().item() == 0


def test_masked_loss_gives_unlabelled_points_no_gradient():
    """CFP's fiducials label some of the 68 points: the others (NaN in the target) get no
    score-map, offset or neighbour gradient; neighbours count only where both ends are labelled."""
    nb = neighbour_table(_mean_face(), 10)
    pts = _mean_face(seed=5).copy()
    labelled = np.zeros(68, bool)
    labelled[[8, 30, 33, 36, 39, 48, 54]] = True
    pts[~labelled] = np.nan
    t = {k: torch.from_numpy(v)[None] for k, v in make_targets(np.nan_to_num(pts), nb, (6, 6), 32).items()}
    t["off"][0, ~torch.from_numpy(labelled)] = float("nan")  # what an unlabelled target may hold
    mask = torch.from_numpy(labelled)[None]
    nb_mask = torch.from_numpy(labelled[:, None] & labelled[nb])[None]
    outs = [o[:1].clone().requires_grad_(True) for o in _random_outputs()]
    loss = pipnet_loss(tuple(outs), t["cell"], t["off"], t["nb_off"], mask=mask, nb_mask=nb_mask)
    assert torch.isfinite(loss["total"])
    loss["total"].backward()
    score_grad = outs[0].grad[0].abs().sum(dim=(1, 2))
    assert (score_grad[~labelled] == 0).all() and (score_grad[labelled] > 0).all()
    off_grad = outs[1].grad[0].abs().sum(dim=(1, 2))
    assert (off_grad[~labelled] == 0).all() and (off_grad[labelled] > 0).all()
    nb_grad = outs[3].grad[0].reshape(68, 10, 36).abs().sum(dim=2)
    assert ((nb_grad > 0) == torch.from_numpy(labelled[:, None] & labelled[nb])).all()
    # an all-ones mask is the unmasked loss
    full = {k: torch.from_numpy(v)[None] for k, v in make_targets(_mean_face(seed=5), nb, (6, 6), 32).items()}
    plain = [o[:1] for o in _random_outputs()]
    a = pipnet_loss(tuple(plain), full["cell"], full["off"], full["nb_off"])["total"]
    b = pipnet_loss(tuple(plain), full["cell"], full["off"], full["nb_off"], mask=torch.ones(1, 68))["total"]
    assert torch.allclose(a, b)

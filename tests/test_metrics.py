"""Landmark and verification metrics against hand-computed cases, plus one property each."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge.metrics import landmarks as lmm
from edge.metrics import verification as ver


def _face(iod: float = 10.0) -> np.ndarray:
    gt = np.zeros((68, 2))
    gt[:, 0] = np.linspace(0, 20, 68)
    gt[36] = [0.0, 0.0]
    gt[45] = [iod, 0.0]
    return gt


def test_nme_hand_computed():
    gt = _face(iod=10.0)
    pred = gt.copy()
    pred[:, 1] += 1.0  # every point 1 px off; inter-ocular 10 px
    assert lmm.nme(pred, gt) == pytest.approx(0.1)
    pred2 = gt.copy()
    pred2[0, 0] += 68.0  # one point 68 px off: mean error 1 px
    assert lmm.nme(np.stack([pred, pred2]), np.stack([gt, gt])) == pytest.approx([0.1, 0.1])


def test_nme_rejects_degenerate_ground_truth():
    gt = np.zeros((68, 2))
    with pytest.raises(ValueError, match="inter-ocular"):
        lmm.nme(gt, gt)


def test_fr_auc_ced_hand_computed():
    errors = np.array([0.02, 0.05, 0.08, 0.2])
    assert lmm.failure_rate(errors, 0.1) == pytest.approx(0.25)
    # mean(max(0, 0.1 - e)) / 0.1 = (0.08 + 0.05 + 0.02 + 0) / 4 / 0.1
    assert lmm.auc(errors, 0.1) == pytest.approx(0.375)
    thr, frac = lmm.ced_curve(errors, 0.1, steps=11)
    assert thr[5] == pytest.approx(0.05) and frac[5] == pytest.approx(0.5)
    assert frac[-1] == pytest.approx(0.75)
    # the exact AUC matches the trapezoid integral of a fine CED curve
    thr, frac = lmm.ced_curve(errors, 0.1, steps=100001)
    assert np.trapezoid(frac, thr) / 0.1 == pytest.approx(lmm.auc(errors, 0.1), abs=1e-4)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, (3, 68, 2), elements=st.floats(-50, 50)),
    arrays(np.float64, (3, 68, 2), elements=st.floats(-3, 3)),
    st.floats(0.1, 20),
    st.floats(-100, 100),
    st.floats(0, 2 * np.pi),
)
def test_nme_is_similarity_invariant(gt, noise, scale, shift, angle):
    gt = gt.copy()
    gt[:, 45] = gt[:, 36] + [30.0, 5.0]
    pred = gt + noise
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    base = lmm.nme(pred, gt)
    moved = lmm.nme(scale * pred @ rot.T + shift, scale * gt @ rot.T + shift)
    np.testing.assert_allclose(moved, base, rtol=1e-7, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 0.3)), st.floats(0.01, 0.3))
def test_auc_and_failure_rate_are_consistent(errors, threshold):
    a = lmm.auc(errors, threshold)
    fr = lmm.failure_rate(errors, threshold)
    assert 0.0 <= a <= 1.0
    # AUC can never exceed the fraction of faces that did not fail
    assert a <= 1.0 - fr + 1e-12
    assert lmm.auc(errors * 0.5, threshold) >= a - 1e-12  # halving every error never hurts


def test_roc_tar_far_eer_hand_computed():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    labels = np.array([1, 1, 0, 1, 0, 1, 0, 0], dtype=bool)
    far, tar, thr = ver.roc_curve(scores, labels)
    np.testing.assert_allclose(far, [0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(tar, [0, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0])
    assert thr[0] == np.inf and thr[2] == pytest.approx(0.8)
    assert ver.tar_at_far(scores, labels, 0.0) == (0.5, 0.8)
    assert ver.tar_at_far(scores, labels, 0.3) == (0.75, 0.6)
    # FRR at far=0.25 is 0.5 / 0.25; the curves cross at 0.25
    assert ver.eer(scores, labels) == pytest.approx(0.25)
    # best accuracy: accept >= 0.35 gives 6/8 ... or >=0.75 gives 6/8; the first maximum wins
    thr_best, acc = ver.best_threshold(scores, labels)
    assert acc == pytest.approx(0.75)
    assert ver.accuracy_at(scores, labels, thr_best) == pytest.approx(0.75)
    # AUC by counting: pairs (genuine > impostor) / 16
    g, i = scores[labels], scores[~labels]
    assert ver.roc_auc(scores, labels) == pytest.approx((g[:, None] > i[None, :]).mean())


def test_ties_are_accepted_together():
    far, tar, thr = ver.roc_curve(np.array([0.5, 0.5, 0.1]), np.array([True, False, False]))
    np.testing.assert_allclose(far, [0, 0.5, 1.0])
    np.testing.assert_allclose(tar, [0, 1.0, 1.0])


def test_folded_accuracy_chooses_threshold_on_other_folds():
    # fold 1 and 2 separate at 0.5, fold 3 at 0.85: fold 3 scored at 0.5 loses its impostors
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.95, 0.7])
    labels = np.array([1, 0, 1, 0, 1, 0], dtype=bool)
    folds = np.array([1, 1, 2, 2, 3, 3])
    res = ver.folded_accuracy(scores, labels, folds)
    assert res.per_fold[1] == 1.0 and res.per_fold[2] == 1.0
    assert res.per_fold[3] == pytest.approx(0.5)
    assert res.mean == pytest.approx(2.5 / 3)
    assert 0.1 < res.thresholds[3] < 0.8


def test_verification_rejects_one_class():
    with pytest.raises(ValueError, match="both genuine and impostor"):
        ver.roc_curve(np.array([0.1, 0.2]), np.array([True, True]))


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.int64, st.integers(6, 60), elements=st.integers(-1000, 1000), unique=True),
    st.randoms(use_true_random=False),
)
def test_verification_is_invariant_to_monotone_score_maps(scores, rnd):
    scores = scores / 1000.0
    labels = np.array([rnd.random() < 0.5 for _ in scores])
    labels[:6] = [True, False, False, True, True, False]  # every fold's complement has both kinds
    folds = np.arange(scores.size) % 3
    warped = np.exp(3 * scores) + 7  # strictly increasing
    assert ver.eer(scores, labels) == pytest.approx(ver.eer(warped, labels))
    assert ver.roc_auc(scores, labels) == pytest.approx(ver.roc_auc(warped, labels))
    assert ver.best_threshold(scores, labels)[1] == pytest.approx(ver.best_threshold(warped, labels)[1])
    # midpoint thresholds commute with affine maps only
    a = ver.folded_accuracy(scores, labels, folds).per_fold
    b = ver.folded_accuracy(2.0 * scores + 1.0, labels, folds).per_fold  # exact in floating point
    assert a == pytest.approx(b)
    tars = [ver.tar_at_far(scores, labels, f)[0] for f in (0.0, 0.1, 0.5, 1.0)]
    assert tars == sorted(tars) and tars[-1] == 1.0

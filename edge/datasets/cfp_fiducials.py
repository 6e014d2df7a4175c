"""CFP's 30 hand-marked fiducials as iBUG 300-W 68-point landmarks.

CFP's ``Readme.txt`` says only "Frontal and Profile fiducials (30 points)": it names no point.
The scheme below was read off the points drawn on frontal and profile photos (both facing
directions) and checked against the shipped PIPNet's 68 points on 50 frontal and 50 profile
photos of folds 1-8 (never fold 9). The 30 points mark ONE half of the face, the same half in
both views:

==========  ================================================================================
CFP index   what it marks (on the marked half)
==========  ================================================================================
0-8         jaw contour, from the ear (0) down to the chin (8)
9-11        brow: outer end (9), top middle (10), inner end (11)
12-17       eye: outer corner (12), upper lid outer (13) and inner (14), inner corner (15),
            then two lower-lid points whose ORDER DIFFERS BY VIEW: frontal 16 under 14 and
            17 under 13 (on round from the inner corner, as iBUG's 40, 41); profile 16 under 13, 17 under 14
            (1572 of the 1600 profiles of folds 1-8; none of their 4000 frontal photos)
18-21       nose bridge, from the nasion (18) to the nose tip (21)
22-24       nose base: its centre/subnasale (22), the nostril (23), the outer wing (24)
25-29       mouth: corner (25), upper lip top (26), upper lip inner edge (27), lower lip
            bottom (28), lower lip inner edge (29) -- 26-29 on the face's midline
==========  ================================================================================

Which half: on every CFP frontal photo (4000 of 4000 in folds 1-8) the marked half is the
image-left one, i.e. the SUBJECT'S RIGHT side (one eye, one brow, half the jaw and mouth; the
other eye is not marked). On a profile it is the visible side: the subject's right when the
face looks toward image right, the subject's left when it looks toward image left (folds 1-8
have both: 776 right, 824 left). :func:`facing` tells the two apart from the points
themselves, and the 68-point index of a point on the subject's left side is the mirror
(:data:`MIRROR_68`) of its right-side twin. The tables below are written for the subject's right side (facing "right").

Measured agreement (mean over photos of |fiducial - PIPNet twin| / fiducial-box diagonal; box
= tight box of the 30 points, which on a frontal photo covers half the face):

- frontal, 50 photos: jaw 0-8 0.045 0.042 0.044 0.042 0.038 0.032 0.029 0.028 0.030;
  brow 0.033 0.023 0.029; eye 0.022 0.019 0.017 0.017 0.018 0.022; bridge 0.017 0.017 0.019
  0.021; nose base 0.021 0.022 0.027; mouth (25->60) 0.021, 0.020 0.019 0.024 0.023. For every
  pair the twin is the nearest of PIPNet's 68 points.
- profile, 50 photos (25 each way; PIPNet itself is weaker there): eye 0.036-0.045 (with the
  lower lid swapped; the frontal order would give 0.053 and 0.065), bridge 0.051-0.060, nose
  base 0.044-0.048, brow 10/11 0.052/0.057, mouth 0.038-0.058, chin 0.083, jaw 0-7 0.075-0.119.

``tests/test_cfp_fiducials.py`` checks the table on 20 other frontal photos and 20 profiles.
"""

from __future__ import annotations

import numpy as np

from edge.geometry.landmarks68 import MIRROR_68, NUM_POINTS

N_FIDUCIALS = 30
VIEWS = ("frontal", "profile")
FACINGS = ("left", "right")

# CFP fiducial index -> iBUG-68 index on the subject's RIGHT side (the marked half of a frontal
# photo; a profile facing image right). None: no point of the 68 is its twin on that view.
FRONTAL_TO_IBUG68: tuple[int | None, ...] = (
    # jaw 0-8 -> 0-8: CFP's half contour has iBUG's nine points (ear to chin), each the nearest
    # of PIPNet's 68 with a wide margin (next nearest >= 0.10 away); no shift along the jaw
    # (mean along-contour offset <= 0.012 of the diagonal).
    0, 1, 2, 3, 4, 5, 6, 7, 8,
    # brow: outer end, top middle, inner end -> 17, 19, 21 (iBUG's brow has five points).
    17, 19, 21,
    # eye: outer corner, upper lid x2, inner corner, lower lid (under 14, under 13).
    36, 37, 38, 39, 40, 41,
    # nose bridge, nasion to tip.
    27, 28, 29, 30,
    # nose base: centre (33), nostril (32), outer wing (31).
    33, 32, 31,
    # mouth. 25 is the commissure, where the lips meet: iBUG's inner corner 60 (0.021 away)
    # rather than the outer-lip corner 48 (0.031 away; PIPNet's 48 lies a mean 0.024 of the
    # diagonal further out along the mouth line, open and closed mouths alike).
    60, 51, 62, 57, 66,
)  # fmt: skip

PROFILE_TO_IBUG68: tuple[int | None, ...] = (
    # jaw 0-7 dropped: on a profile CFP's contour runs ear -> chin over a shorter stretch than
    # iBUG's (PIPNet's 0 lies a mean 0.065 of the diagonal further from the chin than CFP's
    # 0, its 7 0.045 closer; the points are ~0.12 apart), so the position along the jaw is a
    # convention, not a landmark: 0 is as near PIPNet's 1 as its 0 (0.119 both), 7 nearly as
    # near 6 (0.094) as 7 (0.085). The chin (8) has no such offset (0.006) and is kept.
    None, None, None, None, None, None, None, None, 8,
    # brow: the outer end (9) is where the brow turns away round the temple; PIPNet's 17 and
    # 18 are equally near (0.076, 0.078), so no twin. Top middle and inner end as frontal.
    None, 19, 21,
    # eye: the lower lid is marked the other way round on profiles (16 under 13, 17 under 14).
    36, 37, 38, 39, 41, 40,
    27, 28, 29, 30,
    33, 32, 31,
    60, 51, 62, 57, 66,
)  # fmt: skip

TABLES: dict[str, tuple[int | None, ...]] = {"frontal": FRONTAL_TO_IBUG68, "profile": PROFILE_TO_IBUG68}

# The outline of the marked half, in order: jaw from ear to chin, up the midline (lower lip,
# mouth, nose base, tip, bridge), then back along the brow from its inner to its outer end.
# Its orientation (signed area) flips with a mirror image but not with in-plane rotation, so a
# strongly rolled or tilted head is still told apart (the nose-vs-eye x order gets 3 CFP
# profiles of folds 1-8 wrong; this rule and "nose tip right of the ear-end of the jaw" agree on
# all 5600 photos there).
_OUTLINE = (0, 1, 2, 3, 4, 5, 6, 7, 8, 28, 29, 27, 26, 22, 21, 20, 19, 18, 11, 10, 9)


def _check_view(view: str) -> str:
    if view not in VIEWS:
        raise ValueError(f"view: expected one of {VIEWS}, got {view!r}")
    return view


def _check_points(points30) -> np.ndarray:
    points = np.asarray(points30, dtype=np.float64)
    if points.shape != (N_FIDUCIALS, 2):
        raise ValueError(f"points30: expected shape ({N_FIDUCIALS}, 2) (x, y pixels), got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points30: expected 30 finite (x, y) points, found NaN or inf")
    return points


def facing(points30) -> str:
    """Which way the marked half of the face looks in the image: "right" or "left".

    Read from the signed area of the half-face outline (``_OUTLINE``) in image coordinates (y
    down): negative is "right". For a profile it is the direction the nose points. For a
    frontal photo it is the direction from the marked half toward the face's midline: every
    CFP frontal photo gives "right" (the image-left half is marked), a mirrored one "left".
    "right" means the marked side is the subject's right side. Over the 5600 photos of CFP folds 1-8
    the outline's |area| / (width x height of its box) is >= 0.49, so the sign is never close.
    """
    points = _check_points(points30)[list(_OUTLINE)]
    x, y = points[:, 0], points[:, 1]
    area = 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
    span = points.max(axis=0) - points.min(axis=0)
    if abs(area) <= 1e-6 * max(float(span[0] * span[1]), 1e-12):
        raise ValueError("points30: the fiducials' outline has no area; cannot tell which way the face looks")
    return "right" if area < 0 else "left"


def ibug68_table(view: str, face_facing: str = "right") -> np.ndarray:
    """(30,) int64: the iBUG-68 index of each CFP fiducial on ``view`` when the marked half
    looks toward ``face_facing``; -1 where the fiducial has no twin. "left" mirrors the
    indices (subject's left side)."""
    table = np.array([-1 if j is None else j for j in TABLES[_check_view(view)]], dtype=np.int64)
    if face_facing not in FACINGS:
        raise ValueError(f"face_facing: expected one of {FACINGS}, got {face_facing!r}")
    if face_facing == "left":
        mapped = table >= 0
        table[mapped] = MIRROR_68[table[mapped]]
    return table


def fiducials_to_ibug68(points30, view: str) -> tuple[np.ndarray, np.ndarray]:
    """CFP's 30 fiducials of one photo placed in the iBUG 68-point scheme.

    ``points30``: (30, 2) x, y pixels (:func:`edge.datasets.cfp.read_fiducials`); ``view``:
    "frontal" or "profile". The side is read from the points (:func:`facing`), so a mirrored
    photo's points map to the mirrored indices. Returns ``(points68, mask)``: (68, 2) float32
    with NaN where no fiducial maps, and (68,) bool, True where a fiducial was placed (all 30 fiducials
    on a frontal photo, 21 on a profile).
    """
    _check_view(view)
    points = _check_points(points30)
    table = ibug68_table(view, facing(points))
    out = np.full((NUM_POINTS, 2), np.nan, dtype=np.float32)
    mask = np.zeros(NUM_POINTS, dtype=bool)
    mapped = table >= 0
    out[table[mapped]] = points[mapped]
    mask[table[mapped]] = True
    return out, mask

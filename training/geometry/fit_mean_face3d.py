"""Fit the 3D mean face used for head pose from real 300-W landmarks.

Structure from motion by factorisation (Tomasi-Kanade) under scaled orthography: the 2D
landmarks of many faces seen at different poses form a rank-3 matrix, whose factors are the
per-face projections and one 3D shape, fixed up to an affine map. The metric constraints
(each projection's two rows are orthogonal and of equal length) remove the affine part,
leaving a rotation and a reflection, which the face's own anatomy fixes: x from the
image-left eye to the image-right eye, y down from eyes to mouth, z away from the camera, the
nose tip in front. Every face is used with its mirror image, and the result is made exactly
mirror-symmetric, so that head pose of a flipped face is the negated pose.

    python -m training.geometry.fit_mean_face3d [--root 300W_TRAIN] [--out edge/geometry/mean_face3d_ibug68.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edge.geometry import landmarks68 as lm
from training.run_folder import write_json

# Outer-eye-corner distance of an adult face, used only to give the model millimetre units
# (it sets the unit of the translation solvePnP returns, never the angles).
OUTER_CANTHAL_MM = 90.0


# Factorisation points: everything but the jaw contour, which slides round the face as it
# turns (annotators follow the visible outline) and, treated as rigid, makes the face about
# 1.5x too deep. The contour is placed afterwards from near-frontal faces only.
RIGID_FIT_POINTS = tuple(range(17, 68))
CONTOUR_MAX_YAW_DEG = 20.0


def _sym_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Coefficients g with a @ L @ b == g @ [L11, L12, L13, L22, L23, L33] for symmetric L."""
    return np.stack(
        [
            a[:, 0] * b[:, 0],
            a[:, 0] * b[:, 1] + a[:, 1] * b[:, 0],
            a[:, 0] * b[:, 2] + a[:, 2] * b[:, 0],
            a[:, 1] * b[:, 1],
            a[:, 1] * b[:, 2] + a[:, 2] * b[:, 1],
            a[:, 2] * b[:, 2],
        ],
        axis=1,
    )


def factorise(shapes: np.ndarray, rigid: tuple[int, ...] = RIGID_FIT_POINTS) -> tuple[np.ndarray, float]:
    """3D shape (68, 3) from (F, 68, 2) landmark sets; also the rank-3 relative residual.

    The ``rigid`` points give the projections; every other point is then triangulated by
    least squares from the faces whose yaw is under CONTOUR_MAX_YAW_DEG.
    """
    x = np.asarray(shapes, dtype=np.float64)
    rigid_idx = list(rigid)
    x = x - x[:, rigid_idx].mean(axis=1, keepdims=True)
    rms = np.sqrt((x[:, rigid_idx] ** 2).sum(axis=(1, 2)) / len(rigid_idx))
    x = x / rms[:, None, None]
    n_faces, n_points, _ = x.shape
    w = x[:, rigid_idx].transpose(0, 2, 1).reshape(2 * n_faces, len(rigid_idx))
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    residual = float(np.sqrt((s[3:] ** 2).sum() / (s**2).sum()))
    motion = u[:, :3] * np.sqrt(s[:3])

    rows_x, rows_y = motion[0::2], motion[1::2]
    constraints = np.concatenate([_sym_row(rows_x, rows_x) - _sym_row(rows_y, rows_y), _sym_row(rows_x, rows_y)])
    l_vec = np.linalg.svd(constraints)[2][-1]
    l_mat = np.array([[l_vec[0], l_vec[1], l_vec[2]], [l_vec[1], l_vec[3], l_vec[4]], [l_vec[2], l_vec[4], l_vec[5]]])
    if np.trace(l_mat) < 0:
        l_mat = -l_mat
    evals, evecs = np.linalg.eigh(l_mat)
    if evals.min() <= 0:
        raise RuntimeError(f"metric upgrade failed: the fitted Gram matrix is not positive definite ({evals})")
    motion = motion @ (evecs * np.sqrt(evals))  # now each face's two rows are orthogonal, equal length

    # Every point (rigid ones included, which changes them little) by least squares over
    # near-frontal faces: yaw from the angle of each face's viewing axis.
    rx, ry = motion[0::2], motion[1::2]
    view = np.cross(rx, ry)
    view /= np.linalg.norm(view, axis=1, keepdims=True)
    frontal_ref = np.median(np.sign(view[:, 2:3]) * view, axis=0)
    frontal_ref /= np.linalg.norm(frontal_ref)
    cos_angle = np.abs(view @ frontal_ref)
    near_frontal = cos_angle > np.cos(np.radians(CONTOUR_MAX_YAW_DEG))
    w_all = x.transpose(0, 2, 1).reshape(2 * n_faces, n_points)
    shape = np.linalg.lstsq(motion, w_all, rcond=None)[0].T
    sel = np.repeat(near_frontal, 2)
    others = sorted(set(range(n_points)) - set(rigid_idx))
    if others:
        shape[others] = np.linalg.lstsq(motion[sel], w_all[sel][:, others], rcond=None)[0].T
    return shape, residual


def canonical_frame(shape3d: np.ndarray) -> np.ndarray:
    """Rotate (and if needed reflect) so x runs image-left to image-right eye, y down, z away."""
    p = shape3d - shape3d.mean(axis=0)
    eye_l = p[list(lm.EYE_IMAGE_LEFT)].mean(axis=0)
    eye_r = p[list(lm.EYE_IMAGE_RIGHT)].mean(axis=0)
    mouth = p[list(lm.MOUTH)].mean(axis=0)
    ex = eye_r - eye_l
    ex /= np.linalg.norm(ex)
    down = mouth - (eye_l + eye_r) / 2
    ey = down - ex * (down @ ex)
    ey /= np.linalg.norm(ey)
    ez = np.cross(ex, ey)
    out = p @ np.stack([ex, ey, ez], axis=1)
    eyes_z = out[list(lm.EYE_IMAGE_LEFT + lm.EYE_IMAGE_RIGHT), 2].mean()
    if out[lm.NOSE_TIP, 2] > eyes_z:  # the nose must stand towards the camera (smaller z)
        out[:, 2] = -out[:, 2]
    return out


def symmetrise(shape3d: np.ndarray) -> np.ndarray:
    mirrored = shape3d[lm.MIRROR_68] * np.array([-1.0, 1.0, 1.0])
    return (shape3d + mirrored) / 2


def fit_mean_face(shapes2d: np.ndarray) -> tuple[np.ndarray, dict]:
    shapes2d = np.asarray(shapes2d, dtype=np.float64)
    mirrored = shapes2d[:, lm.MIRROR_68] * np.array([-1.0, 1.0])
    raw, residual = factorise(np.concatenate([shapes2d, mirrored]))
    face = symmetrise(canonical_frame(raw))
    a, b = lm.OUTER_EYE_CORNERS
    face *= OUTER_CANTHAL_MM / np.linalg.norm(face[a] - face[b])
    face -= face[list(lm.EYE_IMAGE_LEFT + lm.EYE_IMAGE_RIGHT)].mean(axis=0) * np.array([1.0, 1.0, 0.0])
    stats = {
        "faces": int(len(shapes2d)),
        "rank3_relative_residual": round(residual, 4),
        "contour_from_faces_under_yaw_deg": CONTOUR_MAX_YAW_DEG,
        "nose_tip_depth_mm": round(float(face[list(lm.OUTER_EYE_CORNERS), 2].mean() - face[lm.NOSE_TIP, 2]), 2),
    }
    return face, stats


def main(argv: list[str] | None = None) -> int:
    from edge.datasets.pts import read_pts
    from edge.datasets.root import require_data_root
    from edge.geometry.headpose import MEAN_FACE_PATH

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="folder searched for .pts files (default: 300w/train)")
    parser.add_argument("--out", type=Path, default=MEAN_FACE_PATH)
    args = parser.parse_args(argv)
    root = args.root or require_data_root("300w/train")
    files = sorted(root.rglob("*.pts"))
    if not files:
        print(f"error: no .pts files under {root}", file=sys.stderr)
        return 2
    shapes = np.stack([read_pts(f) for f in files])
    face, stats = fit_mean_face(shapes)
    payload = {
        "scheme": "ibug68",
        "units": "mm (scaled so the outer eye corners are 90 mm apart)",
        "axes": "x: image-left eye -> image-right eye, y: down, z: away from the camera",
        "source": f"factorisation of {stats['faces']} real 300-W training faces and their mirror images",
        "fit": stats,
        "points": np.round(face, 3).tolist(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, payload)
    print(json.dumps({"out": str(args.out), **stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

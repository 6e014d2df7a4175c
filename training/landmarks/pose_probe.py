"""Which camera model the head-pose fit assumes, and what the pose check then reads.

    python -m training.landmarks.pose_probe (--model FILE | --fiducials) [--cfp-root DIR]
                                            [--folds 8] [--focal 1 2 3 5] [--json OUT]

The device's head pose (:mod:`edge.geometry.headpose`) fits the 3D mean face with a pinhole
camera whose focal length is the image's larger side. The mean face itself was fitted under
scaled orthography (``training.geometry.fit_mean_face3d``), and a CFP photo is a crop around the
face, where that focal length puts the camera about one face width away. This probe runs the
same points (the device chain's, or CFP's hand-marked fiducials) through the same pose points
with the focal length scaled by each ``--focal`` factor and under scaled orthography, and
reports for each: the pose check (frontal photos at |yaw| <= 20, profiles at |yaw| >= 45), the
|yaw| percentiles, and how well |yaw| ranks profiles above frontal photos (AUC: the share of
(profile, frontal) pairs where the profile reads the larger |yaw|).

An AUC of 1 with a failed pose check means the points order the photos right and the fit's
angle scale is what is off. This is a measurement tool; the device's fit is unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from edge.geometry.headpose import POSE_POINTS, angles_from_rotation, head_pose_of_known_points, mean_face_3d
from training.landmarks.posecheck import FRONTAL_MAX_YAW, PROFILE_MIN_YAW, fiducial_points, photo_points


def pinhole_yaw(points: np.ndarray, image_size: tuple[int, int], focal_scale: float) -> float:
    """|yaw| of the device's pinhole fit on the known pose points, with the focal length at
    ``focal_scale`` x the larger image side (the device's assumption at 1); NaN where it fails."""
    try:
        return abs(head_pose_of_known_points(points, image_size, focal_scale=focal_scale).yaw)
    except ValueError:
        return float("nan")


def orthographic_yaw(points: np.ndarray, idx: list[int], iterations: int = 20) -> float:
    """|yaw| of a scaled-orthographic fit: points ~ s * R[:2] @ X + t, least squares over R and s
    (Levenberg-Marquardt from the affine solution and from its depth-reversed twin)."""
    obj, img = mean_face_3d()[idx], points[idx]
    obj_c, img_c = obj - obj.mean(axis=0), img - img.mean(axis=0)
    affine = np.linalg.lstsq(obj_c, img_c, rcond=None)[0].T  # (2, 3)
    u, sv, vt = np.linalg.svd(affine, full_matrices=False)
    rows = u @ vt
    start = np.vstack([rows, np.cross(rows[0], rows[1])])
    flip = np.diag([1.0, 1.0, -1.0])

    def residual(p: np.ndarray) -> np.ndarray:
        rot = cv2.Rodrigues(p[:3].reshape(3, 1))[0]
        return (np.exp(p[3]) * obj_c @ rot[:2].T - img_c).ravel()

    best = None
    for rot0 in (start, flip @ start @ flip):  # the depth-reversal ambiguity of orthography
        p = np.r_[cv2.Rodrigues(rot0)[0].ravel(), np.log(sv.mean())]
        r, damping = residual(p), 1e-3
        for _ in range(iterations):
            jac = np.stack([(residual(p + d) - r) / 1e-6 for d in np.eye(4) * 1e-6], axis=1)
            a, g = jac.T @ jac, jac.T @ r
            step = np.linalg.solve(a + damping * np.diag(np.diag(a) + 1e-9), -g)
            trial = residual(p + step)
            if trial @ trial < r @ r:
                p, r, damping = p + step, trial, damping * 0.3
            else:
                damping *= 10
        if best is None or r @ r < best[0]:
            best = (r @ r, p)
    return abs(angles_from_rotation(cv2.Rodrigues(best[1][:3].reshape(3, 1))[0])[0])


def view_points(photos, landmarker, progress: bool = True) -> list[tuple[np.ndarray, tuple[int, int]] | None]:
    """(68, 2) points (NaN where unknown) and the image size per photo: the device chain's with a
    landmarker (one pass), CFP's fiducials mapped to the 68 scheme without one; None where no
    face was found."""
    if landmarker is None:
        return fiducial_points(photos, progress)
    return photo_points(landmarker, photos, progress=progress, refine=0)


def probe(frontal: list, profile: list, focal_scales: tuple[float, ...]) -> dict:
    """The pose check, |yaw| percentiles and AUC for each camera model, from (points, size) lists."""
    cameras = [(f"pinhole, focal {k:g} x image side", k) for k in focal_scales] + [("scaled orthography", None)]
    report = {}
    for name, k in cameras:
        yaws = {}
        for view, items in (("frontal", frontal), ("profile", profile)):
            values = []
            for item in items:
                if item is None:
                    continue
                points, size = item
                idx = [i for i in POSE_POINTS if np.isfinite(points[i]).all()]
                if len(idx) < 6:
                    continue
                values.append(pinhole_yaw(points, size, k) if k is not None else orthographic_yaw(points, idx))
            yaws[view] = np.array([v for v in values if np.isfinite(v)])
        fr, pr = yaws["frontal"], yaws["profile"]
        report[name] = {
            "frontal_photos": len(frontal),
            "profile_photos": len(profile),
            f"frontal_share_abs_yaw_le_{FRONTAL_MAX_YAW:g}": float(
                (fr <= FRONTAL_MAX_YAW).sum() / max(len(frontal), 1)
            ),
            f"profile_share_abs_yaw_ge_{PROFILE_MIN_YAW:g}": float(
                (pr >= PROFILE_MIN_YAW).sum() / max(len(profile), 1)
            ),
            "frontal_abs_yaw_percentiles_50_99_100": [round(float(v), 1) for v in np.percentile(fr, [50, 99, 100])]
            if fr.size
            else [],
            "profile_abs_yaw_percentiles_0_10_50": [round(float(v), 1) for v in np.percentile(pr, [0, 10, 50])]
            if pr.size
            else [],
            "auc_profile_reads_more_turned": float((pr[:, None] > fr[None, :]).mean()) if fr.size and pr.size else None,
        }
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.landmarks.pose_probe", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="landmark model (.onnx/.tflite/.pt), one pass from the detector's box")
    src.add_argument("--fiducials", action="store_true", help="CFP's hand-marked points instead of a model's")
    p.add_argument("--cfp-root", default=None, help="CFP-layout folder (default: the data root's cfp/)")
    p.add_argument("--folds", default="8")
    p.add_argument("--focal", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0], help="focal-length factors")
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    try:
        from edge.datasets.cfp import cfp_photos, cfp_root, fold_identities, parse_folds

        if any(k <= 0 for k in args.focal):
            raise ValueError(f"--focal: expected factors > 0, got {args.focal}")
        root = cfp_root(args.cfp_root)
        folds = parse_folds(args.folds)
        ids = [i for f in folds for i in fold_identities(f)]
        landmarker = None
        if args.model:
            from training.landmarks.evalcli import load_landmarker

            landmarker = load_landmarker(args.model, args.threads)
        views = {v: cfp_photos(root, identities=ids, views=(v,)) for v in ("frontal", "profile")}
        if not any(views.values()):
            raise ValueError(f"--cfp-root {root}: no photos of fold(s) {args.folds}")
    except (ValueError, FileNotFoundError) as err:
        print(f"pose_probe: {err}", file=sys.stderr)
        return 2
    points = {v: view_points(photos, landmarker) for v, photos in views.items()}
    report = {
        "points": f"model {args.model}, 1 pass" if args.model else "CFP fiducials mapped to the 68 points",
        "folds": list(folds),
        "cameras": probe(points["frontal"], points["profile"], tuple(args.focal)),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

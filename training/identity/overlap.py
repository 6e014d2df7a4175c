"""Which LFW people are probably also CFP test people? CFP has no names, so ask a face model.

    python -m training.identity.overlap --folds 9 --out training/identity/lfw_overlap_cfp_fold9.json

dlib's face-recognition ResNet (trained elsewhere on millions of faces; 99.4% on LFW) embeds
every frontal photo of the given CFP folds (mean per person) and two photos of every LFW person
with at least two photos (the people identity training uses). An LFW person whose two photos are
both within ``--max-distance`` of one CFP person's mean (Euclidean distance of unit-normalised
descriptors) is listed. Measured on folds 8-9: unrelated people sit at 0.40-0.50 (normalised
dlib descriptors bunch up), true matches below ~0.34 (checked against CFP's alphabetical
numbering of people by first name), hence 0.36. Training recipes exclude the listed
LFW people (``exclude_lfw_people``), so a CFP test person is never trained on under an LFW name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.core.faces import prepare_faces
from edge.datasets.cfp import cfp_photos, fold_identities, parse_folds
from edge.datasets.lfw import lfw_people
from edge.datasets.root import require_data_root
from edge.geometry.align import DLIB_150
from edge.imageio import read_image_bgr
from training.identity.prepare import ANNOTATION_REFINE, LFW_CROP, cfp_fiducial_crop


def _embed(recognizer, landmarker, path: Path, box: np.ndarray) -> np.ndarray | None:
    image = read_image_bgr(path)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    face = prepare_faces(image, [box], landmarker, DLIB_150, refine=ANNOTATION_REFINE)[0]
    return None if face is None else recognizer.embed(image, [face])[0]


def find_overlap(folds, max_distance: float = 0.5, data_root=None) -> dict:
    from training.identity.baseline_dlib import DlibFaceRecognizer
    from training.identity.evaluate import default_landmark_model
    from training.landmarks.evalcli import load_landmarker

    root = Path(data_root) if data_root else require_data_root()
    recognizer = DlibFaceRecognizer()
    landmarker = load_landmarker(default_landmark_model())
    people: dict[int, list[np.ndarray]] = {}
    ids = [i for f in folds for i in fold_identities(f)]
    for photo in tqdm(cfp_photos(root / "cfp", identities=ids, views=("frontal",)), desc="CFP", mininterval=10):
        vec = _embed(recognizer, landmarker, photo.image_path, cfp_fiducial_crop(photo))
        if vec is not None:
            people.setdefault(photo.identity, []).append(vec)
    # dlib's descriptors are compared by Euclidean distance; ours are unit vectors scaled back by
    # dlib's typical norm (~1), so the distance of unit vectors is used, a slightly stricter test.
    cfp_ids = sorted(people)
    means = np.stack([np.mean(people[i], axis=0) for i in cfp_ids])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    lfw = {n: p for n, p in lfw_people(root / "lfw_gray").items() if len(p) >= 2}
    found = []
    for name, paths in tqdm(lfw.items(), desc="LFW", mininterval=10):
        vecs = [v for v in (_embed(recognizer, landmarker, p, LFW_CROP) for p in paths[:2]) if v is not None]
        if len(vecs) < 2:
            continue
        d = np.linalg.norm(np.stack(vecs)[:, None, :] - means[None, :, :], axis=2)  # (2, P)
        worst = d.max(axis=0)
        k = int(np.argmin(worst))
        if worst[k] < max_distance:
            found.append({"lfw": name, "cfp_identity": cfp_ids[k], "distance": round(float(worst[k]), 3)})
    return {
        "cfp_folds": list(folds),
        "max_distance": max_distance,
        "method": "dlib_face_recognition_resnet_model_v1, 2 LFW photos vs the CFP person's mean frontal descriptor",
        "lfw_people_checked": len(lfw),
        "matches": sorted(found, key=lambda m: m["distance"]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.identity.overlap", description=__doc__.split("\n\n")[0])
    p.add_argument("--folds", default="9")
    p.add_argument("--max-distance", type=float, default=0.36)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    report = find_overlap(parse_folds(args.folds), args.max_distance, args.data_root)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{len(report['matches'])} LFW people match a CFP fold {args.folds} person: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

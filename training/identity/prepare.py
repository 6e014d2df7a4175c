"""Aligned-face cache for identity training: every usable face of CFP, LFW and ORL, prepared by
the device's own chain (:mod:`edge.core.faces`: PIPNet landmarks, shared head pose, 5-point
alignment to 112x112), with the pose signal PoseFace trains on.

    python -m training.identity prepare --out CACHE [--alignment arcface_5|dlib_68] [--size S]
           [--data-root DIR] [--landmark-model FILE]

The crop is the one the model to be trained expects (``edge.geometry.align.AlignmentSpec``):
ArcFace 5-point 112x112 for the MobileFaceNet, dlib's 68-point chip geometry at 150x150 for the
imported dlib ResNet. The cache records it (``summary.json`` and each ``.npz``'s ``alignment``),
and training writes it into the exported model's metadata.

Face boxes (the starting point only; the landmarks refine it):
- CFP: the box of the photo's 30 hand-marked fiducials ("oracle" box; frontal and profile).
- LFW (grayscale, 176x176 central crops): the fixed central face box of the LFW frame.
- ORL (92x112, the face fills the photo): the whole photo.

One ``<source>.npz`` per source: ``images`` (N, S, S, 3) uint8 BGR, ``person`` (N,) str
(``cfp/001``, ``lfw/Name``, ``orl/s1``), ``fold`` (N,) CFP protocol fold (0 elsewhere),
``profile`` (N,) bool (CFP profile photo), ``pose`` (N, 3) yaw/pitch/roll degrees,
``landmarks`` (N, 68, 2) in aligned pixels, ``path`` (N,) photo path relative to the data root.
Photos whose landmarks give no head pose are listed in ``skipped.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.core.faces import prepare_faces, rough_crop_box
from edge.datasets.cfp import CFP_FOLD_SIZE, cfp_photos, fiducial_box, read_fiducials
from edge.datasets.lfw import lfw_people
from edge.datasets.orl import orl_photos
from edge.datasets.root import require_data_root
from edge.geometry.align import ARCFACE_112, AlignmentSpec
from edge.imageio import read_image_bgr

LFW_FACE_BOX = np.array([30.5, 30.5, 145.5, 145.5])  # the central ~115 px of the 176 px frame
LFW_CROP = rough_crop_box(LFW_FACE_BOX, 1.2)
# Landmark passes after the first crop from an annotation box (fiducials, a dataset's face box).
ANNOTATION_REFINE = 2


def cfp_fiducial_crop(photo) -> np.ndarray:
    """The first landmark crop of a CFP photo from its hand-marked fiducials (the "oracle" box):
    training's cache and every fiducial-box evaluation start from this same crop."""
    return rough_crop_box(fiducial_box(read_fiducials(photo.fiducials_path)), 1.5)


def cfp_fiducial_face(photo, landmarker, spec: AlignmentSpec, image: np.ndarray | None = None):
    """The device chain on a CFP photo from its fiducial crop, aligned as ``spec`` says
    (``edge.core.faces.PreparedFace``, or None when no head pose fits): what fiducial-box evaluation
    and int8 calibration feed."""
    image = read_image_bgr(photo.image_path) if image is None else image
    return prepare_faces(image, [cfp_fiducial_crop(photo)], landmarker, spec, refine=ANNOTATION_REFINE)[0]
SOURCES = ("cfp", "lfw", "orl")
# Sources without identities (no person labels that classes could be built from): faces that a
# student may be distilled on, never a margin head's classes. Prepared only when asked for.
UNLABELLED_SOURCES = ("w300",)


def _cfp_items(data_root: Path):
    for photo in cfp_photos(data_root / "cfp"):
        box = cfp_fiducial_crop(photo)
        fold = (photo.identity - 1) // CFP_FOLD_SIZE + 1
        yield photo.image_path, box, f"cfp/{photo.identity:03d}", fold, photo.view == "profile"


def _lfw_items(data_root: Path, min_photos: int = 2):
    for name, paths in lfw_people(data_root / "lfw_gray").items():
        if len(paths) < min_photos:
            continue
        for path in paths:
            yield path, LFW_CROP, f"lfw/{name}", 0, False


def _orl_items(data_root: Path):
    for photo in orl_photos(data_root / "orl"):
        yield photo.path, np.array([-10.0, 0.0, 102.0, 112.0]), f"orl/s{photo.subject}", 0, False


def _w300_items(data_root: Path):
    from edge.datasets.pts import read_pts
    from edge.datasets.w300 import list_300w
    from edge.geometry.landmarks68 import landmark_box

    for face in list_300w(data_root / "300w"):
        box = rough_crop_box(landmark_box(read_pts(face.pts_path)), 1.2)
        yield face.image_path, box, f"w300/{face.name}", 0, False


ITEMS = {"cfp": _cfp_items, "lfw": _lfw_items, "orl": _orl_items, "w300": _w300_items}


def prepare_source(
    source: str,
    data_root: Path,
    landmarker,
    out_dir: Path,
    spec: AlignmentSpec = ARCFACE_112,
    progress: bool = True,
    limit: int | None = None,
) -> dict:
    """Write ``out_dir/<source>.npz``; ``limit`` keeps the first N photos (tests, quick looks)."""
    items = list(ITEMS[source](data_root))[:limit]
    images, person, fold, profile, pose, landmarks, paths, skipped = [], [], [], [], [], [], [], []
    for path, box, who, k, is_profile in tqdm(items, desc=f"prepare {source}", disable=not progress, mininterval=5):
        image = read_image_bgr(path)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        face = prepare_faces(image, [box], landmarker, spec, refine=ANNOTATION_REFINE)[0]
        rel = os.path.relpath(path, data_root)
        if face is None:
            skipped.append(rel)
            continue
        images.append(face.aligned)
        person.append(who)
        fold.append(k)
        profile.append(is_profile)
        pose.append((face.yaw, face.pitch, face.roll))
        landmarks.append(face.aligned_landmarks.astype(np.float32))
        paths.append(rel)
    target = out_dir / f"{source}.npz"
    tmp = out_dir / f".{source}.tmp.npz"
    np.savez(
        tmp,
        images=np.stack(images),
        person=np.array(person),
        fold=np.array(fold, dtype=np.int16),
        profile=np.array(profile, dtype=bool),
        pose=np.array(pose, dtype=np.float32),
        landmarks=np.stack(landmarks),
        path=np.array(paths),
        alignment=np.array(json.dumps(spec.to_dict())),
    )
    os.replace(tmp, target)
    return {"faces": len(images), "people": len(set(person)), "skipped": skipped}


def prepare_cache(
    out_dir: Path,
    data_root=None,
    landmark_model=None,
    sources=SOURCES,
    progress=True,
    spec: AlignmentSpec = ARCFACE_112,
) -> dict:
    from edge.app.enroll import LANDMARK_MODEL
    from training.landmarks.evalcli import load_landmarker

    data_root = Path(data_root) if data_root else require_data_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    landmarker = load_landmarker(Path(landmark_model or LANDMARK_MODEL))
    summary_path = out_dir / "summary.json"
    earlier = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if earlier.get("alignment", spec.to_dict()) != spec.to_dict():
        raise ValueError(f"{out_dir}: holds {earlier['alignment']} crops; prepare {spec.to_dict()} into another folder")
    summary = {
        "data_root": str(data_root),
        "landmark_model": str(landmark_model or LANDMARK_MODEL),
        "alignment": spec.to_dict(),
        "sources": dict(earlier.get("sources", {})),  # sources prepared earlier into this folder stay listed
    }
    for source in sources:
        summary["sources"][source] = prepare_source(source, data_root, landmarker, out_dir, spec, progress)
        print(f"{source}: {summary['sources'][source]['faces']} faces of {summary['sources'][source]['people']} people")
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def cache_alignment(cache: dict[str, np.ndarray]) -> AlignmentSpec:
    """The crop a loaded cache holds (a cache written before the field: ArcFace at its size)."""
    if "alignment" in cache:
        values = {json.dumps(json.loads(str(v)), sort_keys=True) for v in np.atleast_1d(cache["alignment"])}
        if len(values) != 1:
            raise ValueError(f"aligned-face cache mixes alignments: {sorted(values)}")
        return AlignmentSpec(**json.loads(values.pop()))
    return AlignmentSpec("arcface_5", int(cache["images"].shape[1]))


def load_cache(cache_dir: Path, sources=SOURCES, teacher: bool = False) -> dict[str, np.ndarray]:
    """All sources' arrays concatenated (with ``source`` added; with ``teacher``, the dlib
    teacher's ``teacher`` (N, 128) and ``teacher_ok`` (N,) too)."""
    parts = []
    for source in sources:
        path = Path(cache_dir) / f"{source}.npz"
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no aligned-face cache: run python -m training.identity prepare --out {cache_dir}"
            )
        with np.load(path) as z:
            part = {k: z[k] for k in z.files}
        if teacher:
            tpath = Path(cache_dir) / f"teacher_dlib_{source}.npz"
            if not tpath.exists():
                raise FileNotFoundError(
                    f"{tpath}: no teacher embeddings: run python -m training.identity.teacher --cache {cache_dir}"
                )
            with np.load(tpath) as z:
                part["teacher"], part["teacher_ok"] = z["embeddings"], z["ok"]
        part["source"] = np.full(len(part["person"]), source)
        part["alignment"] = np.atleast_1d(part.get("alignment", np.array(json.dumps(ARCFACE_112.to_dict()))))
        parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

"""One face box -> 68 landmarks -> head pose -> aligned crop: the chain that the device,
enrolment and identity training all run, so a face is prepared the same way everywhere.

The aligned crop is the one the identity model expects: its template and size come from the
model's metadata (:func:`alignment_for`, :class:`edge.geometry.align.AlignmentSpec`), never from
a constant here.

A face box comes from the detector (on the device, through the measured crop policy) or from
annotations (training: a fiducial box, a dataset's fixed face crop). A rough box is refined:
the landmarks found in the first crop give the landmark crop box that PIPNet was trained on
(``landmark_crop_box``), and the landmarks are predicted again there. Refinement costs one more
landmark pass and makes the result depend little on how the first box was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.geometry.align import AlignmentSpec, align_to_spec, alignment_from_meta, transform_points
from edge.geometry.headpose import head_pose
from edge.landmarks.crop import landmark_crop_box

# Landmark re-crops the device makes from a detector box (the pipeline and enrolment alike, so
# templates and probes are aligned the same way): the landmark model's own choice, recorded in its
# metadata (``extra.refine``, measured when it shipped); models without it get this.
DEVICE_REFINE = 1


def device_refine(landmarker) -> int:
    """Re-crops the device makes with this landmark model (its metadata's, else DEVICE_REFINE)."""
    return int(getattr(landmarker, "refine", DEVICE_REFINE))


@dataclass(frozen=True, eq=False)
class PreparedFace:
    """``aligned`` (S, S[, 3]) uint8 in the input image's channels; ``landmarks`` (68, 2) image
    pixels; ``aligned_landmarks`` (68, 2) the same points in aligned-crop pixels; yaw, pitch and
    roll in degrees (sign convention of :mod:`edge.geometry.headpose`); ``crop_box`` the last
    landmark crop box [x1, y1, x2, y2]."""

    aligned: np.ndarray
    landmarks: np.ndarray
    aligned_landmarks: np.ndarray
    yaw: float
    pitch: float
    roll: float
    crop_box: np.ndarray


def face_landmarks(image: np.ndarray, crop_boxes, landmarker, refine: int = 1) -> np.ndarray:
    """(N, 68, 2) landmarks in image pixels for square crop boxes, re-cropped ``refine`` times
    from the previous landmarks."""
    boxes = [np.asarray(b, dtype=np.float64) for b in crop_boxes]
    points = landmarker.predict(image, boxes)
    for _ in range(refine):
        if not len(points):
            break
        boxes = [landmark_crop_box(p) for p in points]
        points = landmarker.predict(image, boxes)
    return points


def alignment_for(runner) -> AlignmentSpec:
    """The aligned crop an identity model (an edge runner) expects, from its metadata."""
    return alignment_from_meta(runner.meta)


def faces_from_landmarks(image: np.ndarray, points, spec: AlignmentSpec) -> list[PreparedFace | None]:
    """Head pose and the ``spec`` crop for each face's (68, 2) landmarks in ``image``; None
    where the head pose cannot be fitted (degenerate landmarks)."""
    height, width = image.shape[:2]
    out: list[PreparedFace | None] = []
    for pts in points:
        try:
            pose = head_pose(pts, (width, height))
            aligned, matrix = align_to_spec(image, pts, spec)
        except ValueError:
            out.append(None)
            continue
        out.append(
            PreparedFace(
                aligned=aligned,
                landmarks=pts,
                aligned_landmarks=transform_points(pts, matrix),
                yaw=pose.yaw,
                pitch=pose.pitch,
                roll=pose.roll,
                crop_box=landmark_crop_box(pts),
            )
        )
    return out


def prepare_faces(
    image: np.ndarray, crop_boxes, landmarker, spec: AlignmentSpec, refine: int = 1
) -> list[PreparedFace | None]:
    """A :class:`PreparedFace` per crop box of ``image`` (uint8 BGR or gray), all faces in one
    landmark batch, aligned as ``spec`` says; None where the head pose cannot be fitted."""
    return faces_from_landmarks(image, face_landmarks(image, crop_boxes, landmarker, refine), spec)


def rough_crop_box(face_box, scale: float = 1.5) -> np.ndarray:
    """A generous square crop around any face box (fiducial box, dataset crop): its centre,
    ``scale`` x its larger side. Only a starting point: :func:`face_landmarks` refines it."""
    x1, y1, x2, y2 = np.asarray(face_box, dtype=np.float64)
    side = max(x2 - x1, y2 - y1) * scale
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def model_flips(runner) -> bool:
    """Whether an identity model embeds with test-time flip (its metadata's
    ``extra.test_time_flip``, set where it was measured to help)."""
    return bool(runner.meta.extra.get("test_time_flip", False)) if isinstance(runner.meta.extra, dict) else False


def embed_batch(runner, aligned_faces, batch_size: int = 32, flip: bool | None = None) -> np.ndarray:
    """(N, D) float32 unit embeddings of aligned face crops: the identity model's first output,
    L2-normalised (cosine similarity is then a dot product). ``flip``: test-time flip, the sum
    of the embeddings of the crop and its mirror image, then normalised (twice the model runs);
    None: as the model's metadata says (:func:`model_flips`)."""
    from edge.runtime.preprocess import preprocess

    flip = model_flips(runner) if flip is None else flip

    name = runner.meta.output_names[0]
    out = []
    for i in range(0, len(aligned_faces), batch_size):
        chunk = list(aligned_faces[i : i + batch_size])
        raw = np.asarray(runner.run(preprocess(chunk, runner.meta))[name], dtype=np.float64).reshape(len(chunk), -1)
        if flip:
            mirrored = [np.ascontiguousarray(face[:, ::-1]) for face in chunk]
            raw = raw + np.asarray(runner.run(preprocess(mirrored, runner.meta))[name], dtype=np.float64).reshape(
                len(chunk), -1
            )
        out.append(raw)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    vecs = np.concatenate(out)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    if not (np.isfinite(vecs).all() and (norms > 1e-12).all()):
        raise ValueError(f"{runner.meta.name}: embedding output is zero or not finite")
    return (vecs / norms).astype(np.float32)


def largest(detections):
    """The detection with the largest box (the person nearest the camera), or None."""
    if not detections:
        return None
    return max(detections, key=lambda d: float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])))


def largest_face_landmarks(image: np.ndarray, detector, crop_policy, landmarker, refine: int | None = None):
    """(68, 2) landmarks of a photo's largest detected face through the device chain (crop policy,
    the landmark model's re-crops unless ``refine`` says otherwise), or None when no face is found."""
    det = largest(detector.detect(image))
    if det is None:
        return None
    refine = device_refine(landmarker) if refine is None else refine
    return face_landmarks(image, [crop_policy.crop_box(det.box)], landmarker, refine=refine)[0]


def prepare_largest_face(
    image: np.ndarray, detector, crop_policy, landmarker, spec: AlignmentSpec, refine: int | None = None
):
    """The device chain on a photo's largest detected face: a :class:`PreparedFace` aligned as
    ``spec`` says, or None when no face is found (or its landmarks give no pose)."""
    det = largest(detector.detect(image))
    if det is None:
        return None
    refine = device_refine(landmarker) if refine is None else refine
    return prepare_faces(image, [crop_policy.crop_box(det.box)], landmarker, spec, refine=refine)[0]

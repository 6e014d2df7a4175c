"""Face alignment: a least-squares similarity from landmarks to a template, one per identity model.

Two templates, named in each identity model's metadata (``extra.alignment``, read by
:func:`alignment_from_meta`) so that the runtime, enrolment, calibration, training and
quantization all cut the crop the model expects and none of them hard-codes a size:

- ``arcface_5``: the five points of :func:`edge.geometry.landmarks68.five_points` onto the
  ArcFace (InsightFace) 112x112 reference positions, scaled to the crop size;
- ``dlib_68``: dlib's face-chip geometry (``get_face_chip_details`` for 68 points): the 68-point
  landmarks 27-54 and 60-64 (nose, eyes, upper lip; brows, jaw and lower lip left out) onto
  dlib's mean face, with ``padding`` (0.25 for the face-recognition ResNet's 150x150 chips)
  around it. Pixel centres follow dlib's ``extract_image_chip`` (the chip's corner pixels map to
  the corners of its rectangle), so a chip cut here matches dlib's own to a fraction of a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# The widely used ArcFace (InsightFace) 112x112 reference positions, in the order of
# landmarks68.five_points: eyes, nose tip, mouth corners (image left before image right).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template_for_size(size: int = 112) -> np.ndarray:
    """The template scaled to a square output of ``size`` pixels."""
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Umeyama's closed form; returns the 2x3 matrix M with dst ~ M @ [x, y, 1]. A reflection
    is never returned, so a mirrored face is not silently un-mirrored.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"estimate_similarity: need two (N>=2, 2) arrays, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("estimate_similarity: source points are all at one place")
    cov = d0.T @ s0 / len(src)
    u, sing, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = (sing * sign).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def alignment_matrix(five: np.ndarray, size: int = 112) -> np.ndarray:
    """2x3 matrix taking image pixels to the aligned ``size`` x ``size`` crop."""
    return estimate_similarity(np.asarray(five, dtype=np.float64).reshape(5, 2), template_for_size(size))


def align_face(image: np.ndarray, five: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp ``image`` (H, W[, C]) so the 5 points land on the template; returns (size, size[, C])."""
    m = alignment_matrix(five, size)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


# dlib's mean face (``get_face_chip_details``), x and y in [0, 1], for the 68-point landmarks
# 17..67 in order; only the indices in DLIB_68_POINTS are used (dlib leaves out the brows and
# the lower lip).
_DLIB_MEAN_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
)  # fmt: skip
_DLIB_MEAN_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
)  # fmt: skip
DLIB_68_POINTS = tuple(i for i in range(27, 68) if not (55 <= i <= 59 or 65 <= i <= 67))
TEMPLATES = ("arcface_5", "dlib_68")


@dataclass(frozen=True)
class AlignmentSpec:
    """Which template, the square crop's side in pixels, and dlib's padding (``dlib_68``)."""

    template: str = "arcface_5"
    size: int = 112
    padding: float = 0.25

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(f"alignment template {self.template!r}: expected one of {', '.join(TEMPLATES)}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 16 <= self.size <= 1024:
            raise ValueError(f"alignment size {self.size!r}: expected an integer from 16 to 1024")
        if not isinstance(self.padding, (int, float)) or not 0.0 <= float(self.padding) <= 2.0:
            raise ValueError(f"alignment padding {self.padding!r}: expected a number from 0 to 2")

    def to_dict(self) -> dict:
        out = {"template": self.template, "size": self.size}
        if self.template == "dlib_68":
            out["padding"] = float(self.padding)
        return out


ARCFACE_112 = AlignmentSpec("arcface_5", 112)
DLIB_150 = AlignmentSpec("dlib_68", 150, 0.25)


def alignment_from_meta(meta) -> AlignmentSpec:
    """The crop an identity model expects, from its metadata: ``extra.alignment`` =
    ``{"template": ..., "size": ..., "padding": ...}``; a model whose metadata predates the field
    (a string or nothing there) is ArcFace 5-point at its input width. Raises ValueError naming
    the model when the record is malformed or its size differs from the model's input."""
    value = meta.extra.get("alignment") if isinstance(meta.extra, dict) else None
    if not isinstance(value, dict):
        return AlignmentSpec("arcface_5", int(meta.input_size[0]))
    unknown = set(value) - {"template", "size", "padding"}
    if unknown:
        raise ValueError(
            f"{meta.name}: extra.alignment: unknown key {sorted(unknown)[0]!r} (known: template, size, padding)"
        )
    try:
        spec = AlignmentSpec(
            template=value.get("template", "arcface_5"),
            size=value.get("size", int(meta.input_size[0])),
            padding=value.get("padding", 0.25),
        )
    except ValueError as err:
        raise ValueError(f"{meta.name}: extra.alignment: {err}") from None
    if tuple(meta.input_size) != (spec.size, spec.size):
        raise ValueError(
            f"{meta.name}: extra.alignment.size {spec.size} differs from the model's input_size {list(meta.input_size)}"
        )
    return spec


def _dlib_chip_matrix(points68: np.ndarray, size: int, padding: float) -> np.ndarray:
    """2x3 image -> chip matrix of dlib's 68-point face chip (see the module docstring)."""
    pts = np.asarray(points68, dtype=np.float64).reshape(-1, 2)
    if len(pts) != 68:
        raise ValueError(f"dlib_68 alignment: need 68 landmarks, got {len(pts)}")
    idx = np.array(DLIB_68_POINTS)
    mean = np.stack([np.array(_DLIB_MEAN_X), np.array(_DLIB_MEAN_Y)], axis=1)[idx - 17]
    chip_pts = (padding + mean) / (2 * padding + 1) * size
    # dlib: similarity chip -> image, then the chip's rectangle (its centre, scale and angle);
    # chip pixel 0 and size-1 sit on the rectangle's edges.
    to_img = estimate_similarity(chip_pts, pts[idx])
    a, b = to_img[0, 0], to_img[1, 0]
    scale = float(np.hypot(a, b))
    if scale <= 1e-9:
        raise ValueError("dlib_68 alignment: landmarks are all at one place")
    rot = np.array([[a, -b], [b, a]]) / scale
    centre = to_img[:, :2] @ np.array([size / 2.0, size / 2.0]) + to_img[:, 2]
    step = (size * scale - 1.0) / (size - 1.0)  # image pixels per chip pixel
    half = (size - 1) / 2.0
    lin = rot.T / step
    m = np.empty((2, 3))
    m[:, :2] = lin
    m[:, 2] = half - lin @ centre
    return m


def spec_matrix(points68: np.ndarray, spec: AlignmentSpec) -> np.ndarray:
    """2x3 matrix taking image pixels to the crop ``spec`` describes, from 68 landmarks."""
    if spec.template == "dlib_68":
        return _dlib_chip_matrix(points68, spec.size, spec.padding)
    from edge.geometry.landmarks68 import five_points

    return alignment_matrix(five_points(points68), spec.size)


def warp_to_crop(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Cut the ``size`` x ``size`` crop of ``matrix`` (image -> crop) from ``image``.

    Where the crop shrinks the face by more than 1.5x, the region is first reduced with area
    averaging (as dlib reduces large regions with an image pyramid before sampling) so the crop
    is not aliased; otherwise one bilinear warp."""
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # crop pixels per image pixel
    if scale < 1.0 / 1.5:
        inv = cv2.invertAffineTransform(matrix)
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
        img_pts = transform_points(corners, inv)
        h, w = image.shape[:2]
        x1 = int(max(0, np.floor(img_pts[:, 0].min()) - 2))
        y1 = int(max(0, np.floor(img_pts[:, 1].min()) - 2))
        x2 = int(min(w, np.ceil(img_pts[:, 0].max()) + 2))
        y2 = int(min(h, np.ceil(img_pts[:, 1].max()) + 2))
        if x2 - x1 >= 2 and y2 - y1 >= 2:
            region = image[y1:y2, x1:x2]
            f = 1.0 / scale  # reduce the region to about one image pixel per crop pixel
            rw, rh = max(1, int(round((x2 - x1) / f))), max(1, int(round((y2 - y1) / f)))
            small = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
            sx, sy = rw / (x2 - x1), rh / (y2 - y1)
            # small pixel centres: u_small = (u_img - x1 + 0.5) * sx - 0.5
            to_small = np.array([[sx, 0.0, (0.5 - x1) * sx - 0.5], [0.0, sy, (0.5 - y1) * sy - 0.5]])
            back = cv2.invertAffineTransform(to_small)
            m = matrix[:, :2] @ back[:, :2]
            t = matrix[:, :2] @ back[:, 2] + matrix[:, 2]
            matrix = np.concatenate([m, t[:, None]], axis=1)
            image = small
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def align_to_spec(image: np.ndarray, points68: np.ndarray, spec: AlignmentSpec) -> tuple[np.ndarray, np.ndarray]:
    """(crop, 2x3 image -> crop matrix) for 68 landmarks and an :class:`AlignmentSpec`. The
    ArcFace crop is one bilinear warp (as the MobileFaceNet was trained); dlib's chip is
    anti-aliased as dlib's own is (:func:`warp_to_crop`)."""
    m = spec_matrix(points68, spec)
    if spec.template == "arcface_5":
        return cv2.warpAffine(image, m, (spec.size, spec.size), flags=cv2.INTER_LINEAR), m
    return warp_to_crop(image, m, spec.size), m


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (..., 2) points."""
    p = np.asarray(points, dtype=np.float64)
    return p @ matrix[:, :2].T + matrix[:, 2]

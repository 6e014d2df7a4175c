"""The iBUG 68-point landmark scheme: mirror table, 5-point reduction, named groups.

Points are (x, y) in pixels, image x to the right and y down. "Left"/"right" in names are
image sides (as seen by the viewer), not the subject's.
"""

from __future__ import annotations

import numpy as np

NUM_POINTS = 68

JAW = tuple(range(0, 17))
BROWS = tuple(range(17, 27))
NOSE = tuple(range(27, 36))
EYE_IMAGE_LEFT = tuple(range(36, 42))
EYE_IMAGE_RIGHT = tuple(range(42, 48))
MOUTH = tuple(range(48, 68))

# Outer eye corners: the 300-W inter-ocular normaliser.
OUTER_EYE_CORNERS = (36, 45)
NOSE_TIP = 30
MOUTH_CORNERS = (48, 54)


def _mirror_pairs() -> list[tuple[int, int]]:
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lip
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lip
    return pairs


def _mirror_table() -> np.ndarray:
    table = np.arange(NUM_POINTS)
    for a, b in _mirror_pairs():
        table[a], table[b] = b, a
    return table


# MIRROR_68[i] is the index that point i becomes after a horizontal flip of the image.
# Points on the symmetry axis (nose ridge 27-30, 33, chin 8, lip centres 51/57/62/66) map
# to themselves.
MIRROR_68: np.ndarray = _mirror_table()
MIRROR_68.setflags(write=False)


def mirror_landmarks(points: np.ndarray, image_width: int) -> np.ndarray:
    """Landmarks of the horizontally flipped image (``cv2.flip(image, 1)``).

    ``points``: (..., 68, 2) pixels. Pixel centres are at integer coordinates, so column x
    goes to ``image_width - 1 - x``; the indices are then permuted with :data:`MIRROR_68`
    so that point 36 is again the image-left outer eye corner.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-2:] != (NUM_POINTS, 2):
        raise ValueError(f"landmarks: expected shape (..., 68, 2), got {points.shape}")
    flipped = points.copy()
    flipped[..., 0] = (image_width - 1) - flipped[..., 0]
    return flipped[..., MIRROR_68, :]


def five_points(points68: np.ndarray) -> np.ndarray:
    """The 5 alignment points from 68: (5, 2) in ArcFace template order.

    Order: image-left eye centre, image-right eye centre, nose tip, image-left mouth
    corner, image-right mouth corner. Eye centres are the mean of the six eye-contour
    points, which is steadier than any single corner.
    """
    p = np.asarray(points68, dtype=np.float64)
    if p.shape[-2:] != (NUM_POINTS, 2):
        raise ValueError(f"landmarks: expected shape (..., 68, 2), got {p.shape}")
    return np.stack(
        [
            p[..., EYE_IMAGE_LEFT, :].mean(axis=-2),
            p[..., EYE_IMAGE_RIGHT, :].mean(axis=-2),
            p[..., NOSE_TIP, :],
            p[..., MOUTH_CORNERS[0], :],
            p[..., MOUTH_CORNERS[1], :],
        ],
        axis=-2,
    )


def inter_ocular_distance(points68: np.ndarray) -> np.ndarray:
    """Distance between the outer eye corners (36, 45), in the points' units."""
    p = np.asarray(points68, dtype=np.float64)
    a, b = OUTER_EYE_CORNERS
    return np.linalg.norm(p[..., a, :] - p[..., b, :], axis=-1)


def landmark_box(points: np.ndarray) -> np.ndarray:
    """Tight box [x1, y1, x2, y2] around the finite points."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    p = p[np.isfinite(p).all(axis=1)]
    if len(p) == 0:
        raise ValueError("landmark_box: no finite points")
    return np.concatenate([p.min(axis=0), p.max(axis=0)])

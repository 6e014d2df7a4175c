"""Image -> model input tensor, exactly as every model's metadata describes it.

Training imports this too, so a model is fed the same numbers on the workstation and on the
device.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from edge.runtime.meta import ModelMeta


def _as_three_or_one_channel(image: np.ndarray, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"preprocess: image {index}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"preprocess: image {index}: expected dtype uint8 (0..255), got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"preprocess: image {index}: expected shape (H, W) gray or (H, W, 3) BGR, got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"preprocess: image {index}: empty image of shape {image.shape}")
    return image


def resize_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area averaging when shrinking (no aliasing) and bilinear when enlarging."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    shrinking = width <= w and height <= h
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _convert_colour(image: np.ndarray, color_order: str) -> np.ndarray:
    """(H, W) gray or (H, W, 3) BGR -> (H, W, C) in the model's colour order."""
    if color_order == "GRAY":
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return image[:, :, None]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if color_order == "RGB":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def preprocess(images_bgr: Sequence[np.ndarray], meta: ModelMeta) -> np.ndarray:
    """A float32 batch in the model's layout from uint8 BGR (or gray) images of any size.

    Each image is resized to ``meta.input_size`` (no aspect-ratio keeping: letterbox first if
    the model needs it), converted to ``meta.color_order`` and normalised as
    ``(pixel - mean) / std`` on the 0..255 scale. Returns (N, H, W, C) for NHWC models and
    (N, C, H, W) for NCHW models.
    """
    if len(images_bgr) == 0:
        raise ValueError("preprocess: expected at least one image, got an empty list")
    width, height = meta.input_size
    channels = meta.channels
    batch = np.empty((len(images_bgr), height, width, channels), dtype=np.float32)
    for i, image in enumerate(images_bgr):
        image = _as_three_or_one_channel(image, i)
        image = resize_to(image, width, height)
        batch[i] = _convert_colour(image, meta.color_order)
    batch -= np.asarray(meta.normalisation.mean, dtype=np.float32)
    batch /= np.asarray(meta.normalisation.std, dtype=np.float32)
    if meta.input_layout == "NCHW":
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    return batch

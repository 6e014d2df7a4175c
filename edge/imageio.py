"""Reading images from disk with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image file is missing, empty or not decodable."""


def read_image_bgr(path: os.PathLike | str) -> np.ndarray:
    """Decode an image file to a BGR uint8 array of shape (H, W, 3); grayscale is expanded."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: image file is empty (0 bytes)")
    data = np.fromfile(str(path), dtype=np.uint8)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV asserts on some malformed headers instead of returning None
        image = None
    if image is None:
        raise ImageReadError(f"{path}: not a decodable image (expected JPEG, PNG, PGM, ...)")
    return image


def list_images(folder: os.PathLike | str) -> list[Path]:
    """Image files directly inside ``folder`` and below it, sorted, by known suffix."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

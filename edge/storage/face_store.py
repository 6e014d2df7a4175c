"""Face crops on disk, only when the config asks (``privacy.store_face_images``), with retention.

One aligned 112x112 JPEG per ``recognised`` or ``unknown_face`` event:
``<dir>/<YYYY-MM-DD>/<HHMMSS>_track<id>_<type>[_<identity>].jpg`` (UTC), written atomically
(temporary file, then rename). Crops older than ``retention_days`` are deleted at start and then
at most hourly; empty day folders go with them. Off by default: then nothing is ever written.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import cv2
import numpy as np

PRUNE_EVERY_S = 3600.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class FaceStore:
    def __init__(self, folder: Path, retention_days: int, clock=time.time):
        self.folder = Path(folder)
        self.retention_s = retention_days * 86400.0
        self.clock = clock
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)  # biometric data: the service user only
        self._pruned = 0.0
        self.saved = 0
        self.deleted = 0
        self.prune()

    def save(self, aligned: np.ndarray, track_id: int, kind: str, identity: str | None = None) -> Path:
        now = self.clock()
        stamp = time.gmtime(now)
        day = self.folder / time.strftime("%Y-%m-%d", stamp)
        day.mkdir(mode=0o700, exist_ok=True)
        name = f"{time.strftime('%H%M%S', stamp)}_track{track_id}_{kind}"
        if identity:
            name += "_" + _UNSAFE.sub("_", identity)[:64]
        path = day / f"{name}.jpg"
        ok, data = cv2.imencode(".jpg", aligned, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ValueError("face crop could not be encoded as JPEG")
        tmp = path.with_suffix(".jpg.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.tobytes())
        os.replace(tmp, path)
        self.saved += 1
        if now - self._pruned > PRUNE_EVERY_S:
            self.prune()
        return path

    def prune(self) -> int:
        """Delete crops older than the retention; returns how many went."""
        now = self.clock()
        self._pruned = now
        gone = 0
        for path in self.folder.glob("*/*.jpg"):
            try:
                if now - path.stat().st_mtime > self.retention_s:
                    path.unlink()
                    gone += 1
            except FileNotFoundError:
                continue
        for day in self.folder.iterdir():
            if day.is_dir() and not any(day.iterdir()):
                day.rmdir()
        self.deleted += gone
        return gone

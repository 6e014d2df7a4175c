"""Finite sources: a folder of still images, a video file."""

from __future__ import annotations

import os
from pathlib import Path

import cv2

from edge.imageio import IMAGE_SUFFIXES, ImageReadError, list_images, read_image_bgr
from edge.sources.base import Frame, FrameSource, SourceError, as_bgr


class FolderSource(FrameSource):
    """Every image under ``path`` (recursively), sorted by relative path, as independent stills.

    ``frame.name`` is the file's path relative to ``path`` with ``/`` separators, so events can
    name the photo. A file that cannot be decoded (empty, truncated, not an image) is skipped,
    counted in ``bad_frames`` and reported as ``last_error``; it never ends the run.
    """

    type_name = "folder"

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        super().__init__(label=str(self.path))
        self._files: list[Path] = []
        self._position = 0

    def open(self) -> None:
        if not self.path.is_dir():
            raise SourceError(f"folder source {self.path}: no such folder")
        # Listed once at open: stills added later are not picked up, which keeps a run reproducible.
        self._files = list_images(self.path)
        if not self._files:
            raise SourceError(f"folder source {self.path}: no images in it (looked for {', '.join(IMAGE_SUFFIXES)})")
        self._position = 0
        self._set_state("streaming")

    def read(self) -> Frame | None:
        while self._position < len(self._files) and not self.stopped:
            path = self._files[self._position]
            self._position += 1
            try:
                image = read_image_bgr(path)
            except (ImageReadError, OSError) as exc:
                self._note_bad_frame(str(exc))
                continue
            return self._emit(as_bgr(image, str(path)), name=path.relative_to(self.path).as_posix())
        self._set_state("ended")
        return None

    def close(self) -> None:
        self._set_state("ended")

    def health(self) -> dict:
        health = super().health()
        health["files"] = len(self._files)
        return health


class VideoSource(FrameSource):
    """A video file decoded by OpenCV; with ``loop`` it starts over at the end (soak tests, demos).

    Frames carry the file's name; their index keeps increasing across loops.
    """

    type_name = "video"

    def __init__(self, path: os.PathLike | str, loop: bool = False):
        self.path = Path(path)
        self.loop = bool(loop)
        super().__init__(label=str(self.path))
        self._capture: cv2.VideoCapture | None = None
        self._frames_this_pass = 0
        self.loops = 0

    def _open_capture(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"video source {self.path}: OpenCV cannot open it (not a video, or an unsupported codec)")
        return capture

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"video source {self.path}: no such file")
        self._capture = self._open_capture()
        self._frames_this_pass = 0
        self._set_state("streaming")

    def read(self) -> Frame | None:
        if self._capture is None:
            raise SourceError(f"video source {self.path}: read() before open()")
        while not self.stopped:
            ok, image = self._capture.read()
            if ok and image is not None:
                self._frames_this_pass += 1
                return self._emit(as_bgr(image, str(self.path)), name=self.path.name)
            # A pass that gave no frame at all would loop forever without delivering anything.
            if not self.loop or self._frames_this_pass == 0:
                break
            # Reopen rather than seek to frame 0: seeking is unreliable for some codecs/containers.
            self._capture.release()
            self._capture = self._open_capture()
            self._frames_this_pass = 0
            self.loops += 1
        self._set_state("ended")
        return None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
        self._set_state("ended")

    def health(self) -> dict:
        health = super().health()
        health["loops"] = self.loops
        return health

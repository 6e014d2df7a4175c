"""Frame sources: timestamped BGR frames from cameras, streams, video files and image folders.

``build_source(config)`` picks a type by its ``type`` key (see :data:`SOURCES`); live types are
wrapped so that a lost camera or stream is reopened with backoff and reported in ``health()``.
Importing this package loads no hardware package: picamera2 is imported when its source opens,
GStreamer is only asked of OpenCV by the Jetson source.
"""

from edge.sources.base import (
    STATES,
    Frame,
    FrameSource,
    SourceError,
    SourceUnavailableError,
    redact_url,
)
from edge.sources.reconnect import Backoff, ReconnectingSource
from edge.sources.registry import SOURCES, build_source

__all__ = [
    "STATES",
    "SOURCES",
    "Backoff",
    "Frame",
    "FrameSource",
    "ReconnectingSource",
    "SourceError",
    "SourceUnavailableError",
    "build_source",
    "redact_url",
]

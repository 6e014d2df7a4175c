"""Detectors chosen by a ``type`` key: a dict of small constructor functions.

``build_detector({"type": "blazeface", "range": "short", "score_threshold": 0.5,
"nms_iou": 0.3, "threads": 1})`` or ``build_detector({"type": "haar"})``. A new detector is
one function and one line in :data:`DETECTORS`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from edge.detect.base import FaceDetector
from edge.registry import build_from_registry

BLAZEFACE_KEYS = (
    "range",
    "score_threshold",
    "nms_iou",
    "threads",
    "margin",
    "retry_margin",
    "model_path",
)
HAAR_KEYS = (
    "scale_factor",
    "min_neighbors",
    "min_face_fraction",
    "profile",
    "max_side",
    "nms_iou",
    "retry_margin",
)


def _check_keys(kind: str, options: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"detector config: unknown key '{unknown[0]}' for type '{kind}' (known: type, {', '.join(known)})"
        )


def _build_blazeface(options: Mapping[str, Any]) -> FaceDetector:
    # Imported here so a Haar-only device never loads the model runner.
    from edge.detect.blazeface import BlazeFaceDetector

    _check_keys("blazeface", options, BLAZEFACE_KEYS)
    kwargs = dict(options)
    model_range = kwargs.pop("range", "short")
    return BlazeFaceDetector(model_range=model_range, **kwargs)


def _build_haar(options: Mapping[str, Any]) -> FaceDetector:
    from edge.detect.haar import HaarDetector

    _check_keys("haar", options, HAAR_KEYS)
    return HaarDetector(**options)


DETECTORS: dict[str, Callable[[Mapping[str, Any]], FaceDetector]] = {
    "blazeface": _build_blazeface,
    "haar": _build_haar,
}


def build_detector(config: Mapping[str, Any]) -> FaceDetector:
    """A detector from a config mapping whose ``type`` names an entry of :data:`DETECTORS`."""
    return build_from_registry(config, DETECTORS, "detector")


def add_detector_arguments(parser) -> None:
    """The detector options every detector CLI takes (--detector, --range, --score-threshold, --threads)."""
    parser.add_argument("--detector", choices=tuple(DETECTORS), default="blazeface")
    parser.add_argument("--range", choices=("short", "full"), default="short", dest="range_")
    parser.add_argument("--score-threshold", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)


def detector_config_from_args(args) -> dict[str, Any]:
    """A :func:`build_detector` config from the options of :func:`add_detector_arguments`."""
    if args.detector == "haar":
        return {"type": "haar"}
    config: dict[str, Any] = {"type": "blazeface", "range": args.range_, "threads": args.threads}
    if args.score_threshold is not None:
        config["score_threshold"] = args.score_threshold
    return config

"""Detect faces in image files and folders; write the detections as JSON.

    python -m edge.detect PATH... --json OUT [--detector blazeface|haar] [--range short|full]
        [--score-threshold X] [--threads N]

OUT maps each image to its detections, best first, in the image's pixels::

    {"<name>": [{"box": [x1, y1, x2, y2], "score": s, "keypoints": [[x, y], ...]}, ...]}

A file given directly is keyed by its file name; an image found under a given folder
(recursively) by its path relative to that folder, so names stay unique. Unreadable images
are reported one line each on stderr and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from edge.detect.registry import add_detector_arguments, build_detector, detector_config_from_args
from edge.imageio import ImageReadError, list_images, read_image_bgr


def collect_images(paths: Sequence[Path]) -> tuple[list[tuple[str, Path]], list[str]]:
    """(key, file) pairs for every image named or found under a folder, plus path errors."""
    items: list[tuple[str, Path]] = []
    errors: list[str] = []
    taken: set[str] = set()
    for path in paths:
        if path.is_dir():
            found = [(p.relative_to(path).as_posix(), p) for p in list_images(path)]
            if not found:
                errors.append(f"{path}: folder holds no image files")
        elif path.is_file():
            found = [(path.name, path)]
        else:
            errors.append(f"{path}: no such file or folder")
            continue
        for key, file in found:
            # Two inputs can share a key (a.jpg from two folders); fall back to the full path.
            key = key if key not in taken else str(file)
            taken.add(key)
            items.append((key, file))
    return items, errors


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m edge.detect",
        description="Detect faces in images (files or folders, recursively); write JSON.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--json", type=Path, required=True, dest="json_out", metavar="OUT")
    add_detector_arguments(parser)
    return parser.parse_args(argv)


def _with_progress(items: list) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, unit="image", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        detector = build_detector(detector_config_from_args(args))
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    items, errors = collect_images(args.paths)
    results: dict[str, list] = {}
    for key, path in _with_progress(items):
        try:
            image = read_image_bgr(path)
        except ImageReadError as err:
            errors.append(str(err))
            continue
        results[key] = [d.to_dict() for d in detector.detect(image)]

    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    # One image per line: readable, diffable, and still plain JSON.
    lines = [f"  {json.dumps(key)}: {json.dumps(dets)}" for key, dets in results.items()]
    text = "{\n" + ",\n".join(lines) + "\n}\n" if lines else "{}\n"
    args.json_out.write_text(text, encoding="utf-8")
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if errors:
        print(
            f"{len(results)} image(s) written to {args.json_out}, {len(errors)} failed",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

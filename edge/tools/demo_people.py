"""The recognition demo: `edge.run` recognising real people it never trained on, front and side.

    python -m edge.demo_people [--out out/demo] [--enrolled 20] [--strangers 20]
                               [--precision int8|fp32] [--embedder-model FILE] [--per-person 2]

CFP fold 9 (people 401-450: no shipped model trained on them) provides everything:
- the first ``--enrolled`` people are enrolled from ``--per-person`` frontal photos each;
- the probe stream is every other photo of theirs (the remaining frontal and all four profile
  photos), plus photos of ``--strangers`` people who are not enrolled;
- the stream is an image folder of symbolic links (no face image is copied), run by
  ``python -m edge.run --source DIR --gallery FILE`` exactly as a user runs it; the events it
  writes (JSON lines) are scored against the truth.
Prints the events and a summary (identification rate for frontal and for profile probes, false
accepts of strangers, per-stage latency) and writes ``<out>/people_demo.png`` (a contact sheet),
``<out>/people_demo.json`` and ``<out>/events.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from edge.datasets.root import DataNotFoundError, require_data_root
from edge.shipped import SHIPPED_IDENTITY, SHIPPED_LANDMARKS

DEFAULT_IDENTITY = SHIPPED_IDENTITY
DEFAULT_LANDMARKS = SHIPPED_LANDMARKS
FOLD9 = range(401, 451)


def build_stream(cfp: Path, out: Path, enrolled: list[int], strangers: list[int], per_person: int):
    """Enrolment folders and a probe folder of symlinks; returns (enrol dirs, probe truth)."""
    images = cfp / "Data" / "Images"
    enrol_root, probes = out / "enrol", out / "stream"
    for folder in (enrol_root, probes):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    enrol_dirs, truth = {}, {}
    for person in enrolled + strangers:
        frontal = sorted((images / f"{person:03d}" / "frontal").glob("*.jpg"))
        profile = sorted((images / f"{person:03d}" / "profile").glob("*.jpg"))
        first = frontal[:per_person] if person in enrolled else []
        if first:
            d = enrol_root / f"p{person}"
            d.mkdir()
            for p in first:
                os.symlink(p.resolve(), d / p.name)
            enrol_dirs[f"p{person}"] = d
        for view, photos in (("frontal", frontal[len(first) :]), ("profile", profile)):
            for p in photos:
                name = f"p{person}_{view}_{p.stem}.jpg"
                os.symlink(p.resolve(), probes / name)
                truth[name] = (f"p{person}" if person in enrolled else None, view)
    return enrol_dirs, truth


def contact_sheet(tiles: list[np.ndarray], columns: int = 10) -> np.ndarray:
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    blank = np.zeros_like(tiles[0])
    return np.vstack([np.hstack(r + [blank] * (columns - len(r))) for r in rows])


def tile(image: np.ndarray, box, label: str, colour, size: int = 128) -> np.ndarray:
    h, w = image.shape[:2]
    if box is not None:
        x1, y1, x2, y2 = box
        cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * 1.4
        x1, y1 = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
        x2, y2 = int(min(cx + side / 2, w)), int(min(cy + side / 2, h))
        image = image[y1:y2, x1:x2]
    out = cv2.resize(image, (size, size))
    cv2.rectangle(out, (0, 0), (size - 1, size - 1), colour, 3)
    cv2.rectangle(out, (0, size - 18), (size, size), (0, 0, 0), -1)
    cv2.putText(out, label[:20], (3, size - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.demo_people", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/demo")
    p.add_argument("--enrolled", type=int, default=20, help="fold-9 people to enrol (401 onwards)")
    p.add_argument("--strangers", type=int, default=20, help="fold-9 people never enrolled (from 450 down)")
    p.add_argument("--per-person", type=int, default=2, help="frontal photos per enrolled person")
    p.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="int8",
        help="shipped ONNX variant of the landmark and identity models, for enrolment and edge.run (default int8, "
        "what the Pi profiles run)",
    )
    p.add_argument("--embedder-model", default=None, help="identity model (default: the shipped one at --precision)")
    p.add_argument(
        "--stranger-rate",
        type=float,
        default=None,
        help="run edge.run with matching.stranger_rate (thresholds follow the gallery's size so a stranger is "
        "accepted at most about this often); default: each pair at the calibrated FAR",
    )
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.enrolled + args.strangers > len(FOLD9) or min(args.enrolled, args.strangers, args.per_person) < 1:
        print("edge.demo_people: --enrolled + --strangers must be at most 50, each at least 1", file=sys.stderr)
        return 2
    if args.stranger_rate is not None and not 0 < args.stranger_rate < 1:
        print(
            f"edge.demo_people: --stranger-rate: expected a rate in (0, 1), got {args.stranger_rate}", file=sys.stderr
        )
        return 2
    from edge.runtime.meta import variant_path

    shipped = variant_path(DEFAULT_IDENTITY, "onnx", args.precision)
    model = Path(args.embedder_model) if args.embedder_model else shipped
    landmark_model = variant_path(DEFAULT_LANDMARKS, "onnx", args.precision)
    if not model.exists():
        print(f"edge.demo_people: identity model {model} not found (pass --embedder-model FILE)", file=sys.stderr)
        return 2
    try:
        cfp = require_data_root("cfp")
    except DataNotFoundError as err:
        print(f"edge.demo_people: {err} (the demo needs the real CFP photos of fold 9)", file=sys.stderr)
        return 2

    from edge.app.enroll import build_embedder, enrol_photos
    from edge.imageio import read_image_bgr
    from edge.storage.gallery.store import Gallery

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    enrolled = list(FOLD9)[: args.enrolled]
    strangers = list(FOLD9)[::-1][: args.strangers]
    enrol_dirs, truth = build_stream(cfp, out, enrolled, strangers, args.per_person)
    gallery_path = out / "gallery.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{gallery_path}{suffix}").unlink(missing_ok=True)
    # Templates encrypted at rest, as on a device: a fresh key for this demo's fresh gallery.
    from edge.storage.keys import generate_key, load_key

    key_path = out / "gallery.key"
    key_path.unlink(missing_ok=True)
    generate_key(key_path)
    embedder = build_embedder(
        {"embedder_model": str(model), "landmark_model": str(landmark_model), "threads": args.threads}
    )
    people = {name: enrol_photos(embedder, folder)[0] for name, folder in enrol_dirs.items()}
    people = {name: t for name, t in people.items() if t}
    dim = int(next(iter(people.values()))[0].embedding.size)
    with Gallery.open(gallery_path, dim=dim, key=load_key(key_path)) as gallery:
        for name, templates in people.items():
            gallery.add_identity(name, templates)
    print(
        f"enrolled {len(enrol_dirs)} people from {args.per_person} frontal photo(s) each -> {gallery_path} "
        f"(templates AES-256-GCM encrypted, key {key_path})"
    )

    # The runtime exactly as a user starts it, on the folder of stills.
    events_path, summary_path = out / "events.jsonl", out / "run_summary.json"
    events_path.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "edge.run",
        "--source",
        str((out / "stream").absolute()),
        "--gallery",
        str(gallery_path.absolute()),
        "--embedder-model",
        str(model.absolute()),
        "--set",
        f"runtime.threads={args.threads}",
        "--set",
        f"runtime.precision={args.precision}",
        "--set",
        f"gallery.key_file={key_path.absolute()}",
        "--set",
        f'events.sinks=[{{type="jsonl", path="{events_path.absolute()}"}}]',
        *(["--set", f"matching.stranger_rate={args.stranger_rate}"] if args.stranger_rate is not None else []),
        "--summary-json",
        str(summary_path.absolute()),
        "--log-level",
        "WARNING",
    ]
    print("running: python -m edge.run --source", out / "stream", "--gallery", gallery_path, "...")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"edge.demo_people: edge.run failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return 2
    summary = json.loads(summary_path.read_text())
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    for line in events_path.read_text().splitlines()[:8]:
        print(line)
    print(f"... {len(events)} events in {events_path}")

    # Each still's faces end their tracks with the frame: track_ended carries the decision.
    outcomes: dict[str, dict] = {
        name: {"truth": t, "view": v, "said": None, "found": False, "yaw": None, "box": None}
        for name, (t, v) in truth.items()
    }
    for e in events:
        if e["type"] != "track_ended" or e["frame"] not in outcomes:
            continue
        o = outcomes[e["frame"]]
        area = (e["box"][2] - e["box"][0]) * (e["box"][3] - e["box"][1])
        if o["box"] is None or area > (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]):
            o.update(said=e["identity"], found=True, yaw=e["yaw"], box=e["box"])
    tiles = []
    for name, o in sorted(outcomes.items())[:: max(1, len(outcomes) // 120)][:120]:
        want, said = o["truth"], o["said"]
        if want is None:
            colour = (0, 0, 255) if said else (160, 160, 160)
        else:
            colour = (0, 200, 0) if said == want else (0, 0, 255) if said else (0, 200, 255)
        label = f"{said or 'unknown'} {'' if o['yaw'] is None else format(o['yaw'], '+.0f') + 'd'}"
        tiles.append(tile(read_image_bgr(out / "stream" / name), o["box"], label, colour))

    def rate(view: str, enrolled_people: bool):
        rows = [o for o in outcomes.values() if o["view"] == view and (o["truth"] is not None) == enrolled_people]
        return rows

    report = {
        "model": str(model),
        "enrolled_people": len(enrol_dirs),
        "stranger_people": len(strangers),
        "probes": len(outcomes),
        "stranger_rate": args.stranger_rate,
        "thresholds": "gallery-size-aware (matching.stranger_rate)"
        if args.stranger_rate is not None
        else "each pair at the calibrated FAR",
        # what the thresholds compare: "cosine", or "as-norm" (cohort-normalised, edge.core.scorenorm)
        "scores": json.loads(model.with_suffix(".json").read_text())
        .get("extra", {})
        .get("matching_thresholds", {})
        .get("score", "cosine"),
    }
    for view in ("frontal", "profile"):
        rows = rate(view, True)
        correct = sum(o["said"] == o["truth"] for o in rows)
        wrong = sum(o["said"] is not None and o["said"] != o["truth"] for o in rows)
        report[f"{view}_identification_rate"] = round(correct / max(len(rows), 1), 4)
        report[f"{view}_misidentified"] = wrong
        report[f"{view}_probes"] = len(rows)
        strangers_rows = rate(view, False)
        report[f"{view}_stranger_probes"] = len(strangers_rows)
        report[f"{view}_stranger_false_accepts"] = sum(o["said"] is not None for o in strangers_rows)
    report["no_face_found"] = sum(not o["found"] for o in outcomes.values())
    report["stages_ms"] = summary["stages"]
    report["fps"] = summary["fps"]
    (out / "people_demo.json").write_text(json.dumps(report, indent=1) + "\n")
    if tiles:
        cv2.imwrite(str(out / "people_demo.png"), contact_sheet(tiles))
    print(json.dumps({k: v for k, v in report.items() if k != "stages_ms"}, indent=1))
    stages = ", ".join(f"{k} {v['p50_ms']:.1f}" for k, v in summary["stages"].items())
    print(f"per-stage p50 latency (ms): {stages}")
    print(
        f"wrote {out / 'people_demo.png'} (green: right person, red: wrong person or a stranger accepted, "
        f"orange: enrolled but not recognised, grey: stranger left unknown)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

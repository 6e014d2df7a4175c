"""The NME vs latency table of the landmark model card, measured again on its own.

    python -m training.landmarks.latency --variant resnet18@256=RUN/supervised/best.pt \
        --variant mobilenetv2@128=RUN128/supervised/best.pt [--json OUT] \
        [--card edge/models/landmarks/MODEL_CARD_pipnet_light.md]

Every architecture of the table (the reference ResNet-18 and the light MobileNetV2 at three input
sizes, plus the shipped file) is timed side by side in one run (onnxruntime fp32, 1 thread,
batch 1; random-weight exports: latency does not depend on the weights). Each ``--variant``
checkpoint is scored on the fixed 300-W validation split with the device decoder (NME, FR@0.1,
AUC@0.1, per yaw bin) and fills its row's NME; the shipped model is scored too. ``--card``
rewrites the card's latency section with the new table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edge.shipped import PREVIOUS_LANDMARKS

SECTION = "## Latency (onnxruntime fp32, 1 thread, batch 1, this 2-core x86 machine, interleaved in one run)"
NEXT_SECTION = "## What training from scratch costs"


def _onnx_params_m(path: Path) -> float:
    """Parameters of an exported model, in millions (its weight initialisers)."""
    import onnx

    model = onnx.load(str(path))
    return round(sum(int(np.prod(t.dims)) for t in model.graph.initializer) / 1e6, 2)


def table_markdown(rows: list[dict], scores: dict) -> str:
    from training.landmarks.card import _fmt

    lines = [
        SECTION,
        "",
        "| variant | params (M) | input | file KiB | p50 ms | p90 ms | ratio | val NME | FR@0.1 | AUC@0.1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = scores.get(r["variant"], {})
        lines.append(
            f"| {r['variant']} | {_fmt(r['params_m'], 2)} | {r['input'][0]} | {r['size_kib']} | {r['p50_ms']} | "
            f"{r['p90_ms']} | {r['ratio_to_first']} | {_fmt(s.get('nme'))} | {_fmt(s.get('fr@0.1'), 3)} | "
            f"{_fmt(s.get('auc@0.1'), 3)} |"
        )
    lines += [
        "",
        "Latency does not depend on the weights, so every architecture is timed from a random-weight export, side by",
        "side in one run; NME is of the trained checkpoint of that architecture (blank: not trained), scored on the",
        "fixed validation split by the device decoder (`python -m training.landmarks.latency`).",
        "",
    ]
    return "\n".join(lines)


def replace_section(card: Path, section: str) -> None:
    text = card.read_text()
    if SECTION not in text or NEXT_SECTION not in text:
        raise ValueError(f"{card}: no '{SECTION[:20]}...' section followed by '{NEXT_SECTION}'")
    start, end = text.index(SECTION), text.index(NEXT_SECTION)
    card.write_text(text[:start] + section + "\n" + text[end:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.landmarks.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=[], metavar="ARCH@SIZE=CHECKPOINT")
    parser.add_argument("--shipped", type=Path, default=PREVIOUS_LANDMARKS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--card", type=Path, help="rewrite this model card's latency section")
    args = parser.parse_args(argv)
    variants = {}
    for spec in args.variant:
        label, _, path = spec.partition("=")
        if not path or not Path(path).is_file():
            print(f"error: --variant: expected ARCH@SIZE=CHECKPOINT of an existing file, got {spec!r}", file=sys.stderr)
            return 2
        variants[label] = Path(path)

    from training.landmarks.evalcli import load_landmarker, score, split_faces, yaw_of
    from training.landmarks.report import errors_of, latency_table

    faces = split_faces("val")
    yaws = np.array([yaw_of(p, g) for p, g in faces])
    scores = {"shipped": score(errors_of(load_landmarker(args.shipped), faces), yaws)}
    for label, path in variants.items():
        scores[label] = score(errors_of(load_landmarker(path), faces), yaws)
        print(f"{label}: val NME {scores[label]['nme']:.4f}")
    rows = latency_table(args.shipped, _onnx_params_m(args.shipped), {k: v["nme"] for k, v in scores.items()})
    section = table_markdown(rows, scores)
    print(section)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"latency": rows, "scores": scores}, indent=1) + "\n")
    if args.card:
        replace_section(args.card, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

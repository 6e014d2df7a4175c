"""The landmark model's report: choose, export and measure the shipped model, side by side.

    python -m training.landmarks.report --run RUN_DIR --ship edge/models/landmarks/pipnet_light.onnx \
        --out out/landmarks_report [--no-dlib]

For every stage of the run (supervised, each STC round) it scores the best checkpoint on the
fixed 300-W validation split; the stage with the lowest validation NME is exported to ONNX
and scored again through the device's runner (the number shipped in its metadata). Beside
it, in the same run: dlib's 68-point predictor on the same faces, the pose check on CFP
fold 9 (a fold STC never saw), and a latency table of the reference and light architectures
at several input sizes (onnxruntime fp32, 1 thread, interleaved). Writes ``report.json``,
``ced.png`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from edge.landmarks.crop import landmark_crop_box
from edge.landmarks.landmarker import Landmarker
from edge.metrics.landmarks import nme
from edge.runtime.runner import load_model
from edge.tools.bench import bench
from training.landmarks.evalcli import load_landmarker, plot_ced, score, split_faces, yaw_of
from training.landmarks.evaluate import predict_faces
from training.landmarks.train import load_checkpoint

LATENCY_VARIANTS = (
    ("resnet18", {}, 256),
    ("mobilenetv2", {"width": 1.0, "last_channels": 0}, 256),
    ("mobilenetv2", {"width": 1.0, "last_channels": 0}, 192),
    ("mobilenetv2", {"width": 1.0, "last_channels": 0}, 128),
    # dlib's face-pretrained trunk, its last level dropped (unpadded: 224 -> 6x6, 192 -> 5x5, 160 -> 4x4)
    ("dlib_resnet", {"levels": 4, "pretrained": False}, 224),
    ("dlib_resnet", {"levels": 4, "pretrained": False}, 192),
    ("dlib_resnet", {"levels": 4, "pretrained": False}, 160),
)


def stages(run: Path) -> list[Path]:
    return [p for p in [run / "supervised", *sorted(run.glob("stc_round*"))] if (p / "best.pt").exists()]


def errors_of(predictor, faces) -> np.ndarray:
    if isinstance(predictor, Landmarker):
        preds = predict_faces(predictor, [(p, landmark_crop_box(g)) for p, g in faces])
    else:
        from edge.imageio import read_image_bgr

        preds = np.stack([predictor.predict(read_image_bgr(p), [landmark_crop_box(g)])[0] for p, g in faces])
    return nme(preds, np.stack([g for _, g in faces]))


def _params_m(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


def latency_table(shipped: Path, shipped_params_m: float, variant_nme: dict) -> list[dict]:
    """Random-weight exports of each architecture (latency does not depend on the weights)."""
    from edge.landmarks.pipnet_decode import neighbour_table
    from training.config import to_dict
    from training.landmarks.config import LandmarkTrainConfig
    from training.landmarks.export import export_onnx
    from training.landmarks.meta import landmark_meta
    from training.landmarks.model import PipNet

    paths, labels, params = [shipped], ["shipped"], [shipped_params_m]
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, opts, size in LATENCY_VARIANTS:
            cfg = LandmarkTrainConfig(backbone=backbone, backbone_options=opts, input_size=size)
            model = PipNet(backbone, 68, 10, **opts).eval()
            mf = np.random.default_rng(0).uniform(0, size, (68, 2))
            meta = landmark_meta(cfg, neighbour_table(mf, 10), mf)
            ckpt = Path(tmp) / f"{backbone}_{size}.pt"
            torch.save({"model": model.state_dict(), "config": to_dict(cfg), "meta": meta.to_dict()}, ckpt)
            paths.append(export_onnx(ckpt, Path(tmp) / f"{backbone}_{size}.onnx"))
            labels.append(f"{backbone}@{size}")
            params.append(_params_m(model))
        rows = bench(paths, threads=1, runs=60)
    for row, label, n in zip(rows, labels, params):
        row["variant"] = label
        row["val_nme"] = variant_nme.get(label)
        row["params_m"] = n
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--ship", type=Path, required=True, help="where to write the chosen model (.onnx)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-dlib", action="store_true")
    parser.add_argument("--posecheck-folds", default="9")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="ARCH@SIZE=CHECKPOINT",
        help="another trained variant whose validation NME fills its row of the latency table, "
        "e.g. mobilenetv2@128=RUN/supervised/best.pt",
    )
    args = parser.parse_args(argv)

    from edge.datasets.cfp import parse_folds
    from training.landmarks.export import export_onnx
    from training.landmarks.posecheck import pose_check

    variants = [spec.partition("=")[::2] for spec in args.variant]
    for (_, path), spec in zip(variants, args.variant):
        if not path or not Path(path).is_file():
            print(f"error: --variant: expected ARCH@SIZE=CHECKPOINT of an existing file, got {spec!r}", file=sys.stderr)
            return 2
    faces = split_faces("val")
    yaws = np.array([yaw_of(p, g) for p, g in faces])
    report: dict = {"validation": "300-W split_300w(val_fraction=0.2, seed=0): 231 faces", "stages": {}}
    curves = {}
    for stage in stages(args.run):
        e = errors_of(load_landmarker(stage / "best.pt"), faces)
        report["stages"][stage.name] = score(e, yaws)
        curves[stage.name] = e
        print(f"{stage.name}: val NME {e.mean():.4f}")
    if not report["stages"]:
        print(f"error: no stage with best.pt under {args.run}", file=sys.stderr)
        return 2
    chosen = min(report["stages"], key=lambda k: report["stages"][k]["nme"])
    report["chosen_stage"] = chosen
    chosen_model, meta, _ = load_checkpoint(args.run / chosen / "best.pt")
    shipped = export_onnx(args.run / chosen / "best.pt", args.ship, name="pipnet_light")
    runner_errors = errors_of(Landmarker(load_model(shipped)), faces)
    report["shipped"] = {"file": str(args.ship), "stage": chosen, **score(runner_errors, yaws)}
    folds = parse_folds(args.posecheck_folds)
    checked = [(stage.name, stage / "best.pt") for stage in stages(args.run)] + [("shipped", shipped)]
    report["pose_check"] = {name: pose_check(load_landmarker(p), None, folds, progress=False) for name, p in checked}
    if not args.no_dlib:
        from training.landmarks.baseline_dlib import DLIB_POINT_OFFSET, DlibLandmarker

        for mode, kw in (("map", {}), ("detector+offset", {"boxes": "detector", "point_offset": DLIB_POINT_OFFSET})):
            e = errors_of(DlibLandmarker(**kw), faces)
            report[f"dlib_{mode}"] = score(e, yaws)
            curves[f"dlib ({mode})"] = e
    variant_nme = {
        "shipped": report["shipped"]["nme"],
        f"{meta.extra['backbone']}@{meta.input_size[0]}": report["shipped"]["nme"],
    }
    for label, path in variants:
        variant_nme[label] = float(errors_of(load_landmarker(Path(path)), faces).mean())
        report.setdefault("variants", {})[label] = {"checkpoint": path, "val_nme": variant_nme[label]}
    report["latency"] = latency_table(shipped, _params_m(chosen_model), variant_nme)
    args.out.mkdir(parents=True, exist_ok=True)
    curves[f"shipped ONNX ({chosen})"] = runner_errors
    plot_ced(curves, args.out / "ced.png")
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    # the shipped model's metadata records what it was measured at
    pose = report["pose_check"]["shipped"]
    accuracy = {
        "val_300w_nme": round(report["shipped"]["nme"], 5),
        "val_300w_fr@0.1": round(report["shipped"]["fr@0.1"], 4),
        "val_300w_auc@0.1": round(report["shipped"]["auc@0.1"], 4),
        "cfp_frontal_share_abs_yaw_le_20": pose["frontal"]["share_abs_yaw_le_20"],
        "cfp_profile_share_abs_yaw_ge_45": pose["profile"]["share_abs_yaw_ge_45"],
    }
    notes = (
        "val_300w_*: 300-W split_300w(val_fraction=0.2, seed=0), 231 faces, crop = 68-point box x1.2, "
        f"device decoder; cfp_*: BlazeFace -> detector crop policy -> this model -> head pose, CFP folds {folds}"
    )
    export_onnx(args.run / chosen / "best.pt", args.ship, name="pipnet_light", accuracy=accuracy, notes=notes)
    from edge.shipped import card_path
    from training.landmarks.card import write_card

    write_card(report, args.run, card_path(args.ship))
    if args.ship.parent.resolve() != args.out.resolve():
        import shutil

        shutil.copy(args.out / "ced.png", args.ship.parent / "ced.png")
    print(json.dumps({k: v for k, v in report.items() if k != "latency"}, indent=1)[:4000])
    from edge.tools.bench import format_table

    print(format_table(report["latency"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

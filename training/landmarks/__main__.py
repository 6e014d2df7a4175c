"""python -m training.landmarks {train,eval,export,posecheck} ...

``train`` also runs under torchrun (one process per GPU, or gloo processes on a CPU)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from training.config import ConfigError, load_toml
from training.landmarks.config import LandmarkTrainConfig


def cmd_train(args) -> int:
    from training.landmarks.train import train_supervised
    from training.runtime import is_main_process, teardown

    cfg = load_toml(LandmarkTrainConfig, args.config) if args.config else LandmarkTrainConfig()
    if args.device:
        from dataclasses import replace

        cfg = replace(cfg, device=args.device)
    run_dir = Path(args.out)
    try:
        if cfg.stc.rounds and cfg.stc.teacher and not args.no_stc:
            if is_main_process():
                print(f"supervised stage skipped: stc.teacher {cfg.stc.teacher} labels the first round")
        else:
            best = train_supervised(cfg, run_dir)
            if is_main_process():
                print(f"supervised: best validation NME {best['nme']:.4f} at epoch {best.get('epoch')}")
        if cfg.stc.rounds and not args.no_stc:
            from training.landmarks.stc import train_stc

            train_stc(cfg, run_dir)
    finally:
        teardown()  # the torchrun process group, if this process started one
    return 0


def _write(report: dict, out: Path | None) -> None:
    text = json.dumps(report, indent=1)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def cmd_eval(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from edge.landmarks.crop import landmark_crop_box
    from edge.metrics.landmarks import nme
    from training.landmarks.evalcli import labelled_images, load_landmarker, plot_ced, score, yaw_of
    from training.landmarks.evaluate import predict_faces

    if args.cfp_root:
        return _eval_cfp(args)
    if args.images:
        faces = labelled_images(args.images)
        source = str(args.images)
    else:
        from training.landmarks.evalcli import split_faces

        faces = split_faces(args.split)
        source = f"300-W {args.split} split (split_300w, val_fraction 0.2, seed 0)"
    landmarker = load_landmarker(args.model, args.threads)
    t0 = time.perf_counter()
    extra: dict = {"boxes": args.boxes}
    if args.boxes == "detector":
        from training.landmarks.evalcli import predict_from_detector

        refine = _refine(args, landmarker)
        preds, no_face = predict_from_detector(landmarker, faces, refine)
        extra.update({"refine": refine, "no_face": no_face})
    else:
        preds = predict_faces(
            landmarker, [(p, landmark_crop_box(g)) for p, g in faces], lambda it: tqdm(it, desc="eval")
        )
    seconds = time.perf_counter() - t0
    gts = np.stack([g for _, g in faces])
    errors = nme(preds, gts)
    errors[~np.isfinite(errors)] = 1.0  # a face the detector missed counts as a failure
    yaws = np.array([yaw_of(p, g) for p, g in faces])
    report = {"model": str(args.model), "images": source, **extra, **score(errors, yaws)}
    report["seconds_per_face"] = round(seconds / len(faces), 4)
    if args.ced:
        plot_ced({Path(args.model).name: errors}, args.ced)
    _write(report, args.json)
    return 0


def _refine(args, landmarker) -> int:
    from edge.core.faces import device_refine

    return args.refine if args.refine is not None else device_refine(landmarker)


def _eval_cfp(args) -> int:
    from edge.datasets.cfp import absent_folds, parse_folds
    from training.landmarks.cfp_eval import cfp_landmark_errors
    from training.landmarks.evalcli import load_landmarker

    if not args.folds:
        print("--cfp-root needs --folds (e.g. '9' or '1-8')", file=sys.stderr)
        return 2
    try:
        folds = parse_folds(args.folds)
    except ValueError as err:
        print(f"--folds: {err}", file=sys.stderr)
        return 2
    missing = sorted(set(absent_folds(args.cfp_root, folds)))
    if missing:
        print(
            f"{args.cfp_root}: fold(s) {', '.join(map(str, missing))} not found in its Protocol/Split", file=sys.stderr
        )
        return 2
    landmarker = load_landmarker(args.model, args.threads)
    refine = _refine(args, landmarker)
    report = {
        "model": str(args.model),
        "cfp_root": str(args.cfp_root),
        **cfp_landmark_errors(landmarker, args.cfp_root, folds, refine=refine),
    }
    _write(report, args.json)
    return 0


def cmd_export(args) -> int:
    from training.landmarks.export import export_onnx

    accuracy = json.loads(args.accuracy.read_text()) if args.accuracy else None
    out = export_onnx(
        args.checkpoint, args.out, decoder=args.decoder, accuracy=accuracy, notes=args.notes, refine=args.refine
    )
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def cmd_posecheck(args) -> int:
    from edge.datasets.cfp import parse_folds
    from training.landmarks.evalcli import load_landmarker
    from training.landmarks.posecheck import pose_check

    if args.fiducials:  # the head-pose fit on the photos' hand-marked points: no model
        report = {"points": "CFP fiducials mapped to iBUG-68 (known pose points only)"}
        _write({**report, **pose_check(None, args.cfp_root, parse_folds(args.folds))}, args.json)
        return 0
    landmarker = load_landmarker(args.model, args.threads)
    refine = _refine(args, landmarker)
    report = {
        "model": str(args.model),
        "refine": refine,
        **pose_check(landmarker, args.cfp_root, parse_folds(args.folds), refine=refine),
    }
    _write(report, args.json)
    return 0


def cmd_card(args) -> int:
    from training.landmarks.card_profile import _load, write_profile_card

    for path in (args.run / "config.json", args.run / "split.json", args.model.with_suffix(".json")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (a landmark run folder and an exported model with its JSON)")
    compare = []
    for spec in args.compare:
        label, sep, run = spec.partition("=")
        if not sep or not (Path(run) / "config.json").is_file():
            raise ValueError(f"--compare: expected LABEL=RUN_FOLDER of a landmark run, got {spec!r}")
        compare.append((label, Path(run)))
    write_profile_card(
        args.run,
        args.model,
        args.out,
        w300=[_load(s, "w300") for s in args.w300],
        cfp=[_load(s, "cfp") for s in args.cfp],
        pose=[_load(s, "pose") for s in args.pose],
        identity=[_load(s, "identity") for s in args.identity],
        compare=compare,
        latency=json.loads(args.latency.read_text()) if args.latency else None,
        intro=args.intro.read_text().strip() if args.intro else "",
        recipe=args.recipe,
    )
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.landmarks", description="PIPNet landmarks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (resumes if the run folder has a checkpoint)")
    p.add_argument("--config", type=Path, help="TOML recipe (see training/landmarks/configs/)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--no-stc", action="store_true", help="stop after the supervised stage")
    p.add_argument(
        "--device",
        default=None,
        help="auto | cpu | cuda | cuda:N (overrides the recipe's 'device'; auto = CUDA where available). "
        "Several processes: torchrun --nproc_per_node N -m training.landmarks train ... (cuda:LOCAL_RANK each)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="NME / FR@0.1 / AUC@0.1 on images with .pts beside them")
    p.add_argument("--model", type=Path, required=True, help="checkpoint .pt, or exported .onnx / .tflite")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of images with iBUG .pts files beside them")
    src.add_argument("--split", choices=["val", "train"], help="our fixed 300-W split instead of a folder")
    src.add_argument(
        "--cfp-root", type=Path, help="a folder in the CFP layout: error over the points its fiducials mark"
    )
    p.add_argument("--folds", help="with --cfp-root: protocol folds to score, e.g. '9' or '1-8'")
    p.add_argument(
        "--boxes",
        choices=["landmarks", "detector"],
        default="landmarks",
        help="300-W modes: crop from the ground truth's landmark box (default), or through the device chain "
        "from BlazeFace's box (the detection that overlaps the labelled face most; none: counted, error 1.0)",
    )
    p.add_argument(
        "--refine",
        type=int,
        default=None,
        help="with --cfp-root or --boxes detector: re-crops from the predicted points (default: the device's)",
    )
    p.add_argument("--json", type=Path, help="write the report here too")
    p.add_argument("--ced", type=Path, help="write a CED plot (PNG) here")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="ONNX (opset 17) + metadata JSON, checked against torch")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output .onnx path")
    p.add_argument("--decoder", choices=["numpy", "graph"], default="numpy")
    p.add_argument("--accuracy", type=Path, help="JSON of measured numbers to record in the metadata")
    p.add_argument("--notes", help="how those numbers were measured (metadata extra.accuracy_notes)")
    p.add_argument(
        "--refine", type=int, default=None, help="re-crops the device makes with this model (metadata extra.refine)"
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("posecheck", help="yaw from our landmarks on CFP frontal/profile photos")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", type=Path)
    what.add_argument(
        "--fiducials", action="store_true", help="read yaw from the photos' hand-marked CFP fiducials instead"
    )
    p.add_argument("--cfp-root", type=Path, default=None, help="CFP-layout folder (default: the data root's cfp/)")
    p.add_argument("--folds", default="1-9")
    p.add_argument(
        "--refine", type=int, default=None, help="re-crops from the predicted points (default: the device's)"
    )
    p.add_argument("--json", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_posecheck)

    p = sub.add_parser("card", help="the model card of a CFP-trained landmark model, from measured reports")
    p.add_argument("--run", type=Path, required=True, help="the run folder it was trained in")
    p.add_argument("--model", type=Path, required=True, help="the exported .onnx (its .json beside it)")
    p.add_argument("--out", type=Path, required=True, help="the card to write (MODEL_CARD.md)")
    for flag, what in (
        ("--w300", "300-W report (eval --split/--images)"),
        ("--cfp", "CFP report (eval --cfp-root)"),
        ("--pose", "pose check report"),
        ("--identity", "identity eval report (training.identity eval)"),
    ):
        p.add_argument(flag, action="append", default=[], metavar="LABEL=REPORT.json", help=what)
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=RUN", help="architecture arms")
    p.add_argument("--latency", type=Path, help="edge.bench --pipeline --landmarks ... JSON")
    p.add_argument("--intro", type=Path, help="a text file: the card's summary paragraph")
    p.add_argument("--recipe", help="the recipe file the run was trained from (default: configs/<run name>.toml)")
    p.set_defaults(func=cmd_card)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""python -m training.identity {prepare,train,eval,export} ...

``train`` also runs under torchrun (one process per GPU, or gloo processes on a CPU):
``torchrun --standalone --nproc_per_node N -m training.identity train --config R --out RUN``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.tools.calibrate import add_cohort_arguments


def cmd_prepare(args) -> int:
    from edge.geometry.align import AlignmentSpec
    from training.identity.prepare import prepare_cache

    size = args.size or (150 if args.alignment == "dlib_68" else 112)
    spec = AlignmentSpec(args.alignment, size)
    prepare_cache(Path(args.out), args.data_root, args.landmark_model, tuple(args.sources), spec=spec)
    return 0


def cmd_train(args) -> int:
    from training.config import load_toml
    from training.identity.config import IdentityTrainConfig
    from training.identity.train import train

    cfg = load_toml(IdentityTrainConfig, args.config) if args.config else IdentityTrainConfig()
    if args.cache:
        import dataclasses

        cfg = dataclasses.replace(cfg, cache=args.cache)
    if args.device:
        import dataclasses

        cfg = dataclasses.replace(cfg, device=args.device)
    if args.train_folder or args.train_rec:
        import dataclasses

        from training.identity.data.streamed import check_source_flag

        cfg = dataclasses.replace(cfg, train_source=check_source_flag(args.train_folder, args.train_rec))
    if cfg.train_source:
        import training.identity.train as train_module

        if not getattr(train_module, "STREAMED_SOURCES", False):  # never train on the cache by mistake
            raise ValueError(
                f"train_source {cfg.train_source}: training.identity.train does not read streamed sources yet "
                "(wiring: training/identity/data/streamed.py, build_train_dataset)"
            )
    from training.runtime import is_main_process, teardown

    try:
        best = train(cfg, Path(args.out), args.data_root)
    finally:
        teardown()  # the torchrun process group, if this process started one
    if is_main_process():
        print(f"best validation score {best['score']:.4f} at epoch {best.get('epoch')}")
    return 0


def cmd_student(args) -> int:
    import dataclasses

    from training.identity.student import load_student_config, train_student

    cfg = load_student_config(args.config)
    if args.device:
        cfg = dataclasses.replace(cfg, device=args.device)
    best = train_student(cfg, Path(args.out), args.data_root)
    print(f"student done: best validation score {best['score']:.4f} at epoch {best.get('epoch')}")
    return 0


def _write(report: dict, out) -> None:
    import json

    text = json.dumps(report, indent=1)
    print(text)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out)


def cmd_opensim(args) -> int:
    from edge.datasets.cfp import cfp_root
    from training.identity.opensim import DEFAULT_FRONTIER, plot_frontier, run

    if args.stranger_rate is not None and not 0 < args.stranger_rate < 1:
        raise ValueError(f"--stranger-rate: expected a rate in (0, 1), got {args.stranger_rate}")
    if args.draws < 1 or args.templates < 1:
        raise ValueError(f"--draws {args.draws} / --templates {args.templates}: expected at least 1 each")
    frontier_rates = None
    if args.frontier is not None:
        frontier_rates = tuple(args.frontier) or DEFAULT_FRONTIER
        bad = [r for r in frontier_rates if not 0 < r < 1]
        if bad:
            raise ValueError(f"--frontier: expected rates in (0, 1), got {bad[0]}")
    if args.plot and frontier_rates is None:
        raise ValueError("--plot: draws the frontier, so it needs --frontier")
    model = Path(args.model)
    if not model.exists():
        raise FileNotFoundError(f"--model {model}: no such file")
    report = run(
        model,
        cfp_root(args.cfp_root),
        args.fold,
        args.landmark_model,
        args.threads,
        args.stranger_rate,
        frontier_rates,
        enrolled=args.enrolled,
        strangers=args.strangers,
        templates=args.templates,
        draws=args.draws,
        seed=args.seed,
    )
    if args.plot:
        report["plot"] = str(plot_frontier(report, Path(args.plot)))
    _write(report, args.json)
    return 0


def cmd_eval(args) -> int:
    import time

    from edge.datasets.cfp import cfp_root, parse_folds
    from training.identity import evaluate as ev
    from training.landmarks.evalcli import load_landmarker

    root = cfp_root(args.cfp_root)
    calib = parse_folds(args.calib_folds)
    if args.test_fold in calib:
        raise ValueError(
            f"--test-fold {args.test_fold} is also in --calib-folds {args.calib_folds}: "
            "thresholds must come from other folds"
        )
    cohort = parse_folds(args.cohort_folds) if args.cohort_folds else []
    if set(cohort) & {args.test_fold, *calib}:
        raise ValueError(f"--cohort-folds {args.cohort_folds}: must be other people than --test-fold and --calib-folds")
    ev.check_folds(root, [args.test_fold, *calib])
    landmark_model = Path(args.landmark_model) if args.landmark_model else ev.default_landmark_model()
    landmarker = load_landmarker(landmark_model)
    t0 = time.time()
    if args.model == "dlib":
        from training.identity.baseline_dlib import DlibFaceRecognizer

        table = ev.photo_table(root, [args.test_fold, *calib, *cohort], landmarker, args.boxes, DlibFaceRecognizer())
        name = "dlib_face_recognition_resnet_model_v1"
    else:
        runner = ev.load_embedder(Path(args.model), threads=args.threads)
        flip = {"model": None, "on": True, "off": False}[args.flip]
        embedder = ev.RunnerEmbedder(runner, flip=flip)
        table = ev.photo_table(root, [args.test_fold, *calib, *cohort], landmarker, args.boxes, embedder)
        name = str(args.model)
    if cohort:
        table.normalise_with_cohort(cohort, args.top_k)
    report = ev.verification_report(root, table, args.test_fold, calib, with_roc=bool(args.roc))
    rocs = report.pop("_roc", None)
    report = {
        "model": name,
        "cfp_root": str(root),
        "boxes": args.boxes,
        "flip": args.flip,
        "landmark_model": str(landmark_model),
        "landmark_refine": landmarker.refine,
        "score_norm": {"method": "as-norm", "cohort_folds": cohort, "top_k": args.top_k} if cohort else None,
        **report,
        "seconds": round(time.time() - t0, 1),
    }
    if rocs:
        ev.plot_roc(rocs, Path(args.roc), f"{Path(name).name}, CFP fold {args.test_fold} ({args.boxes} boxes)")
    _write(report, args.json)
    return 0


def cmd_export(args) -> int:
    import json

    from training.identity.export import export_onnx

    accuracy = json.loads(Path(args.accuracy_json).read_text()) if args.accuracy_json else None
    flip = {"on": True, "off": False, None: None}[args.test_time_flip]
    out = export_onnx(Path(args.checkpoint), Path(args.out), accuracy=accuracy, name=args.name, flip=flip)
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def _named(items, flag: str, form: str) -> dict[str, str]:
    """``NAME=VALUE`` arguments as a dict; anything else is an error naming the flag."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag}: expected {form}, got {item!r}")
        name, value = item.split("=", 1)
        out[name] = value
    return out


def cmd_report(args) -> int:
    from edge.datasets.cfp import parse_folds
    from training.identity.report import run_report

    arms = _named(args.arm, "--arm", "NAME=CHECKPOINT")
    run_report(
        arms,
        args.dlib,
        args.cfp_root,
        args.test_fold,
        parse_folds(args.calib_folds),
        Path(args.out),
        tuple(args.boxes),
        args.threads,
        args.flip,
    )
    return 0


def cmd_card(args) -> int:
    from edge.shipped import card_path
    from training.identity.card import write_card

    evals = {"fiducials (oracle)": Path(args.eval_fiducials), "detector (device)": Path(args.eval_detector)}
    out = write_card(
        Path(args.model),
        Path(args.run),
        evals,
        Path(args.ablation) if args.ablation else None,
        Path(args.out) if args.out else card_path(Path(args.model)),
    )
    print(f"wrote {out}")
    return 0


def cmd_finetune_card(args) -> int:
    from edge.shipped import card_path
    from training.identity.finetune_card import write_finetune_card

    evals = {name: Path(path) for name, path in _named(args.eval, "--eval", "NAME=JSON").items()}
    out = write_finetune_card(
        Path(args.model),
        Path(args.run),
        evals,
        Path(args.ablation) if args.ablation else None,
        Path(args.out) if args.out else card_path(Path(args.model)),
        Path(args.student_eval) if args.student_eval else None,
        Path(args.bench) if args.bench else None,
        [Path(d) for d in args.demo] if args.demo else None,
        args.recipe,
        Path(args.student_run) if args.student_run else None,
        [Path(p) for p in args.opensim] if args.opensim else None,
    )
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.identity", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="align every CFP/LFW/ORL face with the device chain into a cache")
    p.add_argument("--out", required=True, help="cache folder (one .npz per source)")
    p.add_argument("--data-root", default=None, help="data folder (default: $POSEFACE_DATA or ../shared/data)")
    p.add_argument("--landmark-model", default=None, help="PIPNet model (default: the shipped one)")
    p.add_argument(
        "--sources",
        nargs="+",
        default=["cfp", "lfw", "orl"],
        choices=["cfp", "lfw", "orl", "w300"],
        help="w300: the 300-W faces, unlabelled (a student's distillation only)",
    )
    p.add_argument(
        "--alignment",
        choices=["arcface_5", "dlib_68"],
        default="arcface_5",
        help="crop template: ArcFace 5-point (MobileFaceNet) or dlib's 68-point chip (the dlib ResNet)",
    )
    p.add_argument("--size", type=int, default=None, help="crop side in pixels (default 112 arcface_5, 150 dlib_68)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train an identity model (resumes from OUT/last.pt)")
    p.add_argument("--config", default=None, help="recipe TOML (training/identity/configs/)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--cache", default=None, help="aligned-face cache (overrides the recipe's 'cache')")
    p.add_argument("--data-root", default=None, help="data folder (default: $POSEFACE_DATA or ../shared/data)")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--train-folder", default=None, help="train on aligned faces DIR/<identity>/<image> (overrides train_source)"
    )
    source.add_argument(
        "--train-rec", default=None, help="train on an insightface RecordIO pack FILE.rec (overrides train_source)"
    )
    p.add_argument(
        "--device",
        default=None,
        help="auto | cpu | cuda | cuda:N (overrides the recipe's 'device'; auto = CUDA where available; "
        "under torchrun each process takes cuda:LOCAL_RANK)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("student", help="distil a device-sized student from a teacher checkpoint (resumable)")
    p.add_argument("--config", default=None, help="student recipe TOML (training/identity/configs/student_cpu.toml)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--data-root", default=None)
    p.add_argument(
        "--device",
        default=None,
        help="auto | cpu | cuda | cuda:N (overrides the recipe's 'device'; auto = CUDA where available)",
    )
    p.set_defaults(func=cmd_student)

    p = sub.add_parser("eval", help="CFP FF/FP verification of a model on any CFP-layout folder")
    p.add_argument("--model", required=True, help="checkpoint (.pt), exported .onnx/.tflite, or 'dlib' (the baseline)")
    p.add_argument("--cfp-root", default=None, help="folder in the CFP layout (default: <data root>/cfp)")
    p.add_argument("--test-fold", type=int, required=True, help="protocol fold to report on")
    p.add_argument("--calib-folds", required=True, help="folds that choose the threshold, e.g. '8' or '1-8'")
    p.add_argument(
        "--boxes",
        choices=["fiducials", "detector"],
        default="detector",
        help="first face box: the photo's fiducials (oracle) or BlazeFace (the device)",
    )
    p.add_argument("--landmark-model", default=None, help="PIPNet model (default: the shipped one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the report here too")
    p.add_argument("--roc", default=None, help="write the dense-pair ROC plot (PNG) here")
    add_cohort_arguments(p, "score cohort-normalised pairs (AS-norm), as edge.calibrate --cohort-folds does")
    p.add_argument(
        "--flip",
        choices=["model", "on", "off"],
        default="model",
        help="test-time flip (embedding of the face plus its mirror): as the model's metadata says, on or off",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("opensim", help="the demo's open-set identification over many random galleries")
    p.add_argument("--model", required=True, help="identity model (.onnx/.tflite) with calibrated thresholds")
    p.add_argument("--cfp-root", default=None, help="folder in the CFP layout (default: <data root>/cfp)")
    p.add_argument("--fold", type=int, default=9, help="the fold whose people are drawn (never trained on)")
    p.add_argument("--landmark-model", default=None, help="PIPNet model (default: the shipped one)")
    p.add_argument("--enrolled", type=int, default=20, help="people enrolled per draw")
    p.add_argument("--strangers", type=int, default=20, help="other people per draw, never enrolled")
    p.add_argument("--templates", type=int, default=2, help="frontal photos enrolled per person (the first ones)")
    p.add_argument("--draws", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stranger-rate", type=float, default=None, help="as matching.stranger_rate (default: per pair)")
    p.add_argument(
        "--frontier",
        type=float,
        nargs="*",
        default=None,
        help="also the best per-|yaw|-bin thresholds fitted to the draws at these stranger rates "
        "(an upper bound for any calibration; no value: 0.0025 0.005 0.01 0.02 0.03 0.05)",
    )
    p.add_argument("--plot", default=None, help="PNG of the frontier and the run's operating point (needs --frontier)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the report here too")
    p.set_defaults(func=cmd_opensim)

    p = sub.add_parser("export", help="export a checkpoint's identity path to ONNX (opset 17) with metadata")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help=".onnx file; metadata is written beside it (.json)")
    p.add_argument("--accuracy-json", default=None, help="a JSON object of measured numbers to record in the metadata")
    p.add_argument("--name", default=None)
    p.add_argument(
        "--test-time-flip",
        choices=["on", "off"],
        default=None,
        help="record in the metadata whether the runtime embeds face + mirror by default (extra.test_time_flip); "
        "set it where eval --flip on measured a gain",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="ablation table: arms and dlib on the same CFP pairs")
    p.add_argument("--arm", action="append", default=[], help="NAME=CHECKPOINT (repeat)")
    p.add_argument("--dlib", action="store_true", help="also score dlib's face-recognition ResNet")
    p.add_argument("--cfp-root", default=None)
    p.add_argument("--test-fold", type=int, default=9)
    p.add_argument("--calib-folds", default="8")
    p.add_argument("--boxes", nargs="+", default=["fiducials", "detector"], choices=["fiducials", "detector"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--flip", action="store_true", help="also score every arm with test-time flip")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("card", help="write the shipped model's card from measured files")
    p.add_argument("--model", required=True)
    p.add_argument("--run", required=True, help="the shipped model's training run folder")
    p.add_argument("--eval-fiducials", required=True, help="eval JSON with --boxes fiducials")
    p.add_argument("--eval-detector", required=True, help="eval JSON with --boxes detector")
    p.add_argument("--ablation", default=None, help="folder written by the report command")
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_card)
    p = sub.add_parser("finetune-card", help="write the card of a model fine-tuned from dlib's ResNet")
    p.add_argument("--model", required=True)
    p.add_argument("--run", required=True, help="its training run folder")
    p.add_argument("--eval", action="append", default=[], help="NAME=JSON of the eval command (repeat)")
    p.add_argument("--ablation", default=None, help="folder written by the report command")
    p.add_argument("--student-eval", default=None, help="eval JSON of the distilled student")
    p.add_argument("--student-run", default=None, help="the student's training run folder (its budget)")
    p.add_argument("--bench", default=None, help="python -m edge.bench JSON timing this model beside the old one")
    p.add_argument(
        "--demo",
        action="append",
        default=None,
        help="people_demo.json of python -m edge.demo_people with this model (repeat: e.g. with --stranger-rate too)",
    )
    p.add_argument(
        "--opensim", action="append", default=None, help="JSON of python -m training.identity opensim (repeat)"
    )
    p.add_argument("--recipe", default=None, help="the recipe TOML the run was trained with (named in the card)")
    p.add_argument("--out", default=None, help="default: MODEL_CARD.md (default model) or MODEL_CARD_<stem>.md")
    p.set_defaults(func=cmd_finetune_card)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"training.identity: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

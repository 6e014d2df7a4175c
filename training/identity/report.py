"""The identity ablation report: every arm, and dlib's face-recognition ResNet, on the same CFP
pairs in one run, with oracle (fiducial) and detector boxes.

    python -m training.identity report --arm arcface=runs/abl_arcface/best.pt ... [--dlib]
        [--cfp-root ROOT] [--test-fold 9] [--calib-folds 8] [--out DIR]

Faces are prepared once per box mode and crop kind (the device chain; the crop each model's
metadata asks for) and embedded by every arm, so arms of one kind differ only in their weights.
``--flip`` adds a test-time-flip row per arm (the embedding of the face plus its mirror).
Writes ``DIR/report.json``, ``DIR/ablation.md`` and
``DIR/roc_fp.png`` (dense frontal-profile ROC of every arm, detector boxes).
"""

from __future__ import annotations

import json
from pathlib import Path

from training.identity import evaluate as ev

BOXES = ("fiducials", "detector")


def model_size(path: str) -> dict:
    if path == "dlib":
        from training.landmarks.baseline_dlib import model_path

        f = model_path().parent / "dlib_face_recognition_resnet_model_v1.dat"
        return {"file_mib": round(f.stat().st_size / 2**20, 2), "parameters": None}
    from training.identity.checkpoint import load_checkpoint
    from training.identity.model import exported_parameters

    net, _, _ = load_checkpoint(Path(path))
    return {"parameters": exported_parameters(net), "file_mib": round(exported_parameters(net) * 4 / 2**20, 2)}


def row_of(name: str, boxes: str, rep: dict) -> dict:
    ff, fp = rep["FF"], rep["FP"]
    row = {
        "arm": name,
        "boxes": boxes,
        "FF_acc": ff["accuracy"],
        "FP_acc": fp["accuracy"],
        "FP_tar@far=0.01": fp["dense"]["tar@far=0.01"],
        "FP_tar@far=0.001": fp["dense"]["tar@far=0.001"],
        "FF_tar@far=0.001": ff["dense"]["tar@far=0.001"],
        "FP_eer": fp["dense"]["eer"],
        "FF_eer": ff["dense"]["eer"],
        "no_face": rep["photos_without_face"],
    }
    for b, v in fp["per_probe_yaw"].items():
        if b != "no_face":
            row[f"FP_acc_yaw_{b}"] = v["accuracy"]
            row[f"FP_pairs_yaw_{b}"] = v["pairs"]
    return row


def markdown(rows: list[dict], test_fold: int, calib: list[int]) -> str:
    head = (
        f"CFP fold {test_fold} (never trained on); thresholds from fold(s) {', '.join(map(str, calib))}. "
        "Accuracy on the 350+350 protocol pairs; TAR/EER on dense pairs of the fold.\n\n"
        "| arm | boxes | FF acc | FP acc | FP TAR@1e-2 | FP TAR@1e-3 | FP EER "
        "| FP acc, probe yaw 0-30 / 30-60 / 60-90 |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    lines = []
    for r in rows:
        bins = " / ".join(
            f"{pct(r.get(f'FP_acc_yaw_{b}'))} ({r.get(f'FP_pairs_yaw_{b}')})" for b in ("0-30", "30-60", "60-90")
        )
        lines.append(
            f"| {r['arm']} | {r['boxes']} | {pct(r['FF_acc'])} | {pct(r['FP_acc'])} | {pct(r['FP_tar@far=0.01'])} | "
            f"{pct(r['FP_tar@far=0.001'])} | {pct(r['FP_eer'])} | {bins} |"
        )
    return head + "\n".join(lines) + "\n\n(per-yaw cells: accuracy (pairs); probe yaw from our landmarks)\n"


def run_report(
    arms: dict[str, str],
    dlib: bool,
    cfp_root,
    test_fold: int,
    calib: list[int],
    out: Path,
    boxes=BOXES,
    threads: int = 2,
    flip: bool = False,
) -> dict:
    from edge.datasets.cfp import cfp_root as find_root
    from training.landmarks.evalcli import load_landmarker

    root = find_root(cfp_root)
    ev.check_folds(root, [test_fold, *calib])
    landmarker = load_landmarker(ev.default_landmark_model())
    embedders = {name: ev.RunnerEmbedder(ev.load_embedder(Path(p), threads=threads)) for name, p in arms.items()}
    if flip:
        for name, p in arms.items():
            embedders[f"{name} +flip"] = ev.RunnerEmbedder(ev.load_embedder(Path(p), threads=threads), flip=True)
    if dlib:
        from training.identity.baseline_dlib import DlibFaceRecognizer

        embedders["dlib ResNet (teacher-size baseline)"] = DlibFaceRecognizer()
    sizes = {name: model_size(p) for name, p in arms.items()}
    sizes.update({f"{name} +flip": sizes[name] for name in arms if flip})
    if dlib:
        sizes["dlib ResNet (teacher-size baseline)"] = model_size("dlib")
    out.mkdir(parents=True, exist_ok=True)
    rows, full, rocs = [], {}, {}
    for mode in boxes:
        by_alignment: dict = {}  # faces prepared once per crop kind (ArcFace 112, dlib 150, ...)
        for name, embedder in embedders.items():
            spec = embedder.alignment
            if spec not in by_alignment:
                by_alignment[spec] = ev.prepare_photos(root, [test_fold, *calib], landmarker, mode, spec)
            prepared = by_alignment[spec]
            table = ev.table_from(prepared, embedder, progress=getattr(embedder, "needs_image", False))
            rep = ev.verification_report(root, table, test_fold, calib, with_roc=True)
            roc = rep.pop("_roc")
            if mode == "detector":
                rocs[name] = roc["FP"]
            full[f"{name} [{mode}]"] = rep
            rows.append(row_of(name, mode, rep))
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "test_fold": test_fold,
        "calib_folds": calib,
        "models": {**arms, **({"dlib": "dlib"} if dlib else {})},
        "sizes": sizes,
        "rows": rows,
        "full": full,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "ablation.md").write_text(markdown(rows, test_fold, calib))
    if rocs:
        ev.plot_roc(rocs, out / "roc_fp.png", f"CFP-FP fold {test_fold}, dense pairs, detector boxes")
    return report

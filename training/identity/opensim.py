"""The demo's open-set identification over many random galleries, with the device's decision rule.

    python -m training.identity opensim --model FILE [--fold 9] [--enrolled 20] [--strangers 20]
        [--templates 2] [--draws 40] [--stranger-rate R] [--json OUT]

``make demo`` enrols one fixed set of 20 people and scores 520 probes: one draw, whose rates move
by a probe's worth (0.6 points frontal, 1.25 profile) and by which people were drawn. This
embeds every photo of a CFP fold once through the device chain (BlazeFace, the landmark model,
head pose, the identity model's alignment; :func:`edge.tools.calibrate.chain_embeddings`), then
draws galleries as the demo builds them (``--enrolled`` people with their first ``--templates``
frontal photos as templates, their other photos as probes, ``--strangers`` other people's photos
as strangers) and decides every probe with :func:`edge.core.matching.match` under the model's own
metadata thresholds (and cohort normalisation where they say so), per pair at the calibrated FAR
or with ``--stranger-rate``. It reports each rate's mean, spread and range over the draws.
No tracker: each photo is decided alone, as the demo's stills are.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge.core.matching import YawThresholds, match
from edge.storage.gallery.records import gallery_arrays_from

RATES = ("frontal_identified", "profile_identified", "strangers_accepted")


def simulate(
    identities: np.ndarray,
    views: np.ndarray,
    numbers: np.ndarray,
    embeddings: np.ndarray,
    yaws: np.ndarray,
    thresholds: YawThresholds,
    score_norm=None,
    enrolled: int = 20,
    strangers: int = 20,
    templates: int = 2,
    draws: int = 40,
    stranger_rate: float | None = None,
    seed: int = 0,
) -> list[dict]:
    """One dict of rates per draw. ``numbers`` orders a person's photos (the first frontal ones
    become templates, as the demo takes them)."""
    people = np.unique(identities)
    if enrolled < 1 or strangers < 1 or enrolled + strangers > len(people):
        raise ValueError(
            f"--enrolled {enrolled} + --strangers {strangers}: expected each >= 1 and at most {len(people)} "
            "together (the fold's people)"
        )
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        order = rng.permutation(people)
        known, others = set(order[:enrolled].tolist()), order[enrolled : enrolled + strangers]
        rows, used = [], set()
        for who in sorted(known):
            frontal = np.flatnonzero((identities == who) & (views == "frontal"))
            first = frontal[np.argsort(numbers[frontal], kind="stable")][:templates]
            rows += [(f"p{who}", embeddings[i], float(yaws[i])) for i in first]
            used.update(first.tolist())
        gallery = gallery_arrays_from(rows)
        rule = thresholds if stranger_rate is None else thresholds.for_stranger_rate(len(rows), stranger_rate)
        hits = {"frontal": [0, 0], "profile": [0, 0], "stranger": [0, 0]}
        for i in np.flatnonzero(np.isin(identities, list(known) + others.tolist())):
            if i in used:
                continue
            said = match(embeddings[i], float(yaws[i]), gallery, rule, score_norm).name
            if identities[i] in known:
                tally = hits[str(views[i])]
                tally[0] += said == f"p{identities[i]}"
            else:
                tally = hits["stranger"]
                tally[0] += said is not None
            tally[1] += 1
        out.append({rate: hits[key][0] / max(hits[key][1], 1) for rate, key in zip(RATES, hits)})
        out[-1]["probes"] = {key: n for key, (_, n) in hits.items()}
    return out


def summarise(per_draw: list[dict]) -> dict:
    summary = {}
    for rate in RATES:
        v = np.array([d[rate] for d in per_draw])
        summary[rate] = {
            "mean": round(float(v.mean()), 4),
            "std": round(float(v.std()), 4),
            "min": round(float(v.min()), 4),
            "max": round(float(v.max()), 4),
        }
    return summary


def run(
    model: Path,
    cfp_root,
    fold: int,
    landmark_model=None,
    threads: int = 2,
    stranger_rate: float | None = None,
    **draw_options,
) -> dict:
    from edge.core.faces import alignment_for
    from edge.core.scorenorm import ScoreNorm
    from edge.datasets.cfp import cfp_photos, fold_identities
    from edge.detect.registry import build_detector
    from edge.landmarks.landmarker import Landmarker
    from edge.runtime.runner import load_model
    from edge.shipped import SHIPPED_LANDMARKS
    from edge.tools.calibrate import chain_embeddings

    t0 = time.time()
    embedder = load_model(model, threads=threads)
    data = embedder.meta.extra.get("matching_thresholds")
    if data is None:
        raise ValueError(f"--model {model}: no calibrated thresholds in its metadata (run python -m edge.calibrate)")
    thresholds = YawThresholds.from_dict(data, source=f"{model} metadata")
    score_norm = None
    if thresholds.score != "cosine":
        score_norm = ScoreNorm.from_meta(embedder.meta.extra.get("score_norm"), model, source=f"{model} metadata")
    photos = cfp_photos(cfp_root, identities=fold_identities(fold))
    if not photos:
        raise ValueError(f"--cfp-root {cfp_root}: no photos of fold {fold}")
    landmarks = Path(landmark_model or SHIPPED_LANDMARKS)
    landmarker = Landmarker(load_model(landmarks, threads=threads))
    detector = build_detector({"type": "blazeface", "range": "short", "threads": threads})
    ids, views, emb, yaws, missing, kept = chain_embeddings(
        photos, embedder, landmarker, detector, alignment_for(embedder), desc="opensim faces"
    )
    numbers = np.array([photos[k].number for k in kept])
    per_draw = simulate(
        ids, views, numbers, emb, yaws, thresholds, score_norm, stranger_rate=stranger_rate, **draw_options
    )
    return {
        "model": str(model),
        "landmark_model": str(landmarks),
        "fold": fold,
        "photos": len(photos),
        "photos_without_face": missing,
        "scores": thresholds.score,
        "thresholds": "each pair at the calibrated FAR" if stranger_rate is None else "matching.stranger_rate",
        "stranger_rate": stranger_rate,
        **draw_options,
        "rates": summarise(per_draw),
        "per_draw": per_draw,
        "seconds": round(time.time() - t0, 1),
    }

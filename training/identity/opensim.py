"""The demo's open-set identification over many random galleries, with the device's decision rule.

    python -m training.identity opensim --model FILE [--fold 9] [--enrolled 20] [--strangers 20]
        [--templates 2] [--draws 40] [--stranger-rate R] [--frontier [RATE ...]] [--plot PNG]
        [--json OUT]

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

``--frontier`` also asks what the scores themselves allow: for each stranger rate, the per-|yaw|-bin
thresholds that identify the most enrolled probes (frontal and profile together) while accepting at
most that share of the strangers, fitted to the draws' own scores (:func:`frontier`). No calibration
can do better with these embeddings and one threshold per bin, so a bar above this frontier asks
for a better embedding, not better thresholds. ``--plot`` draws the frontier with the run's own
operating point (PNG).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge.core.matching import YawThresholds, match
from edge.storage.gallery.records import gallery_arrays_from

RATES = ("frontal_identified", "profile_identified", "strangers_accepted")
DEFAULT_FRONTIER = (0.0025, 0.005, 0.01, 0.02, 0.03, 0.05)
KINDS = ("frontal", "profile", "stranger")


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
    records: list | None = None,
) -> list[dict]:
    """One dict of rates per draw. ``numbers`` orders a person's photos (the first frontal ones
    become templates, as the demo takes them). ``records``, where given, receives one
    (kind index into :data:`KINDS`, |yaw| bin, decision score, best candidate is the right
    person) per probe of every draw, for :func:`frontier`."""
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
            result = match(embeddings[i], float(yaws[i]), gallery, rule, score_norm)
            said = result.name
            if records is not None:
                kind = str(views[i]) if identities[i] in known else "stranger"
                score = result.score if result.norm_score is None else result.norm_score
                right = result.candidate == f"p{identities[i]}"
                records.append((KINDS.index(kind), rule.bin_index(float(yaws[i])), score, right))
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


def frontier(records: list, bins: int, rates=DEFAULT_FRONTIER) -> list[dict]:
    """Per stranger rate: the best per-bin thresholds for these probes (see the module text).

    Accepting the ``j`` best-scoring strangers of a bin (threshold just above its ``j+1``-th
    score) identifies the bin's enrolled probes whose best candidate is right and scores above
    it; the budget of ``floor(rate * strangers)`` is split among the bins by dynamic programming
    to maximise the identified probes."""
    rec = np.asarray(records, dtype=float).reshape(-1, 4)
    kind, b, score, right = rec[:, 0].astype(int), rec[:, 1].astype(int), rec[:, 2], rec[:, 3] > 0
    strangers = int((kind == 2).sum())
    enrolled = {k: max(int((kind == k).sum()), 1) for k in (0, 1)}
    if not strangers:
        raise ValueError("frontier: the draws hold no stranger probes")
    out = []
    for rate in rates:
        budget = int(np.floor(rate * strangers))
        # options[k][j]: (identified, frontal, profile, threshold) when bin k accepts its j best strangers
        options = []
        for k in range(bins):
            st = np.sort(score[(kind == 2) & (b == k)])[::-1]
            # the right candidates' scores of the bin's frontal and profile probes, ascending
            good = [np.sort(score[(kind == c) & (b == k) & right]) for c in (0, 1)]
            rows = []
            for j in range(min(budget, st.size) + 1):
                thr = float(np.nextafter(st[j], np.inf)) if j < st.size else -np.inf
                f, p = (int(g.size - np.searchsorted(g, thr)) for g in good)  # scores >= thr
                rows.append((f + p, f, p, thr))
            options.append(rows)
        best = {0: (0, 0, 0, [])}  # strangers used -> (identified, frontal, profile, thresholds)
        for rows in options:
            nxt: dict = {}
            for used, (n, f, p, ts) in best.items():
                for j, (gain, gf, gp, thr) in enumerate(rows):
                    if used + j > budget:
                        break
                    cand = (n + gain, f + gf, p + gp, ts + [thr])
                    if used + j not in nxt or cand[0] > nxt[used + j][0]:
                        nxt[used + j] = cand
            best = nxt
        used, (n, f, p, ts) = max(best.items(), key=lambda item: (item[1][0], -item[0]))
        out.append(
            {
                "stranger_rate": rate,
                "thresholds": [None if not np.isfinite(t) else round(t, 5) for t in ts],
                "frontal_identified": round(f / enrolled[0], 4),
                "profile_identified": round(p / enrolled[1], 4),
                "strangers_accepted": round(used / strangers, 4),
            }
        )
    return out


def plot_frontier(report: dict, path: Path) -> Path:
    """Profile and frontal identification against strangers accepted: the frontier and this run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["frontier"]
    x = [100 * p["strangers_accepted"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [100 * p["profile_identified"] for p in points], "o-", label="profile, best thresholds (frontier)")
    ax.plot(x, [100 * p["frontal_identified"] for p in points], "s-", label="frontal, best thresholds (frontier)")
    rates = report["rates"]
    sx = 100 * rates["strangers_accepted"]["mean"]
    ax.plot([sx], [100 * rates["profile_identified"]["mean"]], "r*", ms=12, label="profile, the model's thresholds")
    ax.plot([sx], [100 * rates["frontal_identified"]["mean"]], "k*", ms=12, label="frontal, the model's thresholds")
    ax.set_xlabel("strangers accepted (%)")
    ax.set_ylabel("enrolled probes identified (%)")
    ax.set_title(f"{Path(report['model']).name}: CFP fold {report['fold']}, {report['draws']} draws", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def run(
    model: Path,
    cfp_root,
    fold: int,
    landmark_model=None,
    threads: int = 2,
    stranger_rate: float | None = None,
    frontier_rates=None,
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
    records: list | None = [] if frontier_rates else None
    per_draw = simulate(
        ids,
        views,
        numbers,
        emb,
        yaws,
        thresholds,
        score_norm,
        stranger_rate=stranger_rate,
        records=records,
        **draw_options,
    )
    extra = {}
    if frontier_rates:
        extra["frontier"] = frontier(records, len(thresholds.thresholds), frontier_rates)
        extra["frontier_note"] = (
            "an upper bound: per-|yaw|-bin thresholds fitted to these draws' own scores, identifying the most "
            "enrolled probes at each stranger rate"
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
        **extra,
        "per_draw": per_draw,
        "seconds": round(time.time() - t0, 1),
    }

"""Cohort score normalisation (adaptive symmetric normalisation, "AS-norm") for gallery matching.

A raw cosine means different things for different faces: a profile probe, a dark photo or a
face that looks like many others scores high or low against everybody. Each side of a pair is
therefore put against a fixed *cohort* of faces of other people: the mean and spread of its
``top_k`` highest cosines to the cohort say how high its scores run by themselves. The pair's
normalised score is

    0.5 * ((s - mu_probe) / sd_probe + (s - mu_template) / sd_template)

in units of cohort spread, so one threshold fits more probes. Measured on CFP fold 9 with the
shipped identity model (``edge/models/identity/MODEL_CARD.md``): the dense frontal-profile TAR at
FAR 1e-3 rises by about 4.5 points (the low false-accept rates the device works at), while the
protocol accuracy at the equal-error point falls by about 1.5.

The cohort is one unit embedding per person and view (the mean of their photos) of people the
gallery will not hold (``python -m edge.calibrate --cohort-folds``: CFP training folds), stored
as a ``.npy`` beside the model and named in its metadata (``extra.score_norm``); the calibrated
thresholds are then in normalised units (``matching_thresholds.score == "as-norm"``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

METHOD = "as-norm"
KNOWN_FIELDS = ("method", "top_k", "cohort_file", "cohort_sha256", "cohort_source")


class ScoreNormError(ValueError):
    """The score normalisation record or its cohort file is unusable; the message says which."""


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class ScoreNorm:
    """``cohort`` (M, D) embeddings (made unit length), ``top_k`` of them give each face's statistics."""

    def __init__(self, cohort: np.ndarray, top_k: int):
        cohort = np.asarray(cohort, dtype=np.float32)
        if cohort.ndim != 2 or cohort.shape[0] < 2 or not np.isfinite(cohort).all():
            raise ScoreNormError(f"score normalisation: expected a finite (M >= 2, D) cohort, got shape {cohort.shape}")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 2 <= top_k <= cohort.shape[0]:
            raise ScoreNormError(
                f"score normalisation: top_k: expected an integer in [2, {cohort.shape[0]}] (the cohort's size), "
                f"got {top_k!r}"
            )
        self.cohort = _unit_rows(cohort)
        self.top_k = top_k
        self._cached: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def dim(self) -> int:
        return int(self.cohort.shape[1])

    def stats(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of each row's ``top_k`` highest cosines to the cohort; rows need not be unit."""
        v = _unit_rows(np.atleast_2d(vectors))
        if v.shape[1] != self.dim:
            raise ScoreNormError(f"score normalisation: embeddings have {v.shape[1]} values, the cohort {self.dim}")
        scores = v @ self.cohort.T
        top = -np.partition(-scores, self.top_k - 1, axis=1)[:, : self.top_k]
        return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6)

    def template_stats(self, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`stats` of a gallery's templates, kept while the same array comes back (the
        runtime's gallery view hands out one array until the file changes)."""
        if self._cached is None or self._cached[0] is not templates:
            self._cached = (templates, self.stats(templates))
        return self._cached[1]

    def normalise(self, scores: np.ndarray, probe: tuple, templates: tuple) -> np.ndarray:
        """Normalised (P, T) scores from raw cosines ``scores`` (P, T) and the (mean, std) of the
        probes (P,) and templates (T,)."""
        s = np.asarray(scores, dtype=np.float64)
        (mp, sp), (mt, st) = probe, templates
        return 0.5 * ((s - np.asarray(mp)[:, None]) / np.asarray(sp)[:, None] + (s - mt[None, :]) / st[None, :])

    def pair_scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Normalised scores of every row of ``a`` against every row of ``b`` (unit embeddings)."""
        return self.normalise(np.asarray(a) @ np.asarray(b).T, self.stats(a), self.stats(b))

    @classmethod
    def from_meta(cls, record: Any, model_path: Path | str, source: str = "<model metadata>") -> ScoreNorm:
        """From the ``extra.score_norm`` record of the model at ``model_path`` (the cohort file
        lies beside it, checked against its sha256)."""
        if not isinstance(record, Mapping):
            raise ScoreNormError(f"{source}: field 'score_norm': expected an object, got {record!r}")
        unknown = sorted(set(record) - set(KNOWN_FIELDS))
        if unknown:
            raise ScoreNormError(
                f"{source}: score_norm: unknown field '{unknown[0]}' (known: {', '.join(KNOWN_FIELDS)})"
            )
        if record.get("method") != METHOD:
            raise ScoreNormError(f"{source}: score_norm.method: expected {METHOD!r}, got {record.get('method')!r}")
        name = record.get("cohort_file")
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise ScoreNormError(
                f"{source}: score_norm.cohort_file: expected a file name beside the model, got {name!r}"
            )
        path = Path(model_path).with_name(name)
        if not path.is_file():
            raise ScoreNormError(f"{path}: cohort file not found (named by {source} score_norm.cohort_file)")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != record.get("cohort_sha256"):
            raise ScoreNormError(
                f"{path}: sha256 differs from {source} score_norm.cohort_sha256 (a stale cohort file?)"
            )
        try:
            cohort = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ScoreNormError(f"{path}: expected a .npy array of cohort embeddings ({err})") from None
        try:
            return cls(cohort, record.get("top_k"))
        except ScoreNormError as err:
            raise ScoreNormError(f"{path}: {err}") from None


def cohort_means(identities, views, embeddings: np.ndarray) -> np.ndarray:
    """One unit embedding per (identity, view): the mean of that person's photos in that view."""
    identities, views = np.asarray(identities), np.asarray(views)
    emb = _unit_rows(embeddings)
    keys = sorted(set(zip(identities.tolist(), views.tolist())))
    out = [emb[(identities == who) & (views == view)].mean(axis=0) for who, view in keys]
    return _unit_rows(np.array(out).reshape(len(out), emb.shape[1]))

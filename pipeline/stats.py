"""Statistics for the report: bootstrap CIs, exact McNemar on paired outcomes, Holm.

Accuracy CIs resample seeds and documents (crossed_bootstrap_ci: a seeds x documents matrix); the other CIs come
from scipy.stats.bootstrap (documents, or timing repeats, are the resampled unit);
p-values from scipy.stats.binomtest (exact McNemar: a binomial test on the discordant pairs).

Kept free of torch so the report starts fast. Every function is deterministic given its seed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from pipeline.errors import DataError

PAIR_KEYS: tuple[str, ...] = ("split", "doc_id", "query_idx", "seed")
CROSSED = "percentile, seeds x documents"  # the method name crossed_bootstrap_ci records


@dataclass(frozen=True)
class CI:
    """A mean with its confidence interval; `degenerate` says the interval could not be bootstrapped."""

    mean: float
    low: float
    high: float
    n: int
    level: float
    method: str
    degenerate: bool = False
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
    n_resamples: int = 2000,
    method: str = "percentile",
    seed: int = 0,
) -> CI:
    """CI of the mean of `values` (one value per document) by resampling documents.

    n=0 gives NaNs, n=1 or constant data a zero-width interval at the mean, flagged degenerate
    (a bootstrap of one value, or of identical values, carries no information about spread).
    If BCa cannot be computed (non-finite result) it falls back to the percentile interval and says so.
    """
    if method not in ("percentile", "bca", "basic"):
        raise ValueError(f"bootstrap method must be one of percentile, bca, basic; got {method!r}")
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return CI(math.nan, math.nan, math.nan, 0, level, method, True, "no data")
    mean = float(x.mean())
    if n == 1:
        return CI(mean, mean, mean, 1, level, method, True, "n=1: degenerate interval (no spread to resample)")
    if np.all(x == x[0]):
        return CI(mean, mean, mean, n, level, method, True, "constant data: degenerate interval")
    rng = np.random.default_rng(seed)
    used = method
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning is handled below via finiteness
        res = sps.bootstrap((x,), np.mean, confidence_level=level, n_resamples=n_resamples,
                            method=method, random_state=rng, vectorized=True)
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    note = ""
    if not (math.isfinite(low) and math.isfinite(high)) and method != "percentile":
        used = "percentile"
        res = sps.bootstrap((x,), np.mean, confidence_level=level, n_resamples=n_resamples,
                            method="percentile", random_state=np.random.default_rng(seed), vectorized=True)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        note = f"{method} not computable; percentile interval used"
    return CI(mean, low, high, n, level, used, False, note)


def _resample_counts(rng: np.random.Generator, n: int, n_resamples: int) -> np.ndarray:
    """How often each of n units is drawn in each of n_resamples bootstrap samples: [n_resamples, n]."""
    idx = rng.integers(0, n, (n_resamples, n))
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.arange(n_resamples)[:, None], idx), 1.0)
    return counts


def _complete(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"expected a seeds x documents matrix, got shape {m.shape}")
    return m[:, np.all(np.isfinite(m), axis=0)]  # a document every seed answered


def crossed_bootstrap_ci(matrix: np.ndarray, *, level: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> CI:
    """CI of the mean of a seeds x documents matrix (every seed answers the same documents: a crossed design),
    resampling seeds and documents independently, percentile interval. A seed that learned less, or floats that
    moved on another machine, widen it, where a CI over documents alone covers neither; with one seed it is the
    documents' bootstrap. Documents missing for some seed are left out."""
    m = _complete(matrix)
    S, D = m.shape
    if S == 0 or D == 0:
        return CI(math.nan, math.nan, math.nan, 0, level, CROSSED, True, "no data")
    mean = float(m.mean())
    if np.all(m == m.flat[0]):
        return CI(mean, mean, mean, D, level, CROSSED, True, "constant data: degenerate interval")
    rng = np.random.default_rng(seed)
    cs, cd = _resample_counts(rng, S, n_resamples), _resample_counts(rng, D, n_resamples)
    stats = np.einsum("bs,sd,bd->b", cs, m, cd) / (S * D)
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return CI(mean, float(low), float(high), D, level, CROSSED)


def crossed_bootstrap_diff_ci(x: np.ndarray, y: np.ndarray, *, level: float = 0.95, n_resamples: int = 2000,
                              seed: int = 0) -> CI:
    """CI of mean(x) - mean(y) for two seeds x documents matrices with the same seeds in the same rows and their
    own documents (e.g. CMR's gap at the longest vs the shortest N): one resample of seeds for both, documents
    resampled on each side."""
    x, y = _complete(x), _complete(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"the two matrices must hold the same seeds: {x.shape[0]} vs {y.shape[0]} rows")
    S = x.shape[0]
    if S == 0 or x.shape[1] == 0 or y.shape[1] == 0:
        return CI(math.nan, math.nan, math.nan, 0, level, CROSSED, True, "no data")
    est = float(x.mean() - y.mean())
    n = int(min(x.shape[1], y.shape[1]))
    if np.all(x == x.flat[0]) and np.all(y == y.flat[0]):
        return CI(est, est, est, n, level, CROSSED, True, "difference: no spread to resample (degenerate interval)")
    rng = np.random.default_rng(seed)
    cs = _resample_counts(rng, S, n_resamples)
    cx, cy = _resample_counts(rng, x.shape[1], n_resamples), _resample_counts(rng, y.shape[1], n_resamples)
    stats = (np.einsum("bs,sd,bd->b", cs, x, cx) / (S * x.shape[1])
             - np.einsum("bs,sd,bd->b", cs, y, cy) / (S * y.shape[1]))
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return CI(est, float(low), float(high), n, level, CROSSED)


def _two_sample_ci(x: np.ndarray, y: np.ndarray, statistic, *, level: float, n_resamples: int, method: str,
                   seed: int, what: str) -> CI:
    """CI of statistic(x, y) for two independent samples, each resampled on its own."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size == 0 or y.size == 0:
        return CI(math.nan, math.nan, math.nan, int(min(x.size, y.size)), level, method, True, "no data")
    est = float(statistic(x, y, axis=-1))
    n = int(min(x.size, y.size))
    if (x.size < 2 and y.size < 2) or (np.all(x == x[0]) and np.all(y == y[0])):
        return CI(est, est, est, n, level, method, True, f"{what}: no spread to resample (degenerate interval)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.bootstrap((x, y), statistic, confidence_level=level, n_resamples=n_resamples, method=method,
                            random_state=np.random.default_rng(seed), vectorized=True, paired=False)
    return CI(est, float(res.confidence_interval.low), float(res.confidence_interval.high), n, level, method)


def bootstrap_ratio_ci(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, level: float = 0.95,
                       n_resamples: int = 2000, method: str = "percentile", seed: int = 0) -> CI:
    """CI of median(x) / median(y) for independent samples (timing repeats: CMR's over window's ms/token)."""
    return _two_sample_ci(np.asarray(x), np.asarray(y), lambda a, b, axis: np.median(a, axis) / np.median(b, axis),
                          level=level, n_resamples=n_resamples, method=method, seed=seed, what="ratio")


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: b = A right and B wrong, c = A wrong and B right."""

    b: int
    c: int
    n_pairs: int
    p_value: float

    def as_dict(self) -> dict:
        return asdict(self)


def mcnemar_exact(b: int, c: int, n_pairs: int | None = None) -> McNemar:
    """Two-sided exact binomial test of b vs c discordant pairs at p=1/2; p=1 when there are none."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    p = 1.0 if b + c == 0 else float(sps.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return McNemar(b, c, int(n_pairs if n_pairs is not None else b + c), min(1.0, p))


def mcnemar_from_outcomes(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemar:
    """McNemar on two aligned boolean vectors (same queries, same order)."""
    a = np.asarray(correct_a, dtype=bool)
    bb = np.asarray(correct_b, dtype=bool)
    if a.shape != bb.shape:
        raise ValueError(f"paired outcomes differ in length: {a.shape} vs {bb.shape}")
    return mcnemar_exact(int(np.sum(a & ~bb)), int(np.sum(~a & bb)), int(a.size))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaNs stay NaN, outside the family."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out


def align_pairs(a: pd.DataFrame, b: pd.DataFrame, keys: Sequence[str] = PAIR_KEYS) -> pd.DataFrame:
    """Inner-join two variants' predictions on the query identity, giving correct_a / correct_b.

    Queries present in only one side are dropped (the caller can compare lengths); a duplicated key
    means the predictions are corrupt, so it raises DataError.
    """
    keys = list(keys)
    for name, df in (("a", a), ("b", b)):
        missing = [k for k in keys + ["correct"] if k not in df.columns]
        if missing:
            raise DataError(f"predictions ({name}) lack columns {missing} needed for pairing")
        dup = df.duplicated(keys)
        if dup.any():
            raise DataError(f"predictions ({name}) have {int(dup.sum())} duplicated query keys {keys}, "
                            f"e.g. {df.loc[dup, keys].iloc[0].to_dict()}")
    left = a[keys + ["correct"]].rename(columns={"correct": "correct_a"})
    right = b[keys + ["correct"]].rename(columns={"correct": "correct_b"})
    out = left.merge(right, on=keys, how="inner", validate="one_to_one")
    out["correct_a"] = out["correct_a"].astype(bool)
    out["correct_b"] = out["correct_b"].astype(bool)
    return out

"""Statistics used by the report: bootstrap CI, exact McNemar, Holm, pairing."""

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.stats import (align_pairs, bootstrap_ci, bootstrap_ratio_ci, holm, mcnemar_exact,
                            mcnemar_from_outcomes)


def test_bootstrap_ci_covers_true_mean_with_sensible_width():
    rng = np.random.default_rng(123)
    p_true = 0.7
    x = rng.binomial(20, p_true, size=200) / 20  # per-document accuracies, 20 queries each
    ci = bootstrap_ci(x, n_resamples=2000, seed=0)
    assert ci.low < p_true < ci.high
    assert ci.low <= ci.mean <= ci.high
    se = math.sqrt(p_true * (1 - p_true) / 20 / 200)
    assert 0.6 * (2 * 1.96 * se) < ci.high - ci.low < 1.5 * (2 * 1.96 * se)
    assert not ci.degenerate


def test_bootstrap_ci_coverage_over_repeats():
    rng = np.random.default_rng(7)
    covered = 0
    for i in range(60):
        x = rng.normal(0.5, 0.1, 40)
        ci = bootstrap_ci(x, n_resamples=500, seed=i)
        covered += ci.low < 0.5 < ci.high
    assert 50 <= covered <= 60  # nominal 95% of 60 = 57


def _bernoulli_docs(rng, p, n_docs=80, queries=10):
    """Per-document accuracy of `queries` Bernoulli(p) outcomes per document: the unit the report resamples."""
    return rng.binomial(1, p, size=(n_docs, queries)).mean(axis=1)


def test_bootstrap_ci_contains_true_bernoulli_mean():
    ci = bootstrap_ci(_bernoulli_docs(np.random.default_rng(11), 0.3), n_resamples=2000, seed=0)
    assert ci.low < 0.3 < ci.high and ci.n == 80


def test_bootstrap_ci_coverage_bernoulli_documents():
    # 50 simulated studies with known p: a 95% interval should contain p in ~47.5 of them.
    # Binomial(50, 0.95) puts 99.9% of its mass at >= 42; percentile intervals run a little narrow at n=80.
    rng = np.random.default_rng(2024)
    covered = 0
    for i in range(50):
        ci = bootstrap_ci(_bernoulli_docs(rng, 0.7), n_resamples=500, seed=i)
        covered += ci.low <= 0.7 <= ci.high
    assert 42 <= covered <= 50


def test_ratio_ci():
    rng = np.random.default_rng(5)
    y = rng.normal(0.4, 0.1, 60)
    r = bootstrap_ratio_ci(2 * y + 0.3, y + 0.15, seed=1)  # exactly twice
    assert r.mean == pytest.approx(2.0) and r.low <= 2.0 <= r.high
    assert bootstrap_ratio_ci([1.0, 1.0], [0.5, 0.5]).degenerate
    assert math.isnan(bootstrap_ratio_ci([], [1.0]).mean)


def test_bootstrap_ci_is_seeded_and_bca_works():
    x = np.random.default_rng(0).uniform(size=30)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    ci = bootstrap_ci(x, method="bca", seed=3)
    assert ci.method == "bca" and ci.low < x.mean() < ci.high


@pytest.mark.parametrize("x", [[0.4], [1.0, 1.0, 1.0]])
def test_bootstrap_ci_degenerate_cases(x):
    ci = bootstrap_ci(x)
    assert ci.degenerate and ci.low == ci.high == ci.mean == pytest.approx(x[0])
    assert ci.note


def test_bootstrap_ci_empty():
    ci = bootstrap_ci([])
    assert ci.n == 0 and math.isnan(ci.mean) and ci.degenerate


def test_mcnemar_matches_hand_computed_binomial():
    # b=8, c=2: two-sided p = 2 * sum_{i<=2} C(10, i) / 2^10 = 2 * 56 / 1024
    r = mcnemar_exact(8, 2)
    assert r.p_value == pytest.approx(0.109375, abs=1e-12)
    assert mcnemar_exact(2, 8).p_value == pytest.approx(0.109375, abs=1e-12)
    assert mcnemar_exact(0, 0).p_value == 1.0
    assert mcnemar_exact(5, 5).p_value == 1.0
    assert mcnemar_exact(10, 0).p_value == pytest.approx(2 / 1024)


def test_mcnemar_b10_c2_by_hand():
    # n = b + c = 12 discordant pairs, X ~ Binomial(12, 1/2) under H0. Two-sided exact p = 2 * P(X <= 2)
    # = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * (1 + 12 + 66) / 4096 = 158 / 4096 = 0.038574...
    r = mcnemar_exact(10, 2, n_pairs=100)
    assert r.p_value == pytest.approx(158 / 4096, abs=1e-12)
    assert round(r.p_value, 4) == 0.0386 and (r.b, r.c, r.n_pairs) == (10, 2, 100)


def test_mcnemar_from_outcomes_counts_discordant_pairs():
    a = [1, 1, 1, 0, 0, 1]
    b = [0, 0, 1, 1, 0, 1]
    r = mcnemar_from_outcomes(a, b)
    assert (r.b, r.c, r.n_pairs) == (2, 1, 6)


def test_holm_known_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005,0.01,0.03,0.04 -> 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(0.06, 0.04)=0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    # m=3: sorted 0.001, 0.02, 0.04 -> 3*0.001=0.003, 2*0.02=0.04, max(0.04, 1*0.04)=0.04
    np.testing.assert_allclose(holm([0.04, 0.001, 0.02]), [0.04, 0.003, 0.04])
    out = holm([0.01, float("nan"), 0.02])
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])


def _preds(correct, seed=0):
    n = len(correct)
    return pd.DataFrame({"split": "recall_500", "doc_id": [f"d{i // 2}" for i in range(n)],
                         "query_idx": [i % 2 for i in range(n)], "seed": seed, "correct": correct})


def test_align_pairs_joins_on_query_identity():
    a = _preds([True, False, True, True])
    b = _preds([False, False, True, False]).iloc[::-1]  # other order, same queries
    b = pd.concat([b, _preds([True, True], seed=1)])  # unmatched seed is dropped
    pairs = align_pairs(a, b)
    assert len(pairs) == 4
    r = mcnemar_from_outcomes(pairs["correct_a"], pairs["correct_b"])
    assert (r.b, r.c) == (2, 0)


def test_align_pairs_rejects_duplicate_keys():
    a = _preds([True, True])
    with pytest.raises(DataError, match="duplicated"):
        align_pairs(pd.concat([a, a]), a)


def test_crossed_bootstrap_covers_seed_to_seed_variation():
    """Three seeds that agree within each document but differ as seeds: the documents' CI alone is tight around
    the mean of the seed means; resampling seeds widens it to the seeds' spread."""
    from pipeline.stats import bootstrap_ci, crossed_bootstrap_ci

    rng = np.random.default_rng(0)
    docs = rng.uniform(0.8, 1.0, 200)
    m = np.stack([docs, docs - 0.3, docs - 0.02])  # one seed learned much less
    docs_only = bootstrap_ci(m.mean(axis=0), seed=1)
    crossed = crossed_bootstrap_ci(m, seed=1)
    assert crossed.mean == pytest.approx(m.mean())
    assert crossed.high - crossed.low > 5 * (docs_only.high - docs_only.low)
    assert crossed.low < m.mean() < crossed.high
    # one seed: only documents are resampled, as wide as the documents' own bootstrap
    one = crossed_bootstrap_ci(m[:1], n_resamples=4000, seed=2)
    ref = bootstrap_ci(m[0], n_resamples=4000, seed=2)
    assert one.high - one.low == pytest.approx(ref.high - ref.low, rel=0.15)
    # a document missing for one seed is left out; constant data is degenerate
    m2 = m.copy()
    m2[1, 0] = np.nan
    assert crossed_bootstrap_ci(m2).n == 199
    assert crossed_bootstrap_ci(np.ones((3, 5))).degenerate


def test_crossed_difference_shares_the_seed_resample():
    from pipeline.stats import crossed_bootstrap_diff_ci

    rng = np.random.default_rng(3)
    seed_effect = np.array([[0.0], [0.2], [-0.2]])  # shared by both cells: it cancels in the difference
    x = rng.normal(0.5, 0.05, (3, 80)) + seed_effect
    y = rng.normal(0.4, 0.05, (3, 60)) + seed_effect
    ci = crossed_bootstrap_diff_ci(x, y, seed=0)
    assert ci.mean == pytest.approx(x.mean() - y.mean())
    assert 0.05 < ci.low < 0.1 < ci.high < 0.15
    with pytest.raises(ValueError, match="same seeds"):
        crossed_bootstrap_diff_ci(x, y[:2])

"""Sanity-check aggregation (pipeline.studies.sanity): its bars on hand-made tables, and a real tiny sweep
through to results/sanity/*."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.studies.sanity import build, checks


def _table(cmr, window, xl):
    rows = []
    for variant, vals in (("cmr", cmr), ("window", window), ("xl", xl)):
        for seed, v in enumerate(vals):
            rows.append({"variant": variant, "seed": str(seed), "seg_2": v[0], "seg_4": v[1], "seg_32": v[2]})
    return pd.DataFrame(rows)


def test_bars_pass_and_fail_per_seed():
    ok = _table(cmr=[(1.0, 0.99, 0.96)] * 3, window=[(0.02, 0.01, 0.02)] * 3, xl=[(0.97, 0.03, 0.02)] * 3)
    res = checks(ok, chance=1 / 64, reach_segments=2)
    assert all(c["passed"] for c in res.values()), res
    # one cmr seed below 0.95 at 32 segments fails the bar, and says which
    bad = _table(cmr=[(1.0, 0.99, 0.96), (1.0, 0.98, 0.40), (1.0, 1.0, 1.0)],
                 window=[(0.02, 0.01, 0.02)] * 3, xl=[(0.97, 0.5, 0.02)] * 3)
    res = checks(bad, chance=1 / 64, reach_segments=2)
    assert res["cmr_every_length"]["passed"] is False and "s1 seg_32=0.400" in res["cmr_every_length"]["detail"]
    assert res["xl_beyond_reach_at_chance"]["passed"] is False  # 0.5 at 4 segments: beyond its 2-segment reach
    assert res["window_at_chance"]["passed"] and res["xl_one_segment_back"]["passed"]


def test_tiny_sanity_sweep_to_results(tiny_multirun, tmp_path):
    sweep = tiny_multirun("sweep.variant=window,xl,cmr", "sweep.seed=0")
    result = build([sweep], tmp_path / "sanity")
    for ext in ("csv", "md", "png", "json"):
        assert (tmp_path / "sanity" / f"sanity.{ext}").stat().st_size > 0
    table = pd.read_csv(tmp_path / "sanity" / "sanity.csv")
    assert set(table["variant"]) == {"window", "xl", "cmr"} and set(table["seed"].astype(str)) == {"0", "mean"}
    assert {"seg_4", "seg_8"} <= set(table.columns)  # the ci profile's 64 and 128 tokens, W=16
    saved = json.loads((tmp_path / "sanity" / "sanity.json").read_text())
    assert set(saved["checks"]) == {"cmr_every_length", "window_at_chance", "xl_one_segment_back",
                                    "xl_beyond_reach_at_chance"} and saved["passed"] == result["passed"]
    assert result["checks"]["cmr_every_length"]["passed"] is False  # 20 steps learn nothing: the bar says so
    with pytest.raises(Exception, match="no such folder"):
        build([tmp_path / "nope"], tmp_path / "sanity")

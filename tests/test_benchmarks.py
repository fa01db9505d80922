"""benchmarks/profile_overhead.py: a part's time excludes the parts it calls; every CMR part it wraps exists.
benchmarks/speed.py: the width x length sweep writes every cell, its counted FLOPs and what it did not run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipeline.models.registry import NAMES


def _load(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _module():
    return _load("profile_overhead")


def test_exclusive_timer_subtracts_nested_parts(monkeypatch):
    mod = _module()
    clock = iter([0.0, 1.0, 3.0, 10.0])  # outer starts, inner starts, inner ends, outer ends
    monkeypatch.setattr(mod.time, "perf_counter", lambda: next(clock))
    timer = mod.ExclusiveTimer()
    inner = timer.wrap("inner", lambda: None)
    outer = timer.wrap("outer", lambda: inner())
    outer()
    assert timer.total == {"inner": 2.0, "outer": 8.0}


def test_instrument_wraps_every_part_and_keeps_the_output():
    torch = pytest.importorskip("torch")
    mod = _module()
    root = Path(__file__).resolve().parents[1]
    bb = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, window=8, max_positions=512)
    cmr = mod.build(bb, "cmr", root, 160, {"cmr": {"k": 2, "capacity": 4}})
    x = torch.randint(0, 160, (1, 40))
    with torch.no_grad():
        before = cmr(x).logits
        timer = mod.ExclusiveTimer()
        mod.instrument(cmr.memory, timer)
        after = cmr(x).logits
    assert torch.equal(before, after)
    assert set(timer.total) == set(mod.PARTS)  # every part ran (a renamed method would fail here)


def test_overhead_profile_runs_both_profiles_as_composed(tmp_path):
    pytest.importorskip("torch")
    pd = pytest.importorskip("pandas")
    out = tmp_path / "profile.csv"
    _module().main(["--lengths", "256", "--repeats", "1", "--out", str(out)])
    df = pd.read_csv(out)
    head = df.drop_duplicates("profile").set_index("profile")
    assert list(head.index) == ["default", "paper"]
    assert (head.d_model["default"], head.n_layers["paper"], head.d_model["paper"]) == (64, 8, 512)  # conf/profile/*
    assert (df.cmr_over_window > 0).all() and {"reweave read (cross-attention + gate)"} <= set(df.part)


def _speed():
    return _load("speed")


def test_paper_shape_takes_the_paper_profiles_depth_window_and_memory_sizes():
    mod = _speed()
    bb, models = mod.shape_configs("paper", 256)
    assert (bb["d_model"], bb["n_layers"], bb["window"], bb["n_heads"], bb["d_ff"]) == (256, 8, 128, 16, 1024)
    assert (models["cmr"]["k"], models["cmr"]["capacity"], models["xl"]["mem_len"]) == (32, 256, 128)
    bb, models = mod.shape_configs("default", 64)
    assert (bb["n_layers"], bb["window"]) == (2, 16) and models["cmr"]["capacity"] != 256


def test_cmr_placements_are_timed_where_they_differ_from_the_shapes_own():
    mod = _speed()
    from pipeline.models.cmr import CMRConfig, resolve_cmr_layers

    _, models = mod.shape_configs("default", 64)
    assert not [v for v in models if v.startswith("cmr:")]  # 2 layers: one placement only
    bb, models = mod.shape_configs("paper", 64)
    extra = [v for v in models if v.startswith("cmr:")]
    assert len(extra) == 1 and set(extra) < set(mod.PLACEMENTS)
    cfg = lambda c: CMRConfig(**{k: v for k, v in c.items() if k in CMRConfig.__dataclass_fields__})  # noqa: E731
    own, other = (resolve_cmr_layers(cfg(models[v]), bb["n_layers"]) for v in ("cmr", extra[0]))
    assert own != other and {len(own[0]), len(other[0])} == {1, bb["n_layers"] - 1}  # one bank vs layered
    assert models[extra[0]]["capacity"] == models["cmr"]["capacity"] == 256  # only the placement differs


def _sweep(tmp_path, *args: str):
    """benchmarks/speed.py run with `args` into tmp_path: (its CSV as a frame, the CSV's path)."""
    pd = pytest.importorskip("pandas")
    out = tmp_path / "speed.csv"
    assert _speed().main([*args, "--out", str(out)]) == 0
    return pd.read_csv(out), out


def test_speed_sweep_times_the_other_placement_beside_cmr(tmp_path):
    df, out = _sweep(tmp_path, "--shapes", "paper", "--widths", "32", "--paper-lengths", "256", "--repeats", "1",
                     "--variants", "window,cmr")
    df = df.set_index("variant")
    (extra,) = [v for v in df.index if v.startswith("cmr:")]
    layered = "cmr:layered" if extra == "cmr:layered" else "cmr"
    one = "cmr" if layered == "cmr:layered" else extra
    # seven banks and seven reweaves read more than one of each: the counted work says so, whatever the clock does
    assert df.loc[layered, "flops_per_token"] > df.loc[one, "flops_per_token"] > df.loc["window", "flops_per_token"]
    assert f"{extra}/window at the paper shape" not in out.with_suffix(".md").read_text()  # d=512 only


def test_speed_sweep_writes_every_cell_and_says_what_it_did_not_run(tmp_path):
    pd = pytest.importorskip("pandas")
    df, out = _sweep(tmp_path, "--shapes", "default", "--widths", "32", "--lengths", "48,96", "--repeats", "2",
                     "--max-full-tokens", "48")
    assert len(df) == 2 * len(NAMES)  # every memory of the registry at every N
    full_long = df[(df.variant == "full") & (df.n_tokens == 96)].iloc[0]
    assert pd.isna(full_long.ms_per_token) and "quadratic" in full_long.note
    ran = df.dropna(subset=["ms_per_token"])
    assert (ran.flops_per_token > 0).all() and (ran.peak_mb > 0).all()
    assert (ran[ran.variant == "window"].ratio_to_window == 1.0).all()
    assert (ran.ratio_ci_low <= ran.ratio_to_window).all() and (ran.ratio_to_window <= ran.ratio_ci_high).all()
    # cmr reads banks on top of window's work: more FLOPs per token, and more parameters
    w, c = (ran[(ran.variant == v) & (ran.n_tokens == 96)].iloc[0] for v in ("window", "cmr"))
    assert c.flops_per_token > w.flops_per_token and c.params > w.params
    f = ran[(ran.variant == "full") & (ran.n_tokens == 48)].iloc[0]  # attention is counted: over 48 tokens, not 16
    assert f.flops_per_token > ran[(ran.variant == "window") & (ran.n_tokens == 48)].iloc[0].flops_per_token
    assert "cmr/window at the default shape, d=64" not in out.with_suffix(".md").read_text()  # d=32 only
    assert "ms/token at the longest N / the shortest, default d=32" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").is_file()


def test_targets_name_the_bar_and_whether_it_was_met():
    pd = pytest.importorskip("pandas")
    mod = _speed()
    rows = [{"shape": "default", "d_model": 64, "variant": v, "n_tokens": n, "ms_per_token": ms,
             "ratio_to_window": r} for v, n, ms, r in (("window", 500, 1.0, 1.0), ("cmr", 500, 1.1, 1.1),
                                                       ("window", 1000, 1.0, 1.0), ("cmr", 1000, 1.3, 1.3))]
    lines = mod.targets(pd.DataFrame(rows))
    assert lines[0] == "cmr/window at the default shape, d=64: 1.10-1.30x over N (target <= 1.15x: NOT met)"
    assert "cmr 1.18x" in lines[1] and "window 1.00x" in lines[1]
    rows = [{"shape": "paper", "d_model": 512, "variant": v, "n_tokens": 500, "ms_per_token": r, "ratio_to_window": r}
            for v, r in (("window", 1.0), ("cmr", 1.08), ("cmr:layered", 2.3))]
    lines = mod.targets(pd.DataFrame(rows))  # every placement of cmr gets its own line against the bar
    assert lines[0] == "cmr/window at the paper shape, d=512: 1.08-1.08x over N (target <= 1.1x: met)"
    assert lines[1] == "cmr:layered/window at the paper shape, d=512: 2.30-2.30x over N (target <= 1.1x: NOT met)"


def test_train_speed_times_every_shape_and_counts_its_flops(tmp_path):
    pd = pytest.importorskip("pandas")
    from pipeline.config import compose, to_params_yaml

    params = tmp_path / "params.yaml"
    params.write_text(to_params_yaml(compose(["profile=ci"])))
    mod = _load("train_speed")
    out = tmp_path / "train_speed.csv"
    assert mod.main(["--params", str(params), "--variants", "window,gdn", "--rounds", "1", "--warmup", "0",
                     "--vocab", "64", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert len(df) == 2 * len(mod.SHAPES) and set(df.variant) == {"window", "gdn"}
    assert (df.flops_per_token > 0).all() and (df.of_ceiling > 0).all() and (df.tokens_per_s > 0).all()
    assert (df[df.variant == "window"].ratio_to_window == 1.0).all()
    # window reads each segment alone: its counted work per token does not depend on the document's length
    w = df[df.variant == "window"].set_index("shape").flops_per_token
    assert w.max() == pytest.approx(w.min(), rel=0.05)
    assert out.with_suffix(".md").is_file()


def test_train_speed_against_a_revision_times_both_codes_in_turns(tmp_path):
    """--against REV: REV's code (from git archive) and this checkout's, one process of each in turns."""
    pd = pytest.importorskip("pandas")
    mod = _load("train_speed")
    out = tmp_path / "change.csv"
    assert mod.main(["--against", "HEAD", "--variants", "window", "--rounds", "1", "--warmup", "0",
                     "--repeats", "1", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df["shape"]) == list(mod.SHAPES) and set(df.variant) == {"window"}
    assert (df.ms_before > 0).all() and (df.ms_after > 0).all()
    assert (df.speedup - df.ms_before / df.ms_after).abs().max() < 1e-3
    assert "speedup = before / after" in out.with_suffix(".md").read_text()


def test_stacked_seeds_computes_what_the_separate_models_compute(tmp_path):
    """benchmarks/stacked_seeds.py: the seed-stacked window equals the study's models seed by seed (it raises
    otherwise), and every shape gets both timings."""
    pd = pytest.importorskip("pandas")
    from pipeline.config import compose, to_params_yaml

    params = tmp_path / "params.yaml"
    params.write_text(to_params_yaml(compose(["profile=ci"])))
    mod = _load("stacked_seeds")
    out = tmp_path / "stacked.csv"
    assert mod.main(["--params", str(params), "--seeds", "2", "--rounds", "1", "--warmup", "0", "--vocab", "64",
                     "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df["shape"]) == list(mod.SHAPES) and (df.max_logit_diff <= 1e-4).all()
    assert (df.ms_separate > 0).all() and (df.ms_stacked > 0).all()

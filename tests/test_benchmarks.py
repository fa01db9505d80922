"""benchmarks/profile_overhead.py: a part's time excludes the parts it calls; every CMR part it wraps exists."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_overhead.py"
    spec = importlib.util.spec_from_file_location("profile_overhead", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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

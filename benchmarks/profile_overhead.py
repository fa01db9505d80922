"""Where CMR's inference time goes, against `window` (issue: Table III at every scale).

One forward at a time, batch 1, no grad, for the default backbone and the `paper` profile's, with one
thread and with all threads. CMR's own work is timed by wrapping its parts on the built model (no change
to the model code): the scorer, the write projection, top-k capture (the rest of `_capture`), bank
selection (`_select`), the reweave read (`Reweave.forward`: cross-attention over the bank and its gate
together, one fused projection), the reweave plumbing around it (`_reweave` minus the read) and the
bank update between chunks (`end_chunk`). Each part's time is exclusive of the parts it calls
(perf_counter, median over repeats); "backbone and rest" is cmr's total minus the parts, to be compared
with window's total. torch.profiler's top operators by self CPU time are written beside them.

    python benchmarks/profile_overhead.py            # -> results/overhead_profile.csv, printed
"""

from __future__ import annotations

import argparse
import dataclasses
import csv
import io
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = {  # label -> (attribute path on CMRMemory, method name)
    "scorer": ("scorer", "forward"), "write projection": ("write", "forward"), "top-k capture": ("", "_capture"),
    "bank selection": ("", "_select"), "reweave read (cross-attention + gate)": ("reweave", "forward"),
    "reweave plumbing": ("", "_reweave"), "bank update (eviction)": ("", "end_chunk"),
}


class ExclusiveTimer:
    """Exclusive wall time per label: a label's time minus the time of labels it calls."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self.stack: list[list] = []

    def wrap(self, label, fn):
        def timed(*a, **kw):
            self.stack.append([label, 0.0])
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                dt = time.perf_counter() - t0
                _, child = self.stack.pop()
                self.total[label] = self.total.get(label, 0.0) + dt - child
                if self.stack:
                    self.stack[-1][1] += dt
        return timed


def instrument(cmr_memory, timer: ExclusiveTimer) -> None:
    for label, (attr, name) in PARTS.items():
        owner = getattr(cmr_memory, attr) if attr else cmr_memory
        targets = owner.values() if hasattr(owner, "values") else [owner]  # ModuleDicts: one per layer
        for t in targets:
            setattr(t, name, timer.wrap(label, getattr(t, name)))


def build(backbone: dict, variant: str, root: Path, vocab: int, extra: dict):
    from pipeline.config.schema import BackboneConfig
    from pipeline.models import build_model
    from pipeline.models.registry import config_class

    mem = {**dataclasses.asdict(config_class(variant)()), **extra.get(variant, {})}  # the memory's defaults
    return build_model(BackboneConfig(**backbone), mem, vocab).eval()


def profile_one(name: str, backbone: dict, extra: dict, N: int, threads: int, repeats: int, root: Path) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    window, cmr = build(backbone, "window", root, 160, extra), build(backbone, "cmr", root, 160, extra)
    timer = ExclusiveTimer()
    instrument(cmr.memory, timer)
    x = torch.randint(0, 160, (1, N))
    totals = {"window": [], "cmr": []}
    parts: list[dict[str, float]] = []
    with torch.no_grad():
        for r in range(repeats + 2):  # 2 warm-up rounds; variants in turns
            for v, m in (("window", window), ("cmr", cmr)):
                timer.total = {}
                t0 = time.perf_counter()
                m(x)
                dt = time.perf_counter() - t0
                if r >= 2:
                    totals[v].append(dt)
                    if v == "cmr":
                        parts.append(dict(timer.total))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            cmr(x)
    med = {v: statistics.median(t) * 1e3 for v, t in totals.items()}
    rows = []
    base = dict(profile=name, d_model=backbone["d_model"], n_layers=backbone["n_layers"], window=backbone["window"],
                N=N, threads=threads, window_ms=round(med["window"], 3), cmr_ms=round(med["cmr"], 3),
                cmr_over_window=round(med["cmr"] / med["window"], 3))
    spent = 0.0
    for label in PARTS:
        ms = statistics.median(p.get(label, 0.0) for p in parts) * 1e3
        spent += ms
        rows.append({**base, "part": label, "ms": round(ms, 3), "share_of_cmr": round(ms / med["cmr"], 3),
                     "share_of_extra": round(ms / max(med["cmr"] - med["window"], 1e-9), 3)})
    rest = med["cmr"] - spent
    rows.append({**base, "part": "backbone and rest", "ms": round(rest, 3), "share_of_cmr": round(rest / med["cmr"], 3),
                 "share_of_extra": ""})
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:5]
    for e in ops:
        rows.append({**base, "part": f"op {e.key}", "ms": round(e.self_cpu_time_total / 1e3, 3),
                     "share_of_cmr": "", "share_of_extra": ""})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/overhead_profile.csv")
    ap.add_argument("--lengths", default="1000")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    from pipeline.io import atomic_write_text

    root = Path(__file__).resolve().parents[1]
    from omegaconf import OmegaConf

    from pipeline.config import compose

    # each profile as conf/ composes it (its backbone and every memory's config, defaults filled in)
    setups = []
    for name in ("default", "paper"):
        cfg = OmegaConf.to_container(compose([f"profile={name}"]), resolve=True)
        setups.append((name, cfg["backbone"], cfg["models"]))
    rows = []
    for N in [int(n) for n in args.lengths.split(",")]:
        for name, bb, extra in setups:
            for threads in sorted({1, os.cpu_count() or 1}):
                rows += profile_one(name, bb, extra, N, threads, args.repeats, root)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(args.out, buf.getvalue())
    for r in rows:
        if not str(r["part"]).startswith("op "):
            print(f"{r['profile']:7} N={r['N']} threads={r['threads']} window {r['window_ms']:8.2f} ms  cmr "
                  f"{r['cmr_ms']:8.2f} ms ({r['cmr_over_window']:.2f}x)  {r['part']:40} {r['ms']:8.2f} ms "
                  f"{r['share_of_cmr']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

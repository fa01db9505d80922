"""Forward inference cost (ms/token) of every variant by document length, batch 1, no grad.

Variants are timed round-robin (one call of each per round) so that load from other processes
hits them alike; the reported number is the median over rounds. The CMR/window ratio is
computed per round and its median reported too (robust on a shared machine).

    python benchmarks/speed.py                                  # default backbone
    python benchmarks/speed.py --d-model 256 --n-layers 4 --window 64 --n-heads 4 --d-ff 1024
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/speed_benchmark.csv")
    ap.add_argument("--lengths", default="500,1000,1500,2000,2500")
    ap.add_argument("--variants", default="window,xl,full,cmr")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=160)
    ap.add_argument("--d-model", type=int)
    ap.add_argument("--n-layers", type=int)
    ap.add_argument("--n-heads", type=int)
    ap.add_argument("--d-ff", type=int)
    ap.add_argument("--window", type=int)
    ap.add_argument("--mem-len", type=int, help="xl mem_len (default: the config's)")
    ap.add_argument("--cmr", nargs="*", default=[], metavar="KEY=VALUE",
                    help="cmr overrides, e.g. reweave_layers=[3] capacity=64")
    ap.add_argument("--streaming", action="store_true", help="read segment by segment (chunk_segments=1)")
    args = ap.parse_args(argv)

    import torch
    import yaml

    from pipeline.io import atomic_write_text
    from pipeline.models import build_model
    from pipeline.models.config import BackboneConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    root = Path(__file__).resolve().parents[1]
    bb = yaml.safe_load((root / "conf/backbone/default.yaml").read_text())
    for key in ("d_model", "n_layers", "n_heads", "d_ff", "window"):
        if getattr(args, key) is not None:
            bb[key] = getattr(args, key)
    backbone = BackboneConfig(**bb)
    variants = args.variants.split(",")
    models = {}
    for v in variants:
        mem = yaml.safe_load((root / f"conf/model/{v}.yaml").read_text())
        if v == "xl" and args.mem_len:
            mem["mem_len"] = args.mem_len
        if v == "cmr":
            for kv in args.cmr:
                key, val = kv.split("=", 1)
                mem[key] = yaml.safe_load(val)
        models[v] = build_model(backbone, mem, args.vocab).eval()
    lengths = [int(n) for n in args.lengths.split(",")]
    chunk = 1 if args.streaming else None

    rows = []
    with torch.no_grad():
        for N in lengths:
            x = torch.randint(0, args.vocab, (1, N))
            times = {v: [] for v in variants}
            for r in range(args.warmup + args.repeats):
                for v in variants:
                    t0 = time.perf_counter()
                    models[v](x, chunk_segments=chunk)
                    if r >= args.warmup:
                        times[v].append((time.perf_counter() - t0) * 1000 / N)
            ratio = (
                statistics.median(c / w for c, w in zip(times["cmr"], times["window"]))
                if "cmr" in times and "window" in times
                else float("nan")
            )
            for v in variants:
                rows.append({
                    "variant": v, "n_tokens": N, "ms_per_token": round(statistics.median(times[v]), 5),
                    "ms_per_token_min": round(min(times[v]), 5),
                    "ratio_to_window": round(statistics.median(times[v]) / statistics.median(times["window"]), 3)
                    if "window" in times else float("nan"),
                    "cmr_over_window_paired": round(ratio, 3),
                    "params": models[v].num_parameters(), "memory_floats": models[v].memory_floats(),
                    "d_model": backbone.d_model, "n_layers": backbone.n_layers, "window": backbone.window,
                    "threads": args.threads, "streaming": args.streaming,
                })
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(args.out, buf.getvalue())

    print(f"backbone d={backbone.d_model} layers={backbone.n_layers} W={backbone.window} "
          f"threads={args.threads} streaming={args.streaming}; ms/token (median of {args.repeats})")
    print("N      " + "".join(f"{v:>10}" for v in variants) + "   cmr/window (paired median)")
    for N in lengths:
        sel = {r["variant"]: r for r in rows if r["n_tokens"] == N}
        line = f"{N:<7}" + "".join(f"{sel[v]['ms_per_token']:>10.4f}" for v in variants)
        if "cmr" in sel:
            line += f"   {sel['cmr']['cmr_over_window_paired']:.3f}"
        print(line)
    print("params: " + ", ".join(f"{v}={models[v].num_parameters()}" for v in variants))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

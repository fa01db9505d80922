"""How inference cost grows with width, depth and document length, for every variant (issue "Table III at
every scale"): batch 1, no grad, random weights and tokens (cost does not depend on what a model learned).

Two backbone shapes, each at every width d (heads d/16, d_ff 4d): `default` (the schema's defaults,
pipeline/schema.py: 2 layers, W 16) and `paper` (the paper profile's depth, window and memory sizes:
conf/profile/paper.yaml: 8 layers, W 128, cmr k 32 / capacity 256, xl mem_len 128). At each (shape, d, N)
the variants are timed in turns, one forward each per round (pipeline.evaluate.overhead.measure_round_robin),
so a slow spell of the shared machine lands on all alike; a ratio to `window` is taken per round and its
median and 95% bootstrap CI over rounds reported. FLOPs per token are counted, not estimated: one forward
under torch.utils.flop_counter.FlopCounterMode (matmuls, attention as dense SDPA, convolutions; elementwise
ops, softmax, top-k and gathers not counted) divided by N. Peak memory: live tensors of one forward beyond the weights (overhead.peak_forward_bytes).
`full` is quadratic in N: beyond --max-full-tokens it is not run, and its rows say so. The paper shape runs
at --paper-lengths (CPU time; on a GPU pass the long ones too).

    python benchmarks/speed.py                                   # the whole grid -> results/speed_benchmark.*
    python benchmarks/speed.py --shapes default --widths 64 --lengths 500,1000 --out /tmp/s.csv
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))



# cmr's capture/reweave placements timed beside the shape's own (`cmr`) wherever they differ from it: the paper's
# layered form (a bank after every block but the last, a reweave before every later block) and the default study's
# (one bank after block 0, one reweave before block 1: the placement whose recall the study checks on every seed).
# A 2-layer shape has only the one placement, so neither adds a row there.
PLACEMENTS = {"cmr:layered": {"capture_layers": None, "reweave_layers": None},
              "cmr:one": {"capture_layers": [0], "reweave_layers": [1]}}


def placements(backbone: dict, cmr: dict) -> dict[str, dict]:
    """{name: cmr config} of the PLACEMENTS whose (capture, reweave) layers differ from `cmr`'s at this depth."""
    from pipeline.models.cmr import CMRConfig, resolve_cmr_layers

    def layers(c: dict) -> tuple:
        fields = {k: v for k, v in c.items() if k in CMRConfig.__dataclass_fields__}
        return tuple(map(tuple, resolve_cmr_layers(CMRConfig(**fields), backbone["n_layers"])))

    return {name: {**cmr, **over} for name, over in PLACEMENTS.items() if layers({**cmr, **over}) != layers(cmr)}


def shape_configs(shape: str, d_model: int) -> tuple[dict, dict[str, dict]]:
    """(backbone, {variant: memory config}) of a shape at width d_model: the schema's defaults (pipeline/schema.py,
    defaults in one place), with the paper profile's depth, window and memory sizes for `paper`. `cmr:<placement>`
    entries: cmr with the PLACEMENTS that differ from the shape's own."""
    import dataclasses

    import yaml

    from pipeline.config.schema import BackboneConfig
    from pipeline.models.registry import config_classes

    backbone = dataclasses.asdict(BackboneConfig())
    models = {name: dataclasses.asdict(cls()) for name, cls in config_classes().items()}
    if shape == "paper":
        profile = yaml.safe_load((ROOT / "conf/profile/paper.yaml").read_text())
        backbone.update({k: v for k, v in profile["backbone"].items() if k in ("n_layers", "window")})
        for name, over in (profile.get("models") or {}).items():
            models[name].update(over)
    elif shape != "default":
        raise SystemExit(f"error: unknown shape {shape!r} (default, paper)")
    backbone.update(d_model=d_model, n_heads=max(1, d_model // 16), d_ff=4 * d_model, hf_model=None)
    return backbone, {**models, **placements(backbone, models["cmr"])}


def cpu_name() -> str:
    import os

    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "cpu")
    except OSError:
        name = "cpu"
    return f"{name} ({os.cpu_count()} cores)"


def flops_per_token(model, x) -> float:
    """Counted FLOPs of one forward / N. torch's counter has no formula for the CPU flash-attention kernel, so
    it gets torch's own SDPA one (dense: the causal mask earns no discount, as for every SDPA kernel)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x)
    return counter.get_total_flops() / x.shape[-1]


def ci(values: list[float]) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the median over rounds (scipy)."""
    import numpy as np
    from scipy import stats

    if len(values) < 2 or len(set(values)) == 1:
        return values[0], values[0]
    res = stats.bootstrap((np.asarray(values),), np.median, confidence_level=0.95, n_resamples=2000,
                          method="percentile", random_state=0)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def run_cell(shape: str, d: int, lengths: list[int], variants: list[str], args) -> list[dict]:
    import torch

    from pipeline.evaluate.overhead import measure_round_robin, peak_forward_bytes
    from pipeline.models import build_model
    from pipeline.config.schema import BackboneConfig

    torch.manual_seed(0)
    bb, mems = shape_configs(shape, d)
    backbone = BackboneConfig(**bb)
    if "cmr" in variants:  # its other placements beside it (none at a 2-layer shape)
        variants = variants + [v for v in mems if v.startswith("cmr:")]
    models = {v: build_model(backbone, mems[v], args.vocab).eval().to(args.device) for v in variants}
    if args.compile:  # each variant also as a copy with its blocks compiled, timed in the same rounds
        for v in variants:
            models[f"{v}+compile"] = compiled_copy(models[v])
    rows = []
    for n in lengths:
        run = [v for v in models if not (v.startswith("full") and n > args.max_full_tokens)]
        x = torch.randint(0, args.vocab, (1, n)).to(args.device)
        res = measure_round_robin({v: models[v] for v in run}, [n], lambda _: x, warmup=args.warmup,
                                  repeats=args.repeats, measure_memory=False, device=args.device)
        base = res["window"]["ms_per_token_repeats"][str(n)]
        for v in models:
            row = {"device": args.device_name, "shape": shape, "d_model": d, "n_layers": backbone.n_layers, "window": backbone.window,
                   "variant": v, "n_tokens": n, "params": models[v].num_parameters(),
                   "memory_floats": models[v].memory_floats(), "threads": args.threads, "repeats": args.repeats}
            if v not in run:
                rows.append({**row, "note": f"not run: full is quadratic in N (> --max-full-tokens {args.max_full_tokens})"})
                continue
            ms = res[v]["ms_per_token_repeats"][str(n)]
            ratios = [a / b for a, b in zip(ms, base)]  # paired: the same round
            lo, hi = ci(ratios)
            rows.append({**row, "ms_per_token": statistics.median(ms), "tokens_per_s": 1000.0 / statistics.median(ms),
                         "ratio_to_window": statistics.median(ratios), "ratio_ci_low": lo, "ratio_ci_high": hi,
                         "flops_per_token": flops_per_token(models[v.removesuffix("+compile")], x),
                         "peak_mb": peak_forward_bytes(models[v], x) / 1e6, "note": ""})
        print(f"{shape} d={d} N={n}: " + ", ".join(
            f"{r['variant']} {r['ms_per_token']:.4f} ms ({r['ratio_to_window']:.2f}x)" for r in rows[-len(models):]
            if r.get("ms_per_token") is not None), flush=True)
    return rows


def compiled_copy(model):
    """The model with each decoder block compiled (torch.compile, inductor; the memories' own Python -
    banks, top-k, segment loop - stays eager: its data-dependent shapes would break the graph anyway)."""
    import copy

    import torch._dynamo

    torch._dynamo.config.cache_size_limit = 64  # every block of every model shares Block.forward's cache
    model = copy.deepcopy(model)
    for block in model.blocks:
        block.compile()
    return model


def targets(df) -> list[str]:
    """The issue's targets, each with its measured value."""
    lines = []
    # the bars: the default shape's from the issue "Table III at every scale", d=512's from "Twice the study per hour"
    # (the paper's +5-11%, measured on CPU at one thread)
    for shape, d, bar in (("default", 64, 1.15), ("paper", 512, 1.10)):
        cell = df[(df["shape"] == shape) & (df.d_model == d)]
        base = cell[cell.variant == "window"]
        for v in sorted({v for v in cell.variant if v == "cmr" or v.startswith("cmr:")}):
            sel = cell[cell.variant == v].dropna(subset=["ratio_to_window"])
            if not len(sel):
                continue
            worst = sel.ratio_to_window.max()
            line = (f"{v}/window at the {shape} shape, d={d}: {sel.ratio_to_window.min():.2f}-{worst:.2f}x over N "
                    f"(target <= {bar}x: {'met' if worst <= bar else 'NOT met'})")
            if "flops_per_token" in cell:  # what the mechanism itself adds: a floor no implementation goes below
                flops = sel.set_index("n_tokens").flops_per_token / base.set_index("n_tokens").flops_per_token
                line += f"; counted FLOPs {flops.min():.2f}-{flops.max():.2f}x window's"
            lines.append(line)
    for (shape, d), g in df.dropna(subset=["ms_per_token"]).groupby(["shape", "d_model"]):
        growth = []
        for v, gv in g.groupby("variant"):
            gv = gv.sort_values("n_tokens")
            if len(gv) > 1:
                growth.append(f"{v} {gv.ms_per_token.iloc[-1] / gv.ms_per_token.iloc[0]:.2f}x")
        lines.append(f"ms/token at the longest N / the shortest, {shape} d={d}: " + ", ".join(growth))
    return lines


def colour(variant: str) -> str:
    from pipeline.models.registry import NAMES

    names = list(NAMES)
    return f"C{names.index(variant) if variant in names else len(names)}"


def plot(df, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted(df["shape"].unique())
    fig, axes = plt.subplots(2, len(shapes), figsize=(6 * len(shapes), 8), squeeze=False)
    for j, shape in enumerate(shapes):
        s = df[(df["shape"] == shape)].dropna(subset=["ms_per_token"])
        n_ref = s.n_tokens.max()
        ax = axes[0][j]
        for v, g in s[(s.n_tokens == n_ref) & (s.variant != "window")].groupby("variant"):
            g = g.sort_values("d_model")
            ax.errorbar(g.d_model, g.ratio_to_window, yerr=[g.ratio_to_window - g.ratio_ci_low,
                                                           g.ratio_ci_high - g.ratio_to_window], label=v, marker="o",
                        color=colour(v))
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="d_model", ylabel="ms/token / window's",
               title=f"{shape} shape, N={n_ref}")
        ax.legend(fontsize=8)
        ax = axes[1][j]
        d_ref = s.d_model.max()
        for v, g in s[s.d_model == d_ref].groupby("variant"):
            g = g.sort_values("n_tokens")
            ax.plot(g.n_tokens, g.ms_per_token, label=v, marker="o", color=colour(v))
        ax.set(xscale="log", yscale="log", xlabel="N (tokens)", ylabel="ms/token", title=f"{shape} shape, d={d_ref}")
        ax.legend(fontsize=8)
    fig.suptitle(f"Inference cost, batch 1, {df.device.iloc[0]}, {int(df.threads.iloc[0])} thread(s)")
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="default,paper")
    ap.add_argument("--widths", default="64,128,256,512")
    ap.add_argument("--lengths", default="500,1000,2500,5000,10000")
    ap.add_argument("--paper-lengths", default="500,1000,2500",
                    help="N for the paper shape (on a 2-core CPU a forward at d=512, N=10,000 takes ~20 s)")
    ap.add_argument("--variants", default=None, help="comma-separated (default: every memory of the registry)")
    ap.add_argument("--max-full-tokens", type=int, default=2500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=160)
    ap.add_argument("--compile", action="store_true", help="also time each variant with torch.compile'd blocks "
                                                            "(rows '<variant>+compile', ratios to eager window)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (the card is named in every row)")
    ap.add_argument("--out", default="results/speed_benchmark.csv", help="CSV; the plot and a .md beside it")
    ap.add_argument("--replot", action="store_true", help="only redo the .md and the plot from the CSV at --out")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    from pipeline.io import atomic_write_text

    out = Path(args.out)
    if args.replot:
        return summarize(pd.read_csv(out), out)
    torch.set_num_threads(args.threads)
    args.device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu_name()
    from pipeline.models.registry import NAMES

    variants = args.variants.split(",") if args.variants else list(NAMES)
    if "window" not in variants:
        variants.insert(0, "window")  # every ratio is to window
    rows = []
    for shape in args.shapes.split(","):
        for d in (int(w) for w in args.widths.split(",")):
            lengths = args.paper_lengths if shape == "paper" else args.lengths
            rows += run_cell(shape, d, [int(n) for n in lengths.split(",")], variants, args)
    df = pd.DataFrame(rows)
    atomic_write_text(out, df.to_csv(index=False, float_format="%.5g"))
    return summarize(df, out)


def summarize(df, out: Path) -> int:
    """The targets (.md beside the CSV) and the plot (.png)."""
    from pipeline.io import atomic_write_text

    lines = targets(df)
    atomic_write_text(out.with_suffix(".md"), "\n".join(f"- {ln}" for ln in lines) + "\n")
    plot(df, out.with_suffix(".png"))
    print("\n".join(lines))
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

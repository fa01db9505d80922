"""How fast each memory trains on this CPU, and how far that is from what the CPU can compute.

For every memory of the registry at the study's shape (params.yaml: backbone and each memory's config), one
training step as the study takes it (forward with logits at the query positions, cross-entropy, backward,
gradient clipping, AdamW), without Lightning, on the study's three batch shapes (train.max_batch_tokens caps a
batch): 2-segment documents (the curriculum's first phase), 6-segment documents (the short pool) and 32-segment
documents (the long pool). The memories are timed in turns, one step each per round, so a slow spell of the shared
machine lands on all alike; the median over rounds is reported. FLOPs per token are counted (one forward and
backward under torch.utils.flop_counter.FlopCounterMode: matmuls, attention, convolutions; elementwise ops not
counted); the ceiling is this machine's measured float32 GEMM rate at the model's own largest GEMM shapes, so
`of_ceiling` is the share of the reachable rate a memory's training step gets. One torch thread: the study runs
one process per seed.

    python benchmarks/train_speed.py                       # -> results/train_speed.{csv,md}
    python benchmarks/train_speed.py --rounds 3 --variants window,cmr --out /tmp/t.csv
    python benchmarks/train_speed.py --against REV --variants rmt,xl   # -> results/train_speed_change.{csv,md}

`--against REV` compares this checkout's code with REV's: the two run in turns, one process of each at a time
(each process timing its own memories in turns as above), `--repeats` times; the ratio of the medians is the change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {"2-segment": 2, "6-segment": 6, "32-segment": 32}  # documents of n segments of backbone.window tokens
QUERIES = 4  # answer positions per document (the study's far facts)


def study_models(params: Path, names: list[str]) -> tuple[object, dict, object]:
    """(backbone, {variant: memory config}, train config) of the study's params.yaml."""
    from pipeline.config import load_params
    from pipeline.models.registry import typed_models

    cfg = load_params(params)
    cfg = typed_models(cfg, [n for n in names if n in cfg.models])
    return cfg.backbone, {n: cfg.models[n] for n in names if n in cfg.models}, cfg.train


def batch(backbone, train, n_seg: int, vocab: int, seed: int = 0):
    """Token ids [B, N] and query positions [B, QUERIES] of one training batch of n_seg-segment documents."""
    import torch

    n = n_seg * backbone.window
    b = min(int(train.batch_size), max(1, int(train.max_batch_tokens or 10**9) // n))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, n), generator=g)
    query_pos = torch.sort(torch.randint(n // 2, n, (b, QUERIES), generator=g), dim=1).values
    return ids, query_pos


class Step:
    """One model with its optimizer: `run()` is one training step."""

    def __init__(self, backbone, mem, train, vocab: int, ids, query_pos):
        import torch

        from pipeline.models import build_model

        torch.manual_seed(0)
        self.model = build_model(backbone, mem, vocab).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=float(train.lr), betas=(train.beta1, train.beta2),
                                     weight_decay=float(train.weight_decay))
        self.clip, self.ids, self.qpos = float(train.grad_clip), ids, query_pos
        self.target = ids.gather(1, query_pos)  # any token: cost does not depend on what is learned

    def loss(self):
        import torch.nn.functional as F

        logits = self.model(self.ids, logits_at=self.qpos).logits
        return F.cross_entropy(logits.flatten(0, 1), self.target.flatten())

    def run(self) -> float:
        import torch

        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.loss().backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        return time.perf_counter() - t0

    def flops(self) -> float:
        """Counted FLOPs of one forward and backward (the optimizer's elementwise update is not counted)."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

        def fwd(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)

        def bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
            return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

        ops = torch.ops.aten
        mapping = {ops._scaled_dot_product_flash_attention_for_cpu: fwd,
                   ops._scaled_dot_product_flash_attention_for_cpu_backward: bwd}
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            self.loss().backward()
        self.opt.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())


def gemm_ceiling(backbone, tokens: int, repeats: int = 20) -> float:
    """This machine's float32 GEMM rate (FLOP/s, one thread) at the model's largest shapes: the MLP's
    [tokens, d] x [d, d_ff] and back, the best of `repeats`."""
    import torch

    d, f = backbone.d_model, backbone.d_ff
    a, w1, w2 = torch.randn(tokens, d), torch.randn(d, f), torch.randn(f, d)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        h = a @ w1
        h @ w2
        best = max(best, 4.0 * tokens * d * f / (time.perf_counter() - t0))
    return best


def measure(names: list[str], params: Path, rounds: int, warmup: int, vocab: int) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    backbone, mems, train = study_models(params, names)
    rows = []
    for shape, n_seg in SHAPES.items():
        ids, qpos = batch(backbone, train, n_seg, vocab)
        steps = {v: Step(backbone, m, train, vocab, ids, qpos) for v, m in mems.items()}
        times: dict[str, list[float]] = {v: [] for v in steps}
        for r in range(warmup + rounds):
            for v, s in steps.items():
                t = s.run()
                if r >= warmup:
                    times[v].append(t)
        ceiling = gemm_ceiling(backbone, ids.numel())
        for v, s in steps.items():
            sec = statistics.median(times[v])
            tps = ids.numel() / sec
            flops_tok = s.flops() / ids.numel()
            rows.append({"variant": v, "shape": shape, "batch": f"{ids.shape[0]}x{ids.shape[1]}",
                         "ms_per_step": round(1e3 * sec, 2), "tokens_per_s": round(tps, 1),
                         "flops_per_token": round(flops_tok, 1), "gflop_per_s": round(tps * flops_tok / 1e9, 3),
                         "gemm_ceiling_gflop_per_s": round(ceiling / 1e9, 2),
                         "of_ceiling": round(tps * flops_tok / ceiling, 4),
                         "ratio_to_window": None, "rounds": rounds, "threads": 1,
                         "params": sum(p.numel() for p in s.model.parameters()),
                         "memory_floats": s.model.memory_floats()})
    base = {r["shape"]: r["ms_per_step"] for r in rows if r["variant"] == "window"}
    for r in rows:
        r["ratio_to_window"] = round(r["ms_per_step"] / base[r["shape"]], 3) if r["shape"] in base else None
    return rows


def against(rev: str, names: list[str], rounds: int, warmup: int, repeats: int, out: Path) -> "pd.DataFrame":
    """ms per step of REV's code and this checkout's, measured in alternating processes (REV from `git archive`)."""
    import subprocess
    import tempfile

    import pandas as pd

    runs: dict[str, list[pd.DataFrame]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        old.mkdir()
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        for i in range(repeats):
            for label, tree in (("before", old), ("after", ROOT)):
                csv = Path(tmp) / f"{label}{i}.csv"
                subprocess.run([sys.executable, str(tree / "benchmarks" / "train_speed.py"), "--variants", ",".join(names),
                                "--rounds", str(rounds), "--warmup", str(warmup), "--out", str(csv)],
                               cwd=tree, check=True, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True)
                runs[label].append(pd.read_csv(csv))
    keys = ["variant", "shape"]
    med = {k: pd.concat(v).groupby(keys, sort=False)["ms_per_step"].median() for k, v in runs.items()}
    df = pd.DataFrame({"ms_before": med["before"], "ms_after": med["after"]}).reset_index()
    df["speedup"] = (df["ms_before"] / df["ms_after"]).round(3)
    if "window" in names:  # a control whose code a speed change leaves alone: what the machine's drift alone gives
        control = df[df.variant == "window"].set_index("shape")["speedup"]
        df["speedup_vs_window"] = (df["speedup"] / df["shape"].map(control)).round(3)
    df["before"], df["repeats"] = rev, repeats
    return df


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from pipeline.io import atomic_write_text
    from pipeline.models.registry import NAMES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--variants", default=None, help="comma-separated (default: every memory of the registry)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=700, help="vocabulary size (the LM head is read at the query "
                                                           "positions only, so it barely matters)")
    ap.add_argument("--out", default=None, help="default: results/train_speed.csv "
                                                 "(with --against: results/train_speed_change.csv)")
    ap.add_argument("--against", default=None, metavar="REV", help="compare with this git revision's code")
    ap.add_argument("--repeats", type=int, default=3, help="with --against: processes of each, in turns")
    args = ap.parse_args(argv)
    names = args.variants.split(",") if args.variants else list(NAMES)
    if args.against:
        out = Path(args.out or ROOT / "results" / "train_speed_change.csv")
        df = against(args.against, names, args.rounds, args.warmup, args.repeats, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, df.to_csv(index=False))
        md = (f"Training step of this code against {args.against}'s (benchmarks/train_speed.py --against): ms per step, "
              f"median over {args.repeats} processes of each run in turns, each the median of {args.rounds} rounds; "
              "speedup = before / after; speedup_vs_window: divided by window's own (the control: a change that leaves "
              "window's code alone should give it 1.0, and what it gives instead is the machine's drift).\n\n" + df.to_markdown(index=False))
        atomic_write_text(out.with_suffix(".md"), md + "\n")
        print(df.to_string(index=False))
        return 0
    args.out = args.out or str(ROOT / "results" / "train_speed.csv")
    df = pd.DataFrame(measure(names, Path(args.params), args.rounds, args.warmup, args.vocab))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, df.to_csv(index=False))
    md = ("Training step per memory (forward at the query positions, backward, clipping, AdamW; no Lightning), one "
          f"thread, median of {args.rounds} rounds timed in turns; `of_ceiling`: achieved GFLOP/s over this machine's "
          "float32 GEMM rate at the model's MLP shapes (benchmarks/train_speed.py).\n\n" + df.to_markdown(index=False))
    atomic_write_text(out.with_suffix(".md"), md + "\n")
    print(df[["variant", "shape", "ms_per_step", "tokens_per_s", "gflop_per_s", "of_ceiling", "ratio_to_window"]]
          .to_string(index=False))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

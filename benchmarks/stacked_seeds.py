"""Would a model written for stacked seeds train a variant's seeds faster than one process per seed?

A measurement, not a training path: `window`'s decoder written once with a leading seed axis on every weight
(embedding [S, V, D], each linear layer a batched matmul over [S, B*T, D], layer norms and the short convolution per
seed, the seeds folded into the batch for attention) against the S models of the study's own code
(pipeline.models.build_model), each seed with its own batch of the same shape. Both compute the same losses from
the same weights (checked first); then one training step of each (forward at the query positions, backward,
per-seed gradient clipping, AdamW) is timed in turns, one thread, median over rounds. torch.func's vmap was measured
first and ran slower (docs/RECIPE.md, "Time budget").

    python benchmarks/stacked_seeds.py [--seeds 3] [--rounds 10]     # -> results/stacked_seeds.{csv,md}
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from train_speed import SHAPES, batch, study_models  # noqa: E402


class StackedWindow(torch.nn.Module):
    """S `window` models as one: every parameter of pipeline.models' decoder with a leading seed axis."""

    def __init__(self, models: list[torch.nn.Module]):
        super().__init__()
        m0 = models[0]
        self.S, self.b = len(models), m0.backbone_cfg
        self.n_heads = m0.blocks[0].attn.n_heads
        self.rotary = m0.blocks[0].attn.rotary
        self.kernel = m0.blocks[0].conv.kernel if m0.blocks[0].conv is not None else 0
        names = [n for n, _ in m0.named_parameters()]
        self.names = names
        self.p = torch.nn.ParameterDict({n.replace(".", "__"): torch.nn.Parameter(
            torch.stack([dict(m.named_parameters())[n].detach() for m in models]).clone()) for n in names})

    def w(self, name: str) -> torch.Tensor:
        return self.p[name.replace(".", "__")]

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:  # x: [S, M, Din]
        w = self.w(f"{name}.weight")
        bias = self.p.get(f"{name}.bias".replace(".", "__"))
        return torch.bmm(x, w.transpose(1, 2)) if bias is None else torch.baddbmm(bias[:, None, :], x, w.transpose(1, 2))

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        y = F.layer_norm(x, x.shape[-1:])
        return y * self.w(f"{name}.weight")[:, None, :] + self.w(f"{name}.bias")[:, None, :]

    def forward(self, ids: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """ids [S, B, N], query_pos [S, B, Q] -> logits [S, B, Q, V]; documents read window by window."""
        from pipeline.models.transformer import apply_rotary

        S, B, N = ids.shape
        T, D, H = self.b.window, self.b.d_model, self.n_heads
        hd, C = D // H, N // T
        emb = self.w("tok_emb.weight")  # [S, V, D]
        V = emb.shape[1]
        x = F.embedding(ids + (torch.arange(S) * V)[:, None, None], emb.reshape(S * V, D))  # [S, B, N, D]
        x = x.reshape(S, B * C * T, D)  # each window a row of B*C: [S, B*C*T, D]
        for l in range(self.b.n_layers):
            pre = f"blocks.{l}"
            xn = self.norm(x, f"{pre}.ln1")
            if self.kernel:  # the short convolution per seed: seeds x channels as one depthwise convolution
                u = xn.view(S, B * C, T, D).permute(1, 0, 3, 2).reshape(B * C, S * D, 1, T)
                u = F.pad(u, (self.kernel - 1, 0))
                wk = self.w(f"{pre}.conv.weight").reshape(S * D, 1, 1, self.kernel)
                y = F.conv2d(u, wk, groups=S * D).view(B * C, S, D, T).permute(1, 0, 3, 2).reshape(S, -1, D)
                xn = xn + y
            qkv = self.linear(xn, f"{pre}.attn.qkv").view(S * B * C, T, 3, H, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv
            if self.rotary is not None:
                q, k = apply_rotary(qkv[:2], self.rotary.tables(T, x.device))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(S, -1, D)
            x = x + self.linear(a, f"{pre}.attn.proj")
            x = x + self.linear(F.gelu(self.linear(self.norm(x, f"{pre}.ln2"), f"{pre}.fc")), f"{pre}.out")
        h = x.view(S, B, N, D).gather(2, query_pos[..., None].expand(-1, -1, -1, D))  # [S, B, Q, D]
        h = self.norm(h.reshape(S, -1, D), "ln_f")
        head = self.w("head.weight") if "head.weight" in self.names else emb
        return torch.bmm(h, head.transpose(1, 2)).view(S, B, -1, V)


def clip_per_seed(params: list[torch.Tensor], max_norm: float) -> None:
    norms = torch.stack([p.grad.flatten(1).pow(2).sum(1) for p in params]).sum(0).sqrt()  # [S]
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(scale.view(-1, *[1] * (p.dim() - 1)))


def measure(seeds: int, rounds: int, warmup: int, vocab: int, params: Path) -> list[dict]:
    from pipeline.models import build_model

    torch.set_num_threads(1)
    backbone, mems, train = study_models(params, ["window"])
    rows = []
    for shape, n_seg in SHAPES.items():
        data = [batch(backbone, train, n_seg, vocab, seed=s) for s in range(seeds)]
        ids = torch.stack([d[0] for d in data])
        qpos = torch.stack([d[1] for d in data])
        target = ids.gather(2, qpos)
        models = []
        for s in range(seeds):
            torch.manual_seed(s)
            models.append(build_model(backbone, mems["window"], vocab).train())
        stacked = StackedWindow(models)
        with torch.no_grad():  # the same function of the same weights
            ref = torch.stack([m(ids[s], logits_at=qpos[s]).logits for s, m in enumerate(models)])
            err = (stacked(ids, qpos) - ref).abs().max().item()
        if err > 1e-4:
            raise RuntimeError(f"stacked model differs from the separate ones by {err}")
        opt_kw = dict(lr=float(train.lr), betas=(train.beta1, train.beta2), weight_decay=float(train.weight_decay))
        opts = [torch.optim.AdamW(m.parameters(), **opt_kw) for m in models]
        sopt = torch.optim.AdamW(stacked.parameters(), **opt_kw)
        clip = float(train.grad_clip)

        def separate() -> float:
            t0 = time.perf_counter()
            for s, (m, o) in enumerate(zip(models, opts)):
                o.zero_grad(set_to_none=True)
                logits = m(ids[s], logits_at=qpos[s]).logits
                F.cross_entropy(logits.flatten(0, 1), target[s].flatten()).backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
                o.step()
            return time.perf_counter() - t0

        def together() -> float:
            t0 = time.perf_counter()
            sopt.zero_grad(set_to_none=True)
            logits = stacked(ids, qpos)  # each seed's mean loss, summed: each seed's gradient is its own
            F.cross_entropy(logits.flatten(1, 2).transpose(1, 2), target.flatten(1), reduction="none").mean(1).sum().backward()
            clip_per_seed(list(stacked.parameters()), clip)
            sopt.step()
            return time.perf_counter() - t0

        times: dict[str, list[float]] = {"separate": [], "stacked": []}
        for r in range(warmup + rounds):
            a, b = separate(), together()
            if r >= warmup:
                times["separate"].append(a)
                times["stacked"].append(b)
        sep, stk = (statistics.median(times[k]) * 1e3 for k in ("separate", "stacked"))
        rows.append({"variant": "window", "shape": shape, "batch": f"{ids.shape[1]}x{ids.shape[2]}", "seeds": seeds,
                     "ms_separate": round(sep, 2), "ms_stacked": round(stk, 2), "speedup": round(sep / stk, 3),
                     "max_logit_diff": float(f"{err:.2e}"), "rounds": rounds, "threads": 1})
    return rows


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from pipeline.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=700)
    ap.add_argument("--out", default=str(ROOT / "results" / "stacked_seeds.csv"))
    args = ap.parse_args(argv)
    df = pd.DataFrame(measure(args.seeds, args.rounds, args.warmup, args.vocab, Path(args.params)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, df.to_csv(index=False))
    md = (f"`window`'s training step for {args.seeds} seeds: the study's models one after another (`ms_separate`) "
          f"against one model with every weight stacked over the seeds (`ms_stacked`), timed in turns, one thread, "
          f"median of {args.rounds} rounds (benchmarks/stacked_seeds.py).\n\n" + df.to_markdown(index=False))
    atomic_write_text(out.with_suffix(".md"), md + "\n")
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

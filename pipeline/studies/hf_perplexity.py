"""`python -m pipeline.studies.hf_perplexity --params F`: what a memory costs a pretrained LM's language modelling.

For every variant and seed of the run's `study` (trained checkpoints under experiments_dir/train), the mean
next-token loss on the evaluation's recall documents of each length (`--lengths`, `--docs` each), over every
prediction except the answers to planted queries (those are recall, scored by the evaluation): the filler text,
facts and queries around them. The bare LM is the `window` variant (its forward is the LM's own on each window);
a memory that disturbs the LM's text shows as a higher loss on the same tokens. Writes
<results_dir>/tables/perplexity.{csv,md}: per run and length, the tokens scored, mean loss, perplexity, and
each run's perplexity over the bare LM's (same documents, same seed's data).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from pipeline.errors import DataError

BASE = "window"  # the bare LM


def document_loss(model, ids, query_pos) -> tuple[float, int]:
    """Summed next-token loss of one document and the number of predictions scored (answers left out)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(ids, dtype=torch.long)[None]
    with torch.no_grad():
        logits = model(x).logits[0, :-1].float()
    keep = torch.ones(logits.size(0), dtype=torch.bool)
    keep[torch.as_tensor(list(query_pos), dtype=torch.long)] = False  # the logits at a query predict its answer
    loss = F.cross_entropy(logits[keep], x[0, 1:][keep], reduction="sum")
    return float(loss), int(keep.sum())


def measure(cfg, lengths: Sequence[int], docs: int):
    """Rows (variant, seed, n_tokens, docs, tokens, loss, ppl) for every trained run of the study."""
    import math

    import torch

    from pipeline.data.store import load_split
    from pipeline.models.checkpoint import load_trained

    torch.set_num_threads(int(cfg.train.threads))
    exp = Path(cfg.paths.experiments_dir) / "train"
    splits = {n: load_split(cfg.paths.data_dir, f"recall_{n}").select(range(docs)) for n in lengths}
    rows = []
    for v in cfg.study.variants:
        for s in cfg.study.seeds:
            run = exp / v / f"s{s}"
            if not (run / "checkpoints" / "best.ckpt").is_file():
                raise DataError(f"no trained run at {run}: train {v} seed {s} first")
            model, _ = load_trained(run)
            for n, split in splits.items():
                total, count = 0.0, 0
                for d in split:
                    loss, k = document_loss(model, d["input_ids"], d["query_pos"])
                    total, count = total + loss, count + k
                rows.append({"variant": v, "seed": int(s), "n_tokens": int(n), "docs": len(split),
                             "tokens": count, "loss": total / count, "ppl": math.exp(total / count)})
    return rows


def table(rows):
    """The rows with each run's perplexity over the bare LM's on the same length (NaN without a bare LM)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    base = df[df.variant == BASE].groupby("n_tokens").ppl.mean()
    df["ppl_vs_bare_lm"] = df.ppl / df.n_tokens.map(base)
    return df


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline import stage_cli
    from pipeline.io import atomic_write_text

    ap = stage_cli.parser("hf-perplexity", __doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[500, 2500], help="document lengths (recall_<N>)")
    ap.add_argument("--docs", type=int, default=20, help="documents per length")
    args = stage_cli.parse(ap, argv)

    def body() -> None:
        cfg = stage_cli.load_config(args)
        df = table(measure(cfg, args.lengths, args.docs))
        out = Path(cfg.paths.results_dir) / "tables"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "perplexity.csv", df.to_csv(index=False, float_format="%.4f"))
        atomic_write_text(out / "perplexity.md", df.to_markdown(index=False, floatfmt=".3f") + "\n")
        print(df.to_string(index=False))

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())

"""Attention allocation (METHOD.md section 4, row `attention`; the abstract's "more structured
attention allocation" claim): where each layer looks at the query positions of recall documents.

Per (document, query, layer) we record, from `model(ids, return_attention=True)`:

- entropy:         self-attention entropy in nats, averaged over heads. Its ceiling is
                   log(n_visible) (n_visible = columns the query can see: 16 for window, up to N for
                   full), so `entropy_norm` = entropy / log(n_visible) is the number to compare across
                   variants.
- mass_fact:       self-attention mass on the queried fact's tokens, averaged over heads;
                   `fact_visible` says whether any of them is a column the query can see at all (for
                   window and cmr only when the fact shares the query's segment). The fact's tokens
                   are its whole template span ('is {E} {V} .': all four), not only entity and value:
                   a column or slot holds a token's *state*, which has already mixed the tokens
                   before it, and the trained CMR was seen to capture (and read) the fact's closing
                   '.' rather than its value token.
- mass_any_fact:   the same over the tokens of every fact in the document: "looks at facts" vs
                   "looks at the right fact".
- mass_memory:     how much of the layer goes to memory. xl: self-attention mass on the cache
                   columns. cmr (reweave layers): the reweave gate g (mean over channels, in [0, 1]),
                   0 when the bank is still empty. We report the gate, not the cross-attention's own
                   mass, because that cross-attention is over slots only and sums to 1 whenever a
                   slot exists; the gate is how much of that read enters h <- h + g * W_o r.
                   NaN where a layer has no memory (window, full, cmr layers without reweave).
- cmr reweave layers also: n_slots (filled slots read), entropy_memory (entropy of the slot
  cross-attention, heads averaged), mass_fact_slots (its mass on slots captured from the fact's
  tokens, not gate-weighted), mass_any_fact_slots (on slots from any fact's tokens) and
  fact_in_memory (some slot was captured from the queried fact's tokens).
- cmr's misses taken apart (the `memory` table of the report; far queries): captured_value / captured_any
  (the fact's value token / any of its tokens was ever written to a bank before the query's segment,
  whether or not it was evicted later), value_in_memory / fact_in_memory (still in the bank the query
  reads: retained), top_slot_on_fact (the query's highest-attention slot, heads averaged, holds one of the
  fact's tokens: the read found it), and correct (answered). In that order each stage conditions on the
  one before it: a loss is the scorer's (never captured), eviction's (captured, not retained), the read's
  (retained, not attended) or the binding's (attended, wrong answer).

`python -m pipeline.evaluate.attention --variant cmr [--seeds 0 1 2]` writes
experiments/attention/<variant>/s<seed>/{attention.parquet, summary.json} atomically.
`load_attention`, `attention_table` and `plot_attention` are what the report calls.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.errors import ConfigError, DataError
from pipeline.config.evaluate import attention_lengths

log = logging.getLogger(__name__)

# Columns of attention.parquet, in this order.
COLUMNS = [
    "variant", "seed", "length", "doc_id", "query_idx", "query_type", "distance", "distance_segments",
    "correct", "layer", "n_visible", "entropy", "entropy_norm", "mass_fact", "mass_any_fact", "fact_visible",
    "mass_memory", "n_slots", "entropy_memory", "mass_fact_slots", "mass_any_fact_slots", "fact_in_memory",
    "captured_value", "captured_any", "value_in_memory", "top_slot_on_fact",
]
FLAGS = ("correct", "fact_visible", "fact_in_memory", "captured_value", "captured_any", "value_in_memory",
         "top_slot_on_fact")
# What attention_table averages (with a bootstrap CI over documents).
METRICS = ("entropy", "entropy_norm", "mass_fact", "mass_any_fact", "mass_memory", "mass_fact_slots",
           "mass_any_fact_slots", "entropy_memory")


# ------------------------------------------------------------------------------- metrics (pure)
def entropy(probs, valid=None):
    """Entropy in nats of attention rows, averaged over heads.

    probs [..., H, K] (rows sum to 1 over the columns a query sees); valid bool [..., K]: columns
    to count (others, e.g. padding or causally hidden ones, are ignored). -> [...]
    """
    import torch

    p = probs if valid is None else probs * valid.unsqueeze(-2)
    return -torch.special.xlogy(p, p).sum(-1).mean(-1)


def column_mass(probs, columns):
    """Attention mass on a set of columns, averaged over heads. probs [..., H, K]; columns bool [..., K]."""
    return (probs * columns.unsqueeze(-2)).sum(-1).mean(-1)


def position_columns(col_pos, positions):
    """bool [..., K]: which columns hold one of `positions`. col_pos [..., K] document position of
    each column (-1: nothing); positions [..., F] (-1 entries never match)."""
    hit = (col_pos.unsqueeze(-1) == positions.unsqueeze(-2)).any(-1)
    return hit & (col_pos >= 0)


def visible_columns(key_pos, query_pos):
    """bool [Q, K]: columns a query can see (a real document position, not after the query).
    key_pos [Q, K]; query_pos [Q]."""
    return (key_pos >= 0) & (key_pos <= query_pos.unsqueeze(-1))


def memory_gate_mass(gate, slot_pos):
    """cmr's share of a token update that comes from memory: the gate where at least one slot
    was read, else 0. gate [...]; slot_pos [..., n] (-1: empty slot)."""
    return gate * (slot_pos >= 0).any(-1).to(gate.dtype)


# ------------------------------------------------------------------------------- one document
def fact_offsets(template: str) -> list[int]:
    """Offsets of every token of a fact from its value token (fact_pos), e.g.
    'is {E} {V} .' -> [-2, -1, 0, 1]. One token per word (as pipeline.data.documents renders it)."""
    words = str(template).split()
    if "{V}" not in words:
        raise ConfigError(f"data.fact_template '{template}' has no {{V}} placeholder")
    v = words.index("{V}")
    return [i - v for i in range(len(words))]


def captured_flags(captured, query_pos, facts, value_pos, window: int):
    """(value token captured, any fact token captured) per query, counting captures from segments
    before the query's (the ones it could read). captured [n] document positions ever written to a
    bank; query_pos, value_pos [Q]; facts [Q, F]. -> two bool [Q]"""
    import torch

    if captured is None or captured.numel() == 0:
        none = torch.zeros(len(query_pos), dtype=torch.bool)
        return none, none
    seen = captured[None, :].expand(len(query_pos), -1)  # [Q, n]
    before = (seen // window) < (query_pos // window)[:, None]
    pos = seen.masked_fill(~before, -1)
    return position_columns(pos, value_pos[:, None]).any(-1), position_columns(pos, facts).any(-1)


def top_slot_flags(mem_probs, slot_pos, facts):
    """Whether the highest-attention filled slot (heads averaged) holds one of the fact's tokens.
    mem_probs [Q, H, n]; slot_pos [Q, n] (-1: empty); facts [Q, F]. -> bool [Q] (False: no slot)"""
    avg = mem_probs.mean(1).masked_fill(slot_pos < 0, -1.0)  # [Q, n]
    top = avg.argmax(-1, keepdim=True)  # [Q, 1]
    hit = position_columns(slot_pos.gather(1, top), facts).any(-1)
    return hit & (slot_pos >= 0).any(-1)


def slot_metrics(rec: dict, q, facts, any_facts, value_pos) -> dict:
    """A memory layer's read at each query [Q]: the gated mass on its slots, how many are filled, the read's
    entropy, the mass on the query's fact (and on any fact), and whether the fact or its value is in a slot."""
    import torch

    mp = rec["memory"][0].index_select(0, q.to(rec["memory"].device)).float().cpu()  # [Q, H, n]
    sp = rec["slot_pos"][0].index_select(0, q.to(rec["slot_pos"].device)).cpu()  # [Q, n]
    g = rec["gate"][0].index_select(0, q.to(rec["gate"].device)).float().cpu()  # [Q]
    filled = sp >= 0
    n_slots = filled.sum(-1)
    return {
        "mass_memory": memory_gate_mass(g, sp),
        "n_slots": n_slots,
        "entropy_memory": torch.where(n_slots > 0, entropy(mp, filled), torch.full_like(g, float("nan"))),
        "mass_fact_slots": column_mass(mp, position_columns(sp, facts)),
        "mass_any_fact_slots": column_mass(mp, position_columns(sp, any_facts)),
        "fact_in_memory": position_columns(sp, facts).any(-1),
        "value_in_memory": position_columns(sp, value_pos[:, None]).any(-1),
        "top_slot_on_fact": top_slot_flags(mp, sp, facts),
    }


def document_rows(layers: list[dict], logits, *, query_pos: list[int], fact_pos: list[int], answers: list[int],
                  offsets: Sequence[int], window: int, all_fact_pos: Sequence[int] | None = None,
                  captured=None) -> list[dict]:
    """Metric rows of one document (batch 1) for each (query, layer); `layers` is
    out.diagnostics['attention'], logits [1, N, V]; all_fact_pos: value positions of every fact in
    the document (default: fact_pos); captured: [n] positions cmr ever wrote to a bank (any capture
    layer; None for other memories). Keys: every COLUMNS entry but the document's ids."""
    import torch

    q = torch.tensor(query_pos, dtype=torch.long)  # [Q]
    off = torch.tensor(list(offsets), dtype=torch.long)
    value_pos = torch.tensor(fact_pos, dtype=torch.long)  # [Q]
    facts = value_pos[:, None] + off[None, :]  # [Q, F]
    cap_value, cap_any = captured_flags(captured, q, facts, value_pos, window)
    every = sorted(set(all_fact_pos if all_fact_pos is not None else fact_pos))
    any_facts = (torch.tensor(every, dtype=torch.long)[:, None] + off[None, :]).reshape(1, -1).expand(len(q), -1)
    pred = logits[0].index_select(0, q.to(logits.device)).argmax(-1).cpu()  # [Q]
    correct = (pred == torch.tensor(answers, dtype=torch.long)).tolist()
    nan = float("nan")
    rows: list[dict] = []
    for layer, rec in enumerate(layers):
        probs = rec["self"][0].index_select(0, q.to(rec["self"].device)).float().cpu()  # [Q, H, Tk]
        key_pos = rec["key_pos"].index_select(0, q.to(rec["key_pos"].device)).cpu()  # [Q, Tk]
        vis = visible_columns(key_pos, q)
        fact_cols = position_columns(key_pos, facts)
        n_vis = vis.sum(-1)
        ent = entropy(probs, vis)
        ent_norm = torch.where(n_vis > 1, ent / n_vis.clamp(min=2).double().log().float(), torch.zeros_like(ent))
        m_fact = column_mass(probs, fact_cols)
        m_any = column_mass(probs, position_columns(key_pos, any_facts))
        f_vis = (fact_cols & vis).any(-1)
        n_mem = int(rec.get("memory_columns", 0) or 0)
        m_mem = column_mass(probs[..., :n_mem], vis[..., :n_mem]) if n_mem else None
        slots = slot_metrics(rec, q, facts, any_facts, value_pos) if "memory" in rec else None
        for i in range(len(query_pos)):
            rows.append({
                "query_idx": i,
                "distance": int(query_pos[i] - fact_pos[i]),
                "distance_segments": int(query_pos[i] // window - fact_pos[i] // window),
                "correct": bool(correct[i]),
                "layer": layer,
                "n_visible": int(n_vis[i]),
                "entropy": float(ent[i]),
                "entropy_norm": float(ent_norm[i]),
                "mass_fact": float(m_fact[i]),
                "mass_any_fact": float(m_any[i]),
                "fact_visible": bool(f_vis[i]),
                "mass_memory": float(slots["mass_memory"][i]) if slots else (float(m_mem[i]) if m_mem is not None else nan),
                "n_slots": int(slots["n_slots"][i]) if slots else 0,
                "entropy_memory": float(slots["entropy_memory"][i]) if slots else nan,
                "mass_fact_slots": float(slots["mass_fact_slots"][i]) if slots else nan,
                "mass_any_fact_slots": float(slots["mass_any_fact_slots"][i]) if slots else nan,
                "fact_in_memory": bool(slots["fact_in_memory"][i]) if slots else False,
                "captured_value": bool(cap_value[i]),
                "captured_any": bool(cap_any[i]),
                "value_in_memory": bool(slots["value_in_memory"][i]) if slots else False,
                "top_slot_on_fact": bool(slots["top_slot_on_fact"][i]) if slots else False,
            })
    return rows


# ------------------------------------------------------------------------------- the stage
def _fact_template(cfg: Any) -> str:
    """The template the saved documents were built with (data manifest), else the config's."""
    from pipeline.config.access import cfg_get

    try:
        from pipeline.data import load_manifest

        t = (load_manifest(cfg.paths.data_dir).get("generator") or {}).get("fact_template")
        if t:
            return str(t)
    except (DataError, OSError, ValueError, KeyError):
        pass
    t = cfg_get(cfg_get(cfg, "data"), "fact_template")
    if t is None:
        raise ConfigError("data.fact_template is not set and data/manifest.json does not record it")
    return str(t)


def _split_rows(model: Any, loader: Callable[..., Any], cfg: Any, length: int, variant: str, seed: int,
                max_q: Any, offsets: Any, window: int, device: Any) -> list[dict]:
    """One row per (query, layer) of the recall_<length> split's first eval.attention.n_docs documents."""
    name = f"recall_{length}"
    ds = loader(str(cfg.paths.data_dir), name, int(cfg.eval.attention.n_docs))
    missing = [c for c in ("doc_id", "input_ids", "query_pos", "fact_pos", "answers", "query_type")
               if c not in ds.column_names]
    if missing:
        raise DataError(f"split '{name}' lacks columns {missing}; has {ds.column_names}")
    rows = []
    for doc in ds:
        for r in _read_document(model, doc, name, max_q, offsets, window, device, variant):
            r.update(variant=variant, seed=int(seed), length=length, doc_id=str(doc["doc_id"]),
                     query_type=str(doc["query_type"][r["query_idx"]]))
            rows.append(r)
    return rows


def evaluate_attention(cfg: Any, variant: str, seed: int, *, model: Any = None,
                       loader: Callable[..., Any] | None = None) -> Path:
    """Attention metrics of one trained (variant, seed) on cfg.eval.attention's recall documents.

    Writes run_dir(cfg, "attention", variant, seed)/{attention.parquet, summary.json} atomically and
    returns that folder. model / loader: injected by tests (default: the trained checkpoint, the saved splits).
    """
    import time

    import pandas as pd
    import torch

    from pipeline.config.access import cfg_get
    from pipeline.evaluate.trained import resolve_device
    from pipeline.evaluate.predict import load_split_docs
    from pipeline.io import atomic_dir, atomic_write_json
    from pipeline.paths import run_dir

    t0 = time.perf_counter()
    if variant not in cfg.models:
        raise ConfigError(f"--variant '{variant}' is not configured; allowed: {', '.join(cfg.models.keys())}")
    acfg = cfg.eval.attention
    if model is None:
        from pipeline.evaluate.trained import check_trained
        from pipeline.paths import run_dir as train_run_dir
        from pipeline.models.checkpoint import load_trained

        tdir = train_run_dir(cfg, "train", variant, seed)
        check_trained(tdir, variant, seed)  # the same rule as evaluate: a finished run's best.ckpt
        model, _ = load_trained(tdir)
    device = resolve_device(cfg.eval.device)
    torch.set_num_threads(int(cfg.eval.threads))
    model = model.to(device).eval()
    offsets = fact_offsets(_fact_template(cfg))
    window = int(model.backbone_cfg.window)
    loader = loader or load_split_docs
    max_q = cfg_get(acfg, "max_queries")

    with torch.no_grad():
        rows = [r for length in attention_lengths(cfg)
                for r in _split_rows(model, loader, cfg, int(length), variant, seed, max_q, offsets, window, device)]
    df = _typed(pd.DataFrame(rows, columns=COLUMNS))
    summary = {"variant": variant, "seed": int(seed), "lengths": attention_lengths(cfg),
               "n_docs": int(df[["length", "doc_id"]].drop_duplicates().shape[0]),
               "n_queries": int(df[["length", "doc_id", "query_idx"]].drop_duplicates().shape[0]),
               "fact_template_offsets": offsets, "window": window,
               "layers": _layer_means(df), "wall_s": time.perf_counter() - t0}
    out_dir = run_dir(cfg, "attention", variant, seed)
    with atomic_dir(out_dir) as tmp:
        df.to_parquet(tmp / "attention.parquet", index=False)
        atomic_write_json(tmp / "summary.json", summary)
    log.info("wrote %s (%d rows) in %.1f s", out_dir, len(df), summary["wall_s"])
    return out_dir


def _read_document(model: Any, doc: dict, name: str, max_q: int | None, offsets: list[int], window: int,
                   device: str, variant: str) -> list[dict]:
    """One document read with attention maps returned: document_rows for its first `max_q` queries."""
    import torch

    ids = list(doc["input_ids"])
    k = len(doc["query_pos"]) if max_q is None else min(int(max_q), len(doc["query_pos"]))
    qpos, fpos = list(doc["query_pos"])[:k], list(doc["fact_pos"])[:k]
    bad = [p for p in qpos + fpos if not 0 <= p < len(ids)]
    if len(fpos) != k or bad:
        raise DataError(f"split '{name}' doc {doc['doc_id']}: query/fact positions {bad or fpos} "
                        f"do not fit a document of {len(ids)} tokens")
    out = model(torch.tensor([ids], dtype=torch.long, device=device), return_attention=True)
    layers = out.diagnostics.get("attention")
    if not layers:
        raise DataError(f"model {variant} returned no attention maps (return_attention=True)")
    cap = out.diagnostics.get("captured_pos")
    cap = torch.cat([c[0] for c in cap.values()]).cpu() if cap else None
    return document_rows(layers, out.logits, query_pos=qpos, fact_pos=fpos, answers=list(doc["answers"])[:k],
                         offsets=offsets, window=window, all_fact_pos=list(doc["fact_pos"]), captured=cap)


def _typed(df):
    for c in ("seed", "length", "query_idx", "distance", "distance_segments", "layer", "n_visible", "n_slots"):
        df[c] = df[c].astype("int64")
    for c in FLAGS:
        df[c] = df[c].astype(bool)
    for c in ("variant", "doc_id", "query_type"):
        df[c] = df[c].astype(str)
    for c in METRICS:
        df[c] = df[c].astype("float64")
    return df


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _layer_means(df) -> dict:
    """{layer: {metric: mean (None where not applicable), fact_visible/fact_in_memory: fraction,
    accuracy, n, by_query_type: {...}}} for summary.json."""
    def means(part) -> dict:
        out = {m: _finite_or_none(part[m].mean()) for m in METRICS}
        out.update(fact_visible=float(part["fact_visible"].mean()), fact_in_memory=float(part["fact_in_memory"].mean()),
                   accuracy=float(part["correct"].mean()), n=int(len(part)))
        return out

    res = {}
    for layer, part in df.groupby("layer", sort=True):
        res[str(int(layer))] = {**means(part),
                                "by_query_type": {str(t): means(p) for t, p in part.groupby("query_type", sort=True)}}
    return res


# ------------------------------------------------------------------------------- for the report
def load_attention(paths: list[Path]):
    """attention.parquet files (or run folders holding one), concatenated."""
    import pandas as pd

    frames = []
    for p in paths:
        p = Path(p)
        f = p / "attention.parquet" if p.is_dir() else p
        if not f.is_file():
            raise DataError(f"no attention results at {f}; run `python -m pipeline.evaluate.attention` first")
        frames.append(pd.read_parquet(f))
    if not frames:
        return pd.DataFrame({c: [] for c in COLUMNS})
    return pd.concat(frames, ignore_index=True)


def _variant_key(v: str) -> tuple:
    from pipeline.models.registry import NAMES

    return (NAMES.index(v) if v in NAMES else len(NAMES), v)


def attention_table(df, ci_level: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                    by: Sequence[str] = ("variant", "layer")):
    """One row per variant x layer (or `by`): each METRICS mean with a bootstrap CI over documents
    (queries and seeds of one document are averaged first, so documents are the resampled unit;
    NaN where the metric does not apply), plus n_queries, n_docs and n_seeds."""
    import pandas as pd

    from pipeline.stats import bootstrap_ci

    by = list(by)
    cols = [*by] + [f"{m}_{s}" for m in METRICS for s in ("mean", "low", "high")] + ["n_queries", "n_docs", "n_seeds"]
    if df.empty:
        return pd.DataFrame({c: [] for c in cols})
    doc = [k for k in ("length", "doc_id") if k not in by]
    per_doc = df.groupby([*by, *doc], sort=True, observed=True)[list(METRICS)].mean().reset_index()
    out = []
    for key, part in per_doc.groupby(by, sort=True, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        for m in METRICS:
            ci = bootstrap_ci(part[m].to_numpy(), level=ci_level, n_resamples=n_resamples, seed=seed)
            row.update({f"{m}_mean": ci.mean, f"{m}_low": ci.low, f"{m}_high": ci.high})
        sel = df
        for k, v in zip(by, key):
            sel = sel[sel[k] == v]
        row["n_queries"] = int(len(sel[["seed", "length", "doc_id", "query_idx"]].drop_duplicates()))
        row["n_docs"] = int(len(part))
        row["n_seeds"] = int(sel["seed"].nunique())
        out.append(row)
    table = pd.DataFrame(out, columns=cols)
    if "variant" in by:
        table = table.sort_values(by, key=lambda s: s.map(_variant_key) if s.name == "variant" else s,
                                  kind="stable").reset_index(drop=True)
    return table


PLOT_METRICS = (("entropy_norm", "entropy / log(visible columns)"), ("mass_fact", "self-attn. mass on the fact"),
                ("mass_memory", "mass to memory\n(xl: cache; cmr: gate)"),
                ("mass_fact_slots", "cmr: slot attn. on the fact"))


def plot_attention(df, png_path) -> Path:
    """Box plots per variant, one panel per (metric, layer): the distributions over queries."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pipeline.io import atomic_write_bytes

    if df.empty:
        raise DataError("no attention rows to plot")
    variants = sorted(df["variant"].unique(), key=_variant_key)
    layers = sorted(int(x) for x in df["layer"].unique())
    fig, axes = plt.subplots(len(PLOT_METRICS), len(layers), squeeze=False,
                             figsize=(2.2 + 1.1 * len(variants) * len(layers), 2.6 * len(PLOT_METRICS)))
    for r, (metric, label) in enumerate(PLOT_METRICS):
        for c, layer in enumerate(layers):
            ax = axes[r][c]
            part = df[df["layer"] == layer]
            data = [part.loc[part["variant"] == v, metric].to_numpy(dtype=float) for v in variants]
            data = [d[np.isfinite(d)] for d in data]
            keep = [i for i, d in enumerate(data) if d.size]
            if keep:
                ax.boxplot([data[i] for i in keep], positions=[i + 1 for i in keep], widths=0.6,
                           flierprops={"markersize": 2})
            ax.set_xticks(range(1, len(variants) + 1), variants)
            ax.set_xlim(0.5, len(variants) + 0.5)
            ax.set_ylim(-0.05, 1.05)
            if r == 0:
                ax.set_title(f"layer {layer}")
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle("Attention at recall query positions (boxes over queries)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(png_path, buf.getvalue())


# ------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    from pipeline import stage_cli

    ap = stage_cli.parser("attention", "Attention allocation of trained models at recall queries.", variant=True,
                          seeds=True)
    args = stage_cli.parse(ap, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    def body() -> None:
        from pipeline import paths
        from pipeline.io import write_stage_time

        cfg = stage_cli.load_config(args)
        seeds = stage_cli.seeds_of(args, cfg)
        t0 = time.perf_counter()
        for s in seeds:
            print(f"wrote {evaluate_attention(cfg, args.variant, s)}")
        write_stage_time(paths.variant_dir(cfg, "attention", args.variant), t0, seeds=seeds)

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())

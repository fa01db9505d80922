"""The implementation's sanity check: `python -m pipeline.studies.sanity <multirun_dir> [--out results/sanity]`.

Aggregates a `python -m pipeline.studies.sweep -m experiment=sanity_recall` run (window, xl and cmr, several
seeds, on the regime where a CPU prototype of CMR is known to recall ~100% of facts up to 32 segments
back: conf/experiment/sanity_recall.yaml) into results/sanity/sanity.{csv,md,png,json}: recall by
test length in segments, per seed and pooled, and the bars the implementation must meet:

- cmr   >= cmr_min at every test length, on every seed;
- window <= chance + margin at every length (facts are always out of its window);
- xl    >= xl_min at the shortest length (facts one segment back, inside its cache) and
        <= chance + margin at every length beyond its reach (n_layers x mem_len tokens).

Only pandas / matplotlib are imported (no torch).
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from pipeline import stage_cli
from pipeline.errors import DataError
from pipeline.io import atomic_write_bytes, atomic_write_text

OUTPUT_STEM = "sanity"
BARS = {"cmr_min": 0.95, "xl_min": 0.90, "chance_margin": 0.05}


def load_runs(roots: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(recall predictions of every job, one row of training facts per job, one job's config)."""
    from pipeline.studies.ablations import find_job_dirs, load_job, load_predictions, load_train_metrics

    preds, train, config = [], [], {}
    for job in (load_job(d) for d in find_job_dirs(roots)):
        p = load_predictions(job)
        if p.empty:
            raise DataError(f"{job.dir}: no recall predictions")
        preds.append(p)
        m = load_train_metrics(job)
        train.append({"variant": job.variant, "seed": job.seed, "steps": m.get("steps"),
                      "val_long_recall_far": m.get("val_long_recall_far"), "steps_to_90": m.get("steps_to_90"),
                      "train_wall_s": m.get("wall_s"),
                      "chance": _chance(job)})
        config = job.config
    df = pd.concat(preds, ignore_index=True)
    dup = df.groupby(["variant", "seed", "split", "doc_id", "query_idx"]).size()
    if (dup > 1).any():
        raise DataError("a (variant, seed) appears in more than one job; aggregate one sanity run")
    return df, pd.DataFrame(train), config


def _chance(job) -> float | None:
    path = job.run_path("eval") / "metrics.json"
    try:
        return json.loads(path.read_text()).get("chance_recall")
    except (OSError, ValueError):
        return None


def recall_table(preds: pd.DataFrame, train: pd.DataFrame, window: int) -> pd.DataFrame:
    """One row per (variant, seed) and one pooled row per variant (seed = 'all'): recall at each test
    length (column `seg_<S>` = facts S-1 segments before the queries' segment), val_long far recall."""
    preds = preds.assign(segments=preds["length"] // window)
    rows = []
    for (variant, seed), part in preds.groupby(["variant", "seed"], sort=True):
        row: dict[str, Any] = {"variant": variant, "seed": str(seed)}
        for s, cell in part.groupby("segments"):
            row[f"seg_{int(s)}"] = float(cell["correct"].mean())
        t = train[(train["variant"] == variant) & (train["seed"] == seed)]
        row["val_long_recall_far"] = float(t["val_long_recall_far"].iloc[0]) if len(t) else math.nan
        row["n_queries"] = int(len(part))
        rows.append(row)
    per_seed = pd.DataFrame(rows)
    pooled = (per_seed.groupby("variant", sort=False).mean(numeric_only=True).reset_index()
              .assign(seed="mean", n_queries=lambda d: per_seed.groupby("variant", sort=False)["n_queries"]
                      .sum().to_numpy()))
    from pipeline.models.registry import NAMES

    order = {v: i for i, v in enumerate(NAMES)}
    out = pd.concat([per_seed, pooled], ignore_index=True)
    out = out.sort_values(["variant", "seed"], key=lambda c: c.map(order) if c.name == "variant" else
                          c.map(lambda s: (s == "mean", s)), kind="stable")
    return out[["variant", "seed", *sorted((c for c in out if c.startswith("seg_")), key=lambda c: int(c[4:])),
                "val_long_recall_far", "n_queries"]].reset_index(drop=True)


def checks(table: pd.DataFrame, chance: float, reach_segments: int, bars: dict = BARS) -> dict:
    """Each bar as {passed, detail}, read from the per-seed rows (not the means)."""
    seg_cols = [c for c in table if c.startswith("seg_")]
    seeds = table[table["seed"] != "mean"]
    limit = chance + bars["chance_margin"]

    def rows(v):
        return seeds[seeds["variant"] == v]

    def check(v, cols, ok, need):
        part = rows(v)
        if part.empty or not cols:
            return {"passed": None, "detail": f"{v} was not run"}
        fails = [f"s{r['seed']} {c}={r[c]:.3f}" for _, r in part.iterrows() for c in cols if not ok(r[c])]
        return {"passed": not fails, "detail": f"{need} on {len(part)} seeds" + (f"; fails: {', '.join(fails)}"
                                                                                    if fails else "")}

    shortest = seg_cols[:1]
    beyond = [c for c in seg_cols if int(c[4:]) - 1 > reach_segments]
    return {
        "cmr_every_length": check("cmr", seg_cols, lambda x: x >= bars["cmr_min"],
                                  f"cmr >= {bars['cmr_min']} at every length"),
        "window_at_chance": check("window", seg_cols, lambda x: x <= limit,
                                  f"window <= chance {chance:.3f} + {bars['chance_margin']} at every length"),
        "xl_one_segment_back": check("xl", shortest, lambda x: x >= bars["xl_min"],
                                     f"xl >= {bars['xl_min']} at {shortest[0] if shortest else '?'}"),
        "xl_beyond_reach_at_chance": check("xl", beyond, lambda x: x <= limit,
                                           f"xl <= {limit:.3f} beyond its reach ({reach_segments} segments)"),
    }


def render_markdown(table: pd.DataFrame, result: dict, window: int) -> str:
    head = {c: f"{int(c[4:])} seg ({int(c[4:]) * window} tok)" for c in table if c.startswith("seg_")}
    lines = ["# Sanity check: the mechanism on the regime where it is known to work", "",
             "conf/experiment/sanity_recall.yaml: recall only, 4 facts in the first segment, queries in the last; "
             "training documents of 2-4 segments. Cells: recall of the queries, per seed and the mean over seeds, "
             "at each test length (facts length-1 segments back). Generated by `python -m pipeline.studies.sanity`.", "",
             table.rename(columns=head).to_markdown(index=False, floatfmt=".3f"), "", "## Bars", ""]
    for name, c in result["checks"].items():
        status = {True: "PASSED", False: "FAILED", None: "NOT RUN"}[c["passed"]]
        lines.append(f"- **{name}: {status}** - {c['detail']}")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path, chance: float, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in table if c.startswith("seg_")]
    x = [int(c[4:]) for c in cols]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    from pipeline.report.common import COLORS as colors
    for (variant, seed), r in table.set_index(["variant", "seed"]).iterrows():
        mean = seed == "mean"
        ax.plot(x, [r[c] for c in cols], marker="o" if mean else None, lw=2.2 if mean else 0.8,
                alpha=1 if mean else 0.5, color=colors.get(variant), label=variant if mean else None)
    ax.axhline(chance, ls=":", color="k", lw=0.8, label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(s) for s in x])
    ax.set_xlabel(f"test length (segments of {window} tokens; facts in the first, queries in the last)")
    ax.set_ylabel("recall")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Sanity regime: recall by test length (thin: seeds)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def build(roots: Sequence[str | Path], out_dir: str | Path) -> dict:
    preds, train, cfg = load_runs(roots)
    window = int(cfg["backbone"]["window"])
    chances = [c for c in train["chance"] if isinstance(c, (int, float))]
    chance = float(chances[0]) if chances else 1.0 / max(1, preds["answer"].nunique())
    reach = int(cfg["backbone"]["n_layers"]) * int(cfg["models"]["xl"]["mem_len"]) // window
    table = recall_table(preds, train, window)
    result = {"checks": checks(table, chance, reach), "chance": chance, "xl_reach_segments": reach,
              "bars": BARS, "runs": train.drop(columns=["chance"]).to_dict(orient="records")}
    result["passed"] = all(c["passed"] for c in result["checks"].values())
    out = Path(out_dir)
    stem = out / OUTPUT_STEM
    atomic_write_text(stem.with_suffix(".csv"), table.to_csv(index=False))
    atomic_write_text(stem.with_suffix(".md"), render_markdown(table, result, window))
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2, default=str) + "\n")
    plot(table, stem.with_suffix(".png"), chance, window)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_cli.parser("sanity", __doc__.splitlines()[0], params=False, overrides=False)
    parser.add_argument("sweep_dirs", nargs="+", help="folder(s) of a `python -m pipeline.studies.sweep -m "
                                                      "experiment=sanity_recall` run")
    parser.add_argument("--out", default="results/sanity", help="output folder (default: results/sanity)")
    args = stage_cli.parse(parser, argv)

    def body() -> None:
        result = build(args.sweep_dirs, args.out)
        for name, c in result["checks"].items():
            print(f"{name}: {c['passed']} - {c['detail']}")
        print(f"wrote {args.out}/{OUTPUT_STEM}.{{csv,md,png,json}}")

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m pipeline.readme_results [--check]`: copy the committed study's results into README.md.

The README's results section is rendered from results/ (written by the report stage), never
typed by hand; a test runs `--check` so the README cannot drift from the committed results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from pipeline import stage_cli
from pipeline.config import REPO_ROOT
from pipeline.io import write_or_check

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def accuracy_table(csv: Path, key: str, paper_scale: float = 100.0) -> str:
    """Variant rows x key columns: mean accuracy (%) [95% CI], with the paper's rows beside ours."""
    df = pd.read_csv(csv)
    cols = sorted(df[key].unique(), key=lambda v: (str(type(v)), v))
    lines = ["| variant | " + " | ".join(str(c) for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for variant, g in df.groupby("variant", sort=False):
        g = g.set_index(key)
        cells = [f"{_pct(g.loc[c, 'accuracy'])} [{_pct(g.loc[c, 'ci_low'])}, {_pct(g.loc[c, 'ci_high'])}]"
                 if c in g.index else "" for c in cols]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    for label, col in (("paper baseline", "paper_baseline"), ("paper CMR", "paper_cmr")):
        if col in df and df[col].notna().any():
            first = df.drop_duplicates(key).set_index(key)[col]
            lines.append(f"| *{label}* | " + " | ".join(
                _pct(first[c]) if c in first.index and pd.notna(first[c]) else "" for c in cols) + " |")
    return "\n".join(lines)


def overhead_table(csv: Path) -> str:
    df = pd.read_csv(csv)
    ns = sorted(df["N"].unique())
    lines = ["| variant | " + " | ".join(f"ms/token @ {n}" for n in ns) + " | ratio vs window (mean) | params |",
             "|---" * (len(ns) + 3) + "|"]
    for variant, g in df.groupby("variant", sort=False):
        g = g.set_index("N")
        lines.append(f"| {variant} | " + " | ".join(f"{g.loc[n, 'ms_per_token']:.4f}" if n in g.index else ""
                                                   for n in ns)
                     + f" | {g['ratio_vs_window'].mean():.2f} | {int(g['params'].iloc[0]):,} |")
    return "\n".join(lines)


def stage_times(csv: Path) -> str:
    """Per-stage totals, with each training stage run listed: what each variant costs."""
    df = pd.read_csv(csv)
    if "runs" not in df.columns:
        df["runs"] = 1
    lines = ["| stage | runs | wall time (min) |", "|---|---|---|"]
    for stage, g in df.groupby("stage", sort=False):
        lines.append(f"| {stage} | {int(g['runs'].sum())} | {g['wall_s'].sum() / 60:.1f} |")
        if stage == "train":
            lines += [f"| &nbsp;&nbsp;train {run} | {int(n)} | {w / 60:.1f} |"
                      for run, n, w in zip(g["run"], g["runs"], g["wall_s"])]
    lines.append(f"| **all stages** | {int(df['runs'].sum())} | {df['wall_s'].sum() / 60:.1f} |")
    return "\n".join(lines)


def verdicts_table(summary_json: Path) -> str:
    """One row per paper claim: the verdict the report computed (results/summary.json `verdicts`)."""
    verdicts = json.loads(summary_json.read_text()).get("verdicts") if summary_json.is_file() else None
    if not verdicts:
        return "_No verdicts in results/summary.json: rerun the report (`python -m pipeline.report`)._"
    lines = ["| # | claim (paper) | verdict | where CMR loses | vs the strongest baseline |", "|---|---|---|---|---|"]
    for v in verdicts:
        loses = (v.get("cmr_loses") or "--").replace("|", "\\|")
        best = (v.get("vs_strongest") or "--").replace("|", "\\|")
        lines.append(f"| {v['claim']} | {v['text']} ({v['source']}) | **{v['verdict']}** | {loses} | {best} |")
    return "\n".join(lines)


def validity_lines(summary_json: Path) -> str:
    """The validity checks (results/summary.json `validity`), one line each, status first."""
    checks = json.loads(summary_json.read_text()).get("validity") if summary_json.is_file() else None
    if not checks:
        return "_No validity checks in results/summary.json._"
    return "\n".join(f"- **{name}: {c['status']}** - {c['detail']}" for name, c in checks.items())


def per_seed_table(csv: Path) -> str:
    """Far recall (%) per variant and seed at every N (results/tables/recall_per_seed.csv)."""
    if not csv.is_file():
        return "_results/tables/recall_per_seed.csv missing._"
    df = pd.read_csv(csv)
    ns = [c for c in df.columns if c.startswith("N=")]
    lines = ["| variant | seed | " + " | ".join(ns) + " |", "|---" * (len(ns) + 2) + "|"]
    for _, r in df.iterrows():
        lines.append(f"| {r['variant']} | {int(r['seed'])} | " + " | ".join(_pct(r[c]) for c in ns) + " |")
    return "\n".join(lines)


def render(results: Path) -> str:
    tables = results / "tables"
    parts = [
        START,
        "_Rendered by `python -m pipeline.readme_results` from the committed `results/` "
        "(the `default` profile); full tables, tests and plots in [results/REPORT.md](results/REPORT.md)._",
        "",
        "**Verdicts on the paper's claims** (rules and evidence in results/REPORT.md):",
        "",
        verdicts_table(results / "summary.json"),
        "",
        "**Validity checks** (each on every seed; a claim whose checks fail is *not testable*):",
        "",
        validity_lines(results / "summary.json"),
        "",
        "**Recall accuracy (%) by sequence length N (Table II)**, mean over seeds [95% bootstrap CI]:",
        "",
        accuracy_table(tables / "recall.csv", "N"),
        "",
        "**Far-fact recall (%) per seed** (the mean above hides a seed that did not learn):",
        "",
        per_seed_table(tables / "recall_per_seed.csv"),
        "",
        "**Inference cost (Table III)**, batch 1, one thread:",
        "",
        overhead_table(tables / "overhead.csv"),
        "",
        "**Wall time per stage** (measured by the pipeline, `results/stage_times.csv`):",
        "",
        stage_times(results / "stage_times.csv"),
        END,
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("readme-results", __doc__.splitlines()[0], params=False, overrides=False)
    parser.add_argument("--readme", default=str(REPO_ROOT / "README.md"))
    parser.add_argument("--results", default=str(REPO_ROOT / "results"))
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    args = stage_cli.parse(parser, argv)
    readme = Path(args.readme)
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"{readme}: no {START} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    new = head + render(Path(args.results)) + tail
    return write_or_check(readme, new, check=args.check, fix_hint="run python -m pipeline.readme_results")


if __name__ == "__main__":
    sys.exit(main())

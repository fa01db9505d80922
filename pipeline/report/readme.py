"""`python -m pipeline.report.readme [--check]`: render the headline results into README.md.

The block between the README's `<!-- results:start -->` and `<!-- results:end -->` markers is rendered from a
results folder (written by the report stage), never typed by hand: the verdicts, the validity checks and the
recall-by-length table (Table II). `refresh(results_dir, readme_path)` rewrites that block atomically; the report
stage calls it for the default profile writing to `results/`, so a study rerun on another machine, whose floats
may differ slightly, leaves a README that matches its own results. `--check` exits 1 when the README's block does
not match the results folder (a test runs it on the committed files).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pipeline import stage_cli
from pipeline.io import atomic_write_text, write_or_check

START, END = "<!-- results:start -->", "<!-- results:end -->"
REPO_ROOT = Path(__file__).resolve().parents[2]
FIX_HINT = "run python -m pipeline.report.readme (the report stage does it for the default study)"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def accuracy_table(csv: Path, key: str = "N") -> str:
    """Variant rows x key columns: mean accuracy (%) [95% CI], with the paper's rows below ours."""
    if not csv.is_file():
        return f"_{csv.name} missing: rerun the report (`python -m pipeline.report`)._"
    import pandas as pd

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


def _summary(summary_json: Path, key: str):
    return json.loads(summary_json.read_text()).get(key) if summary_json.is_file() else None


def verdict_lines(summary_json: Path) -> str:
    """One line per paper claim: the verdict the report computed (summary.json `verdicts`) and where CMR loses."""
    verdicts = _summary(summary_json, "verdicts")
    if not verdicts:
        return "_No verdicts in results/summary.json: rerun the report (`python -m pipeline.report`)._"
    lines = []
    for v in verdicts:
        loses = (v.get("cmr_loses") or "").strip()
        lines.append(f"- Claim {v['claim']} ({v['source']}): {v['text']}: **{v['verdict']}**"
                     + (f". Where CMR loses: {loses}" if loses else ""))
    return "\n".join(lines)


def validity_line(summary_json: Path) -> str:
    """The validity checks (summary.json `validity`) on one line: name and status."""
    checks = _summary(summary_json, "validity")
    if not checks:
        return "_No validity checks in results/summary.json._"
    return "; ".join(f"`{name}` **{c['status']}**" for name, c in checks.items())


def break_table(summary_json: Path) -> str:
    """Where memories break (summary.json `stress`): per variant its capacity and effective length."""
    stress = _summary(summary_json, "stress")
    if not stress or not stress.get("capacity"):
        return "_No where-memories-break results in results/summary.json (stress stages not run)._"
    setup = ((_summary(summary_json, "setup") or {}).get("variants") or {})
    lines = ["| variant | state (floats) | capacity (far facts) | effective length (tokens) |", "|---|---|---|---|"]
    from pipeline.report.common import variant_order

    for v in variant_order(stress["capacity"]):
        cap = stress["capacity"][v]
        eff = (stress.get("effective_length") or {}).get(v) or {}
        seeds = lambda d: ", ".join(str(d[k]) for k in sorted(d) if k.startswith("s") and k[1:].isdigit())  # noqa: E731
        lines.append(f"| {v} | {(setup.get(v) or {}).get('memory_floats', '')} | {seeds(cap)} | {seeds(eff)} |")
    return "\n".join(lines)


def render(results: Path) -> str:
    """The README block, markers included, from a results folder."""
    results = Path(results)
    summary = results / "summary.json"
    return "\n".join([
        START,
        "_Rendered from `results/` by the report stage (`python -m pipeline.report.readme`); every table, test "
        "and plot is in [results/REPORT.md](results/REPORT.md)._",
        "",
        "**Recall (%) by document length N** (the paper's Table II; nearly every query asks for a far fact), "
        "mean over seeds [95% bootstrap CI]:",
        "",
        accuracy_table(results / "tables" / "recall.csv", "N"),
        "",
        "**Where memories break** (per seed, far recall >= "
        + str((_summary(summary, "stress") or {}).get("threshold", "the threshold"))
        + "; capacity: the most far facts per 2,500-token document, effective length: the longest document; "
        "`>=`: never broke in the range tested, `<`: broke at the smallest):",
        "",
        break_table(summary),
        "",
        "**Validity checks** (on every seed; a claim whose checks do not pass is *not testable*): "
        + validity_line(summary),
        "",
        "**Verdicts on the paper's claims** (rules and evidence in results/REPORT.md):",
        "",
        verdict_lines(summary),
        END,
    ])


def splice(text: str, block: str) -> str | None:
    """`text` with the block between the markers replaced by `block`; None if the markers are missing."""
    start = text.find(START)
    end = text.find(END, start + len(START)) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    return text[:start] + block + text[end + len(END):]


def refresh(results_dir: str | os.PathLike, readme_path: str | os.PathLike) -> bool:
    """Rewrite the README's results block from `results_dir`, atomically. Returns True when the README now holds
    the block (rewritten or already current); a README without the markers (or no README) is left alone, with one
    line on stderr, and False is returned."""
    readme = Path(readme_path)
    if not readme.is_file():
        print(f"{readme}: no such file; README results not refreshed", file=sys.stderr)
        return False
    text = readme.read_text()
    new = splice(text, render(Path(results_dir)))
    if new is None:
        print(f"{readme}: no {START} ... {END} markers; README results not refreshed", file=sys.stderr)
        return False
    if new == text:
        print(f"{readme}: results block up to date")
        return True
    atomic_write_text(readme, new)
    print(f"{readme}: results block refreshed from {results_dir}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("readme-results", __doc__.splitlines()[0], params=False, overrides=False)
    parser.add_argument("--readme", default=str(REPO_ROOT / "README.md"))
    parser.add_argument("--results", default=str(REPO_ROOT / "results"))
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's results block is out of date")
    args = stage_cli.parse(parser, argv)
    readme = Path(args.readme)
    new = splice(readme.read_text(), render(Path(args.results))) if readme.is_file() else None
    if new is None:
        print(f"{readme}: missing, or no {START} ... {END} markers", file=sys.stderr)
        return 2
    return write_or_check(readme, new, check=args.check, fix_hint=FIX_HINT)


if __name__ == "__main__":
    sys.exit(main())

"""`cmr-repro report [--params params.yaml] [--all] [--strict] [key=value ...]`: the report stage (pipeline/report/__init__.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from pipeline import stage_cli
from pipeline.config import as_plain
from pipeline.io import staged_outputs
from pipeline.report.readme import refresh
from pipeline.report.tracking import log_report
from pipeline.report.build import build_report
from pipeline.report.common import FAILED
from pipeline.report.runs import study_dirs

REPORT_OUTPUTS = ["tables", "REPORT.md", "index.html", "summary.json", "metrics.json", "stage_times.csv"]
REPORT_SHARED = ("plots",)


def main(argv: Sequence[str] | None = None) -> int:
    ap = stage_cli.parser("report", "Report stage: aggregate every evaluation run into tables, plots, verdicts, "
                                    "summary.json and REPORT.md.")
    ap.add_argument("--all", "--all-runs", dest="all_runs", action="store_true",
                    help="report every experiments/eval/*/s*/ run, not only study.variants x study.seeds")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a validity check FAILED")
    args = stage_cli.parse(ap, argv)

    def body() -> int:
        cfg = as_plain(stage_cli.load_config(args))  # validated like every stage's config
        evals, trains = study_dirs(cfg, args.all_runs)
        results = Path((cfg.get("paths") or {}).get("results_dir", "results"))
        notes: list[str] = []
        with staged_outputs(results, REPORT_OUTPUTS, REPORT_SHARED) as tmp:  # a failed report leaves the old one whole
            summary = build_report(cfg, evals, trains, tmp,
                                   datasets_csv=results / "datasets" / "datasets.csv", notes=notes)
        print(f"report written to {results}/ (REPORT.md, summary.json, tables/<table>.csv/.md/.tex/.png, plots/, "
              f"stage_times.csv)")
        if results.resolve() == Path("results").resolve():  # the study's own results: the README shows them
            refresh("results", "README.md")
        log_report(cfg, results, summary, json.loads((results / "metrics.json").read_text()))
        failed = [k for k, v in summary["validity"].items() if v["status"] == FAILED]
        return 1 if (args.strict and failed) else 0

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())

"""The README's results block is rendered from results/, never typed by hand: the committed README matches the
committed results, `--check` catches a README that does not match its results, and `refresh` (what the report
stage calls) brings it back in line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from pipeline.report.readme import END, START, main, refresh, render, validity_line, verdict_lines

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "results"


def _copy_study(tmp_path):
    """A results folder (what the README block reads) and a README, copied from the committed ones."""
    res = tmp_path / "results"
    (res / "tables").mkdir(parents=True)
    shutil.copy(RESULTS / "summary.json", res / "summary.json")
    shutil.copy(RESULTS / "tables" / "recall.csv", res / "tables" / "recall.csv")
    readme = tmp_path / "README.md"
    shutil.copy(REPO_ROOT / "README.md", readme)
    return res, readme


def _check(res, readme) -> int:
    return main(["--check", "--results", str(res), "--readme", str(readme)])


def test_committed_readme_matches_committed_results():
    assert (RESULTS / "tables" / "recall.csv").is_file(), "the default study's results are not committed"
    assert main(["--check"]) == 0, "README.md is stale: run python -m pipeline.report.readme"


def test_check_catches_a_changed_number_and_refresh_fixes_it(tmp_path, capsys):
    res, readme = _copy_study(tmp_path)
    before = readme.read_text()
    assert _check(res, readme) == 0
    df = pd.read_csv(res / "tables" / "recall.csv")
    row = (df["variant"] == "cmr") & (df["N"] == 2500)
    assert row.sum() == 1
    df.loc[row, "accuracy"] = 0.123  # a study rerun elsewhere moves a number
    df.to_csv(res / "tables" / "recall.csv", index=False)
    assert _check(res, readme) == 1
    assert "stale" in capsys.readouterr().err
    assert refresh(res, readme) is True
    assert _check(res, readme) == 0
    after = readme.read_text()
    assert "| 12.3 [" in after and "| 12.3 [" not in before
    # only the block changed, and no temporary file was left beside the README
    assert after.split(START)[0] == before.split(START)[0]
    assert after.split(END)[1] == before.split(END)[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "results"]
    assert refresh(res, readme) is True and readme.read_text() == after  # idempotent


def test_check_catches_a_changed_verdict(tmp_path):
    res, readme = _copy_study(tmp_path)
    summary = json.loads((res / "summary.json").read_text())
    summary["verdicts"][0]["verdict"] = "supported" if summary["verdicts"][0]["verdict"] != "supported" else "mixed"
    (res / "summary.json").write_text(json.dumps(summary))
    assert _check(res, readme) == 1
    refresh(res, readme)
    assert _check(res, readme) == 0


def test_refresh_without_markers_is_a_noop(tmp_path, capsys):
    res, _ = _copy_study(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# a README without a results block\n")
    assert refresh(res, readme) is False
    assert readme.read_text() == "# a README without a results block\n"
    assert "no <!-- results:start -->" in capsys.readouterr().err
    assert refresh(res, tmp_path / "missing.md") is False
    assert not (tmp_path / "missing.md").exists()
    assert _check(res, readme) == 2


def test_render_is_the_headline_only():
    block = render(RESULTS)
    assert block.startswith(START) and block.endswith(END)
    for variant in json.loads((RESULTS / "summary.json").read_text())["setup"]["variants"]:
        assert f"| {variant} |" in block
    assert "*paper CMR*" in block and "Claim 1 (Table II)" in block and "`cmr_learned`" in block
    assert "**Where memories break**" in block
    assert len(block.splitlines()) < 50


def test_verdict_and_validity_lines_from_summary(tmp_path):
    assert "No verdicts" in verdict_lines(tmp_path / "summary.json")
    assert "No validity checks" in validity_line(tmp_path / "summary.json")
    (tmp_path / "summary.json").write_text(json.dumps({
        "verdicts": [
            {"claim": 1, "text": "recall better", "source": "Table II", "verdict": "mixed", "cmr_loses": "a | b"},
            {"claim": 6, "text": "attention", "source": "abstract", "verdict": "not tested", "cmr_loses": ""}],
        "validity": {"ceiling": {"status": "PASSED"}, "binding": {"status": "FAILED"}}}))
    lines = verdict_lines(tmp_path / "summary.json").splitlines()
    assert lines == ["- Claim 1 (Table II): recall better: **mixed**. Where CMR loses: a | b",
                     "- Claim 6 (abstract): attention: **not tested**"]
    assert validity_line(tmp_path / "summary.json") == "`ceiling` **PASSED**; `binding` **FAILED**"

"""The README's results section is rendered from the committed results/, never typed by hand."""

from __future__ import annotations

from pipeline.config import REPO_ROOT
from pipeline.readme_results import main, render


def test_readme_results_match_committed_results():
    assert (REPO_ROOT / "results" / "tables" / "recall.csv").is_file(), "the default study's results are not committed"
    assert main(["--check"]) == 0, "README.md is stale: run python -m pipeline.readme_results"


def test_render_shows_every_variant(tmp_path):
    block = render(REPO_ROOT / "results")
    for variant in ("window", "cmr"):
        assert f"| {variant} |" in block
    assert "wall time" in block.lower()


def test_verdicts_table_from_summary(tmp_path):
    import json

    from pipeline.readme_results import verdicts_table

    assert "No verdicts" in verdicts_table(tmp_path / "summary.json")
    (tmp_path / "summary.json").write_text(json.dumps({"verdicts": [
        {"claim": 1, "text": "recall better", "source": "Table II", "verdict": "mixed", "cmr_loses": "a | b"},
        {"claim": 6, "text": "attention", "source": "abstract", "verdict": "not tested", "cmr_loses": ""}]}))
    block = verdicts_table(tmp_path / "summary.json")
    assert "| 1 | recall better (Table II) | **mixed** | a \\| b | -- |" in block
    assert "**not tested** | -- | -- |" in block

"""The offline dashboard in a real browser: a page whose figure is missing is caught (the check can fail), and the
committed study's results/index.html shows every figure without the network. The ci study's own page is opened in
tests/test_pipeline_e2e.py."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.browser import need_browser, open_page

REPO = Path(__file__).resolve().parent.parent


def test_a_missing_figure_is_seen_as_not_loaded(tmp_path):
    need_browser()
    shutil.copy(REPO / "results" / "tables" / "load.png", tmp_path / "load.png")
    (tmp_path / "index.html").write_text(
        '<html><head><title>t</title></head><body><p>headline</p>'
        '<img src="load.png"><img src="tables/gone.png"></body></html>')
    page = open_page(tmp_path / "index.html")
    assert page["title"] == "t" and "headline" in page["text"]
    assert [(i["src"], i["loaded"]) for i in page["images"]] == [("load.png", True), ("tables/gone.png", False)]


def test_the_committed_dashboard_shows_every_figure_offline():
    need_browser()
    page = open_page(REPO / "results" / "index.html")
    assert len(page["images"]) >= 10, page["images"]
    assert all(i["loaded"] for i in page["images"]), [i["src"] for i in page["images"] if not i["loaded"]]
    assert all(url.startswith("file://") for url in page["resources"]), page["resources"]
    assert "Verdict" in page["text"] or "verdict" in page["text"]

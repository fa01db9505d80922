"""Open a page in headless Chromium (Debian's chromium + chromedriver, driven by Selenium) and report what a reader
would see: the title, every image with whether it loaded, and every resource the page fetched. `make browser` installs
the browser; without it the browser tests skip, unless CMR_REQUIRE_BROWSER=1 (set by .ci/run)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CMR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CMR_CHROMEDRIVER", "/usr/bin/chromedriver")
# as root on a closed network: no sandbox, no GPU, nothing fetched in the background (Chromium would try Google's hosts)
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def need_browser() -> None:
    """Skip the calling test when no browser is installed, or fail when the run requires one."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() or shutil.which(p))]
    if missing or not _has_selenium():
        why = f"headless browser not available (missing: {', '.join(missing) or 'selenium'}; `make browser` installs it)"
        if os.environ.get("CMR_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)


def _has_selenium() -> bool:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return True


def open_page(path: Path) -> dict[str, Any]:
    """path: an HTML file -> {title, text, images: [{src, loaded, width}], resources: [urls fetched]}."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.get(Path(path).resolve().as_uri())
        return driver.execute_script(
            "return {title: document.title, text: document.body.innerText,"
            " images: Array.from(document.images).map(i => ({src: i.getAttribute('src'),"
            "   loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth})),"
            " resources: performance.getEntriesByType('resource').map(r => r.name)}")
    finally:
        driver.quit()

"""The viewer with an abnormality model, in Debian's headless Chromium against a real
`chextriev serve` process: the query's bar and every result's model chip read ``abnormal: p``."""

from __future__ import annotations

import pytest
from test_server_abnormality import build_abnormality_index
from test_server_browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_index(tiny_index, tmp_path_factory):
    """This module's servers (``module_server``) serve the abnormality index."""
    return build_abnormality_index(tiny_index, tmp_path_factory.mktemp("abnormality-viewer"))


def test_viewer_shows_abnormal_p(tiny_index, module_server):
    import os

    if not CHROMIUM.exists():
        if os.environ.get("CHEXTRIEV_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CHEXTRIEV_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    query = min((tiny_index.archive / "files").rglob("*.png"))
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{module_server}/")
        sync_api.expect(page.locator("#status")).to_contain_text("ready", timeout=60_000)
        page.set_input_files("#file", str(query))
        sync_api.expect(page.locator("#results li").first).to_be_visible(timeout=60_000)
        p = page.evaluate("state.payload.query.abnormality.probability")
        sync_api.expect(page.locator("#query-predicted li .name")).to_have_text(f"abnormal: {p:.2f}")
        chips = page.locator("#results li .r-pred .chip").all_inner_texts()
        assert chips and all(text.startswith("abnormal: ") for text in chips), chips
        page.locator("#results li").first.click()
        sync_api.expect(page.locator("#case-predicted .chip")).to_contain_text("abnormal: ")
        assert not errors, errors
        browser.close()
    finally:
        playwright.stop()

"""The web page in a real browser: Playwright (sync API) drives Debian's headless Chromium
against a real server process; it uploads an image, waits for k result tiles, opens the
side-by-side comparison, and saves screenshots (copied to docs/images/ for the README when
CHEXTRIEV_UPDATE_SCREENSHOTS=1; a plain test run never writes into the checkout)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
REPO_ROOT = Path(__file__).resolve().parents[2]
K = 6

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CHEXTRIEV_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CHEXTRIEV_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package to run the browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    return CHROMIUM


def test_page_uploads_an_image_and_shows_k_results(chromium, serve_process, free_port, query_png, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, _ = serve_process(free_port)
    console_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
            page.on("pageerror", lambda error: console_errors.append(str(error)))
            page.on("response", lambda response: response.status >= 400
                    and console_errors.append(f"HTTP {response.status} {response.url}"))
            page.goto(f"{base}/")
            expect(page.locator("#status")).to_contain_text("ready", timeout=60_000)
            page.fill("#k", str(K))
            page.set_input_files("#file", str(query_png))
            tiles = page.locator(".tile")
            expect(tiles).to_have_count(K, timeout=60_000)
            expect(page.locator("#results-title")).to_contain_text(f"{K} similar cases")
            expect(page.locator("#query-findings li").first).to_be_visible()
            # every thumbnail loaded (decoded by the browser)
            page.wait_for_function("() => [...document.querySelectorAll('.tile img')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)", timeout=30_000)
            assert page.locator("#query-canvas").evaluate("c => c.width > 0 && c.height > 0")
            results_shot = tmp_path / "results.png"
            page.screenshot(path=str(results_shot))
            # open the comparison with heatmaps and matched regions
            tiles.nth(1).click()
            expect(page.locator("#compare")).to_be_visible()
            page.check("#heat-on")
            page.wait_for_timeout(1500)
            page.wait_for_load_state("networkidle")
            compare_shot = tmp_path / "compare.png"
            page.screenshot(path=str(compare_shot))
            page.keyboard.press("Escape")
            expect(page.locator("#compare")).to_be_hidden()
            # search by archived id
            page.fill("#archive-id", str(2))
            page.click("#by-id button")
            expect(page.locator("#query-meta")).to_contain_text("archive #2", timeout=30_000)
            expect(tiles).to_have_count(K, timeout=30_000)
        finally:
            browser.close()
    assert not console_errors, console_errors
    assert results_shot.stat().st_size > 10_000 and compare_shot.stat().st_size > 10_000
    if os.environ.get("CHEXTRIEV_UPDATE_SCREENSHOTS") == "1":  # refresh the README's pictures
        docs = REPO_ROOT / "docs" / "images"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results_shot, docs / "web_page.png")
        shutil.copyfile(compare_shot, docs / "web_page_compare.png")

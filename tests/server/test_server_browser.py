"""The viewer in a real browser: Playwright (sync API) drives Debian's headless Chromium against a
real `chextriev serve` process. A 2048 px query is uploaded; then: the query and the first case
side by side, dragging changes the window, the wheel zooms and pan is linked between the two
images, heatmaps toggle per finding and boxes per region, the keyboard walks through the
results, an archived image is a query too. Each state is screenshot; the screenshots are copied
to docs/images/ only with CHEXTRIEV_UPDATE_SCREENSHOTS=1 (a plain run never writes into the
checkout)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
REPO_ROOT = Path(__file__).resolve().parents[2]
VIEWPORT = {"width": 1440, "height": 900}
K = 6
QUERY_SIDE = 2048

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The mean grey level of a canvas, and the share of its pixels that are clearly coloured.
CANVAS_STATS = """canvas => {
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0, coloured = 0;
  for (let i = 0; i < data.length; i += 4) {
    sum += data[i] + data[i + 1] + data[i + 2];
    if (Math.max(data[i], data[i + 1], data[i + 2]) - Math.min(data[i], data[i + 1], data[i + 2]) > 60) coloured += 1;
  }
  const n = data.length / 4;
  return {mean: sum / (3 * n), coloured: coloured / n};
}"""


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CHEXTRIEV_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CHEXTRIEV_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package to run the browser tests")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium, module_server):
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    """``shoot(page, name)`` saves a screenshot; all are copied to docs/images/ at the end with
    CHEXTRIEV_UPDATE_SCREENSHOTS=1."""
    folder = tmp_path_factory.mktemp("screenshots")
    taken: list[Path] = []

    def shoot(page, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path))
        assert path.stat().st_size > 20_000, f"screenshot {name} looks empty"
        taken.append(path)
        return path

    yield shoot
    if os.environ.get("CHEXTRIEV_UPDATE_SCREENSHOTS") == "1":
        docs = REPO_ROOT / "docs" / "images"
        docs.mkdir(parents=True, exist_ok=True)
        for path in taken:
            shutil.copyfile(path, docs / path.name)


@pytest.fixture(scope="module")
def big_query(tiny_index, tmp_path_factory) -> Path:
    """An archived radiograph enlarged to 2048 x 2048 px (the full-resolution case)."""
    from chextriev.io.images import load_image

    source = min((tiny_index.archive / "files").rglob("*.png"))
    pixels = (load_image(source) * 255).round().astype(np.uint8)
    path = tmp_path_factory.mktemp("query") / f"{source.stem}-2048.png"
    Image.fromarray(pixels).resize((QUERY_SIDE, QUERY_SIDE), Image.Resampling.BICUBIC).save(path)
    return path


@pytest.fixture()
def page(browser, module_server):
    """A fresh page on the viewer, server ready; fails the test on any console error or HTTP error."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("response", lambda response: response.status >= 400 and errors.append(f"HTTP {response.status} {response.url}"))
    page.goto(f"{module_server}/")
    expect(page.locator("#status")).to_contain_text("ready", timeout=60_000)
    expect(page.locator("#by-text")).to_be_hidden()  # a V6 model has no text tower: no text box
    yield page
    context.close()
    assert not errors, errors


def search(page, query: Path, k: int = K) -> None:
    from playwright.sync_api import expect

    page.fill("#k", str(k))
    page.set_input_files("#file", str(query))
    expect(page.locator("#results li")).to_have_count(k, timeout=60_000)
    expect(page.locator("#vp-query")).to_have_attribute("data-loaded", "true", timeout=30_000)
    expect(page.locator("#vp-case")).to_have_attribute("data-loaded", "true", timeout=30_000)


def settle(page) -> None:
    """Wait until the viewports have drawn what the last input asked for (they draw on the next
    animation frame)."""
    page.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")


def state(page, canvas: str) -> dict:
    """What a viewport shows: window, level, zoom, centre, invert, heatmap, regions."""
    settle(page)
    data = page.locator(canvas).evaluate("c => ({...c.dataset})")
    return {key: (float(value) if key in ("window", "level", "zoom", "cx", "cy") else value)
            for key, value in data.items()}


def stats(page, canvas: str) -> dict:
    settle(page)
    return page.locator(canvas).evaluate(CANVAS_STATS)


def centre(page, canvas: str) -> tuple[float, float]:
    box = page.locator(canvas).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_query_and_first_case_side_by_side(page, big_query, screenshots):
    from playwright.sync_api import expect

    search(page, big_query)
    expect(page.locator("#results-title")).to_contain_text(f"{K} similar cases")
    expect(page.locator("#query-meta")).to_contain_text(f"{QUERY_SIDE}×{QUERY_SIDE}")
    # the query is drawn from its 1024 px preview, not from a thumbnail
    assert page.evaluate("[queryView.image.width, queryView.image.height]") == [1024, 1024]
    first = page.locator("#results li").first
    expect(first).to_have_attribute("aria-selected", "true")
    case_id = first.get_attribute("data-id")
    expect(page.locator("#case-title")).to_have_text(f"Case {case_id}")
    # the case is drawn from its stored preview (the whole 256 px image), not the 128 px thumbnail
    assert page.evaluate("[caseView.image.width, caseView.image.height]") == [256, 256]
    expect(page.locator("#case-meta")).not_to_contain_text("thumbnail only")
    # known and predicted findings are shown apart, under each image and in the list
    expect(page.locator("#pane-case .vp-foot")).to_contain_text("Known")
    expect(page.locator("#pane-case .vp-foot")).to_contain_text("Predicted")
    expect(page.locator("#query-predicted li")).to_have_count(page.evaluate("state.payload.query.findings.length"))
    assert first.locator(".r-known .chip").count() >= 1 and first.locator(".r-pred .chip").count() >= 1
    page.wait_for_function("() => [...document.querySelectorAll('#results .thumb')]"
                           ".every(img => img.complete && img.naturalWidth > 0)", timeout=30_000)
    for canvas in ("#vp-query", "#vp-case"):
        assert stats(page, canvas)["mean"] > 20, f"{canvas} looks black"
    # no PACS link without a configured viewer (the API sends no viewer_url then)
    expect(page.locator("#case-pacs")).to_be_hidden()
    screenshots(page, "viewer_results")


def test_dragging_changes_the_window(page, big_query, screenshots):
    from playwright.sync_api import expect

    search(page, big_query)
    before_query, before_case = state(page, "#vp-query"), state(page, "#vp-case")
    brightness = stats(page, "#vp-query")["mean"]
    x, y = centre(page, "#vp-query")
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y + 40, steps=6)
    page.mouse.move(x + 120, y + 80, steps=6)
    page.mouse.up()
    after = state(page, "#vp-query")
    assert after["window"] == pytest.approx(before_query["window"] + 120, abs=2)
    assert after["level"] == pytest.approx(before_query["level"] + 80, abs=2)
    assert abs(stats(page, "#vp-query")["mean"] - brightness) > 5  # the pixels changed, not just the numbers
    linked = state(page, "#vp-case")  # window linked by default: the same change on the case
    assert linked["window"] == pytest.approx(before_case["window"] + 120, abs=2)
    expect(page.locator("#query-wl")).to_contain_text(f"W {round(after['window'])}")
    # presets: lung window from the image's own grey levels
    page.click("[data-preset=lung]")
    lung = state(page, "#vp-query")
    assert lung["window"] < 256 and (lung["window"], lung["level"]) != (after["window"], after["level"])
    expect(page.locator("#query-wl")).to_contain_text("Lung")
    expect(page.locator("[data-preset=lung]")).to_have_attribute("aria-pressed", "true")
    screenshots(page, "viewer_window_level")
    # invert flips the grey scale
    plain = stats(page, "#vp-query")["mean"]
    page.click("#invert")
    assert state(page, "#vp-query")["invert"] == "true"
    assert abs(stats(page, "#vp-query")["mean"] - plain) > 10
    # unlinked, a drag changes only the image dragged
    page.uncheck("#link-window")
    case_window = state(page, "#vp-case")["window"]
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 50, y, steps=5)
    page.mouse.up()
    assert state(page, "#vp-query")["window"] == pytest.approx(lung["window"] - 50, abs=2)
    assert state(page, "#vp-case")["window"] == pytest.approx(case_window, abs=0.01)
    page.click("#reset")
    reset = state(page, "#vp-query")
    assert (reset["window"], reset["level"], reset["invert"], reset["zoom"]) == (256, 128, "false", 1)


def test_wheel_zooms_and_pan_is_linked(page, big_query, screenshots):
    search(page, big_query)
    x, y = centre(page, "#vp-query")
    box = page.locator("#vp-query").bounding_box()
    anchor = (box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
    point = "([x, y]) => { const p = queryView.imagePoint(x, y); return [p.x, p.y]; }"
    local = [anchor[0] - box["x"], anchor[1] - box["y"]]
    under_pointer = page.evaluate(point, local)
    page.mouse.move(*anchor)
    page.mouse.wheel(0, -400)
    page.wait_for_function("Number(document.querySelector('#vp-query').dataset.zoom) > 1.5")
    zoomed, case = state(page, "#vp-query"), state(page, "#vp-case")
    assert zoomed["zoom"] > 1.5 and case["zoom"] == pytest.approx(zoomed["zoom"])
    # zoom about the pointer: the same image point stays under it
    assert page.evaluate(point, local) == pytest.approx(under_pointer, abs=1.0)
    # pan (shift + drag) on the query moves the case the same way
    page.keyboard.down("Shift")
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 80, y + 50, steps=8)
    page.mouse.up()
    page.keyboard.up("Shift")
    panned, case = state(page, "#vp-query"), state(page, "#vp-case")
    assert panned["cx"] < zoomed["cx"] and panned["cy"] < zoomed["cy"]
    assert (case["cx"], case["cy"], case["zoom"]) == pytest.approx((panned["cx"], panned["cy"], panned["zoom"]))
    screenshots(page, "viewer_zoom_pan")
    # keyboard on an image: + zooms, arrows pan (both, linked)
    page.locator("#vp-case").focus()
    page.keyboard.press("+")
    page.keyboard.press("ArrowRight")
    keyed = state(page, "#vp-query")
    assert keyed["zoom"] > panned["zoom"] and keyed["cx"] > panned["cx"]
    # unlinked: the Pan tool moves only the image dragged
    page.uncheck("#link-view")
    page.click("#tool-pan")
    before = state(page, "#vp-query")
    cx, cy = centre(page, "#vp-case")
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx - 60, cy, steps=6)
    page.mouse.up()
    assert state(page, "#vp-case")["cx"] > before["cx"]
    assert state(page, "#vp-query")["cx"] == pytest.approx(before["cx"])
    page.dblclick("#vp-query")
    assert state(page, "#vp-query")["zoom"] == 1


def test_overlays_toggle_per_finding_and_per_region(page, big_query, screenshots):
    from playwright.sync_api import expect

    search(page, big_query)
    plain = stats(page, "#vp-query")["coloured"]
    page.click("#heat-menu summary")
    finding = page.locator("#heat-findings button").first.get_attribute("data-finding")
    page.locator("#heat-findings button").first.click()
    for canvas in ("#vp-query", "#vp-case"):
        expect(page.locator(canvas)).to_have_attribute("data-heat", finding, timeout=30_000)
    expect(page.locator("#heat-current")).to_have_text(finding)
    assert stats(page, "#vp-query")["coloured"] > plain + 0.01, "the heatmap adds colour"
    # another finding replaces it; the active one again turns it off
    second = page.locator("#heat-findings button").nth(1)
    second.click()
    expect(page.locator("#vp-case")).to_have_attribute("data-heat", second.get_attribute("data-finding"),
                                                       timeout=30_000)
    expect(page.locator("#heat-findings button[aria-pressed=true]")).to_have_count(1)
    second.click()
    expect(page.locator("#vp-query")).to_have_attribute("data-heat", "")
    assert stats(page, "#vp-query")["coloured"] <= plain + 0.005
    page.keyboard.press("Escape")
    # regions: best (three by default), none, one, all
    matched = page.evaluate("state.payload.results[0].matched_regions.length")
    expect(page.locator("#vp-query")).to_have_attribute("data-regions", str(matched))
    page.click("#regions-menu summary")
    page.click("#regions-none")
    expect(page.locator("#vp-query")).to_have_attribute("data-regions", "0")
    without = stats(page, "#vp-query")
    page.locator("#region-list input:not([disabled])").first.check()
    expect(page.locator("#vp-case")).to_have_attribute("data-regions", "1")
    expect(page.locator("#regions-current")).to_have_text("1 shown")
    page.click("#regions-all")
    present = page.evaluate("state.payload.query.boxes.filter(b => b.box).length")
    expect(page.locator("#vp-query")).to_have_attribute("data-regions", str(present))
    assert stats(page, "#vp-query")["mean"] != pytest.approx(without["mean"], abs=0.05)
    page.click("#regions-best")
    page.keyboard.press("Escape")
    page.keyboard.press("h")  # the last heatmap back on, from the keyboard
    expect(page.locator("#vp-case")).to_have_attribute("data-heat", second.get_attribute("data-finding"),
                                                       timeout=30_000)
    page.click("#heat-menu summary")  # open, to show the per-finding toggles
    expect(page.locator("#heat-findings button[aria-pressed=true]")).to_have_count(1)
    page.wait_for_timeout(300)
    screenshots(page, "viewer_overlays")


def test_keyboard_walk_through_results(page, big_query, screenshots):
    from playwright.sync_api import expect

    search(page, big_query)
    items = page.locator("#results li")
    ids = [items.nth(i).get_attribute("data-id") for i in range(K)]
    page.locator("#results").focus()

    def selected(index: int):
        expect(items.nth(index)).to_have_attribute("aria-selected", "true")
        expect(page.locator("#case-title")).to_have_text(f"Case {ids[index]}")
        expect(page.locator("#results")).to_have_attribute("aria-activedescendant", f"result-{index}")

    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    selected(2)
    page.keyboard.press("j")
    selected(3)
    page.keyboard.press("k")
    selected(2)
    page.keyboard.press("End")
    selected(K - 1)
    page.keyboard.press("j")  # stays on the last
    selected(K - 1)
    page.keyboard.press("Home")
    selected(0)
    for _ in range(3):
        page.keyboard.press("ArrowDown")
    selected(3)
    expect(page.locator("#vp-case")).to_have_attribute("data-loaded", "true")
    expect(page.locator("#announce")).to_contain_text(f"Case {ids[3]}, rank 4 of {K}")
    assert page.evaluate("document.activeElement.id") == "results"
    # the shortcut keys act on the images from the list too, and Tab reaches the tools
    page.keyboard.press("4")
    expect(page.locator("#query-wl")).to_contain_text("Bone")
    page.keyboard.press("2")
    screenshots(page, "viewer_keyboard")
    page.keyboard.press("?")
    expect(page.locator("#help")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#help")).to_be_hidden()


def _query_with_known_findings(module_server: str, k: int) -> int:
    """The first archived image whose top ``k`` results carry a known finding (asked of the API,
    so the test does not depend on which image the tiny archive's model ranks where)."""
    for image_id in range(1, 64):
        response = requests.post(f"{module_server}/api/v1/search/by-id/{image_id}", data={"k": k}, timeout=60)
        if response.status_code == 404:
            continue
        response.raise_for_status()
        if any(r.get("known_findings") for r in response.json()["results"]):
            return image_id
    raise AssertionError("no archived image of the tiny archive has a result with a known finding")


def test_an_archived_image_is_a_query_and_the_finding_filter_says_how_it_matched(page, module_server):
    from playwright.sync_api import expect

    query = _query_with_known_findings(module_server, 4)
    page.fill("#k", "4")
    page.fill("#archive-id", str(query))
    page.click("#by-id button")
    expect(page.locator("#query-meta")).to_contain_text(f"archive #{query}", timeout=30_000)
    expect(page.locator("#results li")).to_have_count(4, timeout=30_000)
    expect(page.locator("#query-known-box")).to_be_visible()  # an archived query has labels
    findings = page.evaluate("state.payload.results.flatMap(r => r.known_findings || [])")
    assert findings, "the results the API gave had a known finding; the page shows none"
    page.select_option("#finding", findings[0])
    page.click("#by-id button")
    expect(page.locator("#filter-note")).to_contain_text(f"“{findings[0]}”", timeout=30_000)
    expect(page.locator("#filter-note")).to_contain_text("matched by known label")
    expect(page.locator("#results li .chip.filter").first).to_have_text("filter: label")
    expect(page.locator("#case-details")).to_contain_text("by known label")


def test_the_pacs_link_appears_when_the_api_sends_a_viewer_url(page):
    """The page's side of `--viewer-url` (the API fields come with the DICOMweb work on main):
    the server's by-id response is passed through with `viewer_url` on each result, or `null`
    and `viewer_note`, as that API sends them. (A by-id search: Chromium does not hand an
    intercepted upload's file to the route.)"""
    import json

    from playwright.sync_api import expect

    def with_viewer_url(route):
        response = route.fetch()
        body = response.json()
        for index, result in enumerate(body["results"]):
            if index == 2:  # as the API sends it when it cannot build one (e.g. a pseudonymised index)
                result["viewer_url"], result["viewer_note"] = None, "the index stores pseudonymised DICOM UIDs"
            else:
                result["viewer_url"] = f"https://pacs.example.org/viewer?case={result['id']}"
        route.fulfill(response=response, body=json.dumps(body))

    page.route("**/api/v1/search/by-id/*", with_viewer_url)
    page.fill("#k", "3")
    page.fill("#archive-id", "2")
    page.click("#by-id button")
    expect(page.locator("#vp-case")).to_have_attribute("data-loaded", "true", timeout=30_000)
    link = page.locator("#case-pacs")
    expect(link).to_be_visible()
    case_id = page.locator("#results li").first.get_attribute("data-id")
    assert link.get_attribute("href") == f"https://pacs.example.org/viewer?case={case_id}"
    assert link.get_attribute("target") == "_blank" and "noopener" in link.get_attribute("rel")
    expect(page.locator("#case-pacs-none")).to_be_hidden()
    page.keyboard.press("j")  # the next case has its own link
    expect(link).to_have_attribute("href", "https://pacs.example.org/viewer?case="
                                   + page.locator("#results li").nth(1).get_attribute("data-id"))
    page.keyboard.press("j")  # no link for this one: the reason, no dead link
    expect(link).to_be_hidden()
    expect(page.locator("#case-pacs-none")).to_be_visible()
    expect(page.locator("#case-pacs-none")).to_have_attribute("title", "the index stores pseudonymised DICOM UIDs")

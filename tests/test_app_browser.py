"""A real browser (headless Chromium through Playwright) against the app with the tiny model: upload, run, three
result columns with scores, a pixel-threshold move that re-draws the overlay without a model call, the CSV."""
import csv
from pathlib import Path

import pytest

from served_app import CHROMIUM, served_tiny
from served_app import CHROMIUM_ARGS as ARGS

ASSETS = Path(__file__).resolve().parents[1] / "assets"
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tiny_files):
    with served_tiny(tiny_files) as (service, _, url):
        yield service, url


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (.ci/run does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600}, accept_downloads=True)
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def overlay_sources(page, variant):
    return page.locator(f"#overlay-{variant} img").evaluate_all("els => els.map(e => e.src)")


def test_upload_run_explore_download(served, page, tmp_path):
    service, url = served
    page.goto(url, wait_until="load")
    page.wait_for_selector("#run")
    page.set_input_files("#input-image input[type=file]", str(ASSETS / "examples" / "fabric_hole.png"))
    page.wait_for_selector("#input-image img")
    page.click("#run")
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('Working')"
                           " || document.querySelector('#summary').innerText.includes('fabric_hole')")
    scores = {}
    for v in ("tf", "ft", "clip"):
        page.wait_for_selector(f"#card-{v} .mrad-score")
        assert page.locator(f"#result-{v}").is_visible()
        scores[v] = float(page.locator(f"#card-{v} .mrad-score").inner_text())
        assert 0 <= scores[v] <= 1
        assert page.locator(f"#card-{v}").inner_text().split()[0] in ("ANOMALOUS", "normal")
    assert "fabric_hole.png" in page.locator("#summary").inner_text()
    expected = service.analyze(str(ASSETS / "examples" / "fabric_hole.png"), ["tf", "ft", "clip"], "env")
    for v, s in scores.items():
        assert s == pytest.approx(expected.outputs[v].score, abs=1e-3)
    calls = dict(service.calls)

    before = overlay_sources(page, "clip")
    page.locator("#pixel-threshold input[type=range]").fill("0.05")
    page.wait_for_function("([sel, old]) => { const s = [...document.querySelectorAll(sel)].map(e => e.src);"
                           " return s.length > 0 && s.join() !== old.join(); }", arg=["#overlay-clip img", before])
    assert "pixels ≥ 0.05" in page.locator("#card-clip").inner_text()
    assert dict(service.calls) == calls  # re-drawn from the cached maps: no encode, no score

    page.click("#export")  # the CSV is written when asked for
    page.wait_for_selector("#csv a")
    with page.expect_download() as download:
        page.locator("#csv a").first.click()
    path = tmp_path / "results.csv"
    download.value.save_as(path)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["MRAD-TF", "MRAD-FT", "MRAD-CLIP"]
    assert float(rows[2]["score"]) == pytest.approx(scores["clip"], abs=1e-3)
    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
    assert (tmp_path / "app.png").stat().st_size > 10_000


def test_input_detect_results_and_the_threshold_share_a_1280x800_screen(served, page):
    """Input, Detect, the three results and the image threshold slider are on screen together at 1280x800."""
    _, url = served
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(url, wait_until="load")
    page.wait_for_selector("#run")
    page.set_input_files("#input-image input[type=file]", str(ASSETS / "examples" / "wood_crack.png"))
    page.wait_for_selector("#input-image img")
    page.click("#run")
    page.wait_for_selector("#card-clip .mrad-score")
    for selector in ("#input-image", "#run", "#image-threshold", "#overlay-tf", "#overlay-ft", "#overlay-clip"):
        box = page.locator(selector).bounding_box()
        assert box and box["y"] < 800 and box["y"] + box["height"] > 0, (selector, box)


"""A real browser (headless Chromium through Playwright) teaches the bank: Detect an image, open the teaching panel,
"Mark the defect", paint it with the ImageEditor's brush, "Add as defect", and see the score change; Undo brings the
earlier score back."""
from pathlib import Path

import pytest

from served_app import CHROMIUM, served_tiny
from served_app import CHROMIUM_ARGS as ARGS

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tiny_files):
    with served_tiny(tiny_files) as (service, _, url):
        yield service, url


def score(page, variant="tf") -> float:
    return float(page.locator(f"#card-{variant} .mrad-score").inner_text())


def wait_for_new_score(page, old: float):
    page.wait_for_function("old => { const e = document.querySelector('#card-tf .mrad-score');"
                           " return e && e.innerText.trim() !== old; }", arg=f"{old:.3f}")


def test_paint_a_defect_with_the_brush_add_it_and_see_the_score_change(served, tiny_files, tmp_path):
    from playwright.sync_api import sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (.ci/run does)")
    service, url = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_default_timeout(60_000)
        page.goto(url, wait_until="load")
        page.wait_for_selector("#run")
        page.set_input_files("#input-image input[type=file]", tiny_files["images"][1])
        page.wait_for_selector("#input-image img")
        page.click("#run")
        page.wait_for_selector("#card-tf .mrad-score")
        before = score(page)

        page.locator("#teach-panel > button").first.click()  # open the panel under the results
        page.click("#mark-defect")
        canvas = page.locator("#defect-editor canvas").first
        page.wait_for_function("() => document.querySelector('#defect-editor canvas') &&"
                               " document.querySelector('#defect-editor canvas').width > 0")
        page.wait_for_timeout(1000)  # the background image is drawn
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx - 50, cy - 90)
        page.mouse.down()
        for dy in range(-90, 30, 10):  # a zig-zag of brush strokes over the upper middle (the red blob)
            page.mouse.move(cx + (50 if dy % 20 == 0 else -50), cy + dy, steps=8)
        page.mouse.up()
        page.wait_for_timeout(500)
        page.click("#add-defect")
        page.wait_for_function("() => document.querySelector('#teach-report').innerText.includes('added as defect')")
        wait_for_new_score(page, before)
        after = score(page)
        assert after > before  # its own defect, now in the memory, raises its score
        report = page.locator("#teach-report").inner_text()
        assert "query_1 added as defect" in report
        assert "My bank" in page.locator("#source input").input_value()  # Detect now uses the taught bank
        newest = max(service.catalogue.bank_dir.iterdir(), key=lambda f: f.stat().st_mtime).name
        ib, pb = service.catalogue.bank(newest)
        assert ib.ids[-1] == "query_1" and int(ib.labels[-1]) == 1
        # the painted strokes arrived as its mask: an anomalous patch entry (the region) and a normal one (the rest)
        assert pb.labels[pb.owner == len(ib) - 1].tolist() == [1, 0]

        page.click("#undo")
        page.wait_for_function("() => document.querySelector('#teach-report').innerText.includes('Undone')")
        wait_for_new_score(page, after)
        assert score(page) == pytest.approx(before, abs=1e-3)
        page.screenshot(path=str(tmp_path / "teach.png"), full_page=True)
        browser.close()

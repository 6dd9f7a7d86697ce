"""Issue 20 in a real browser (headless Chromium, the app on the tiny model): a failed Detect gives the button back
and says what failed; changing a live control never shows an error badge nor logs a traceback; a refused upload says
why on the page; after Calibrate each card is judged by its own variant's threshold and says so."""
from pathlib import Path

import pytest

from served_app import CHROMIUM, CHROMIUM_ARGS, served_tiny
from tiny_model import synthetic_image

ASSETS = Path(__file__).resolve().parents[1] / "assets"
VARIANT_NAMES = {"tf": "MRAD-TF", "ft": "MRAD-FT", "clip": "MRAD-CLIP"}
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tiny_files):
    with served_tiny(tiny_files) as (service, demo, url):
        yield service, url


@pytest.fixture
def page(served):
    from playwright.sync_api import sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (.ci/run does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.set_default_timeout(120_000)
        page.goto(served[1], wait_until="load")
        page.wait_for_selector("#run")
        yield page
        browser.close()


def server_problems(capfd, caplog) -> list:
    """Lines of the server's log (stderr and log records) that report a traceback or an output-count error."""
    err = capfd.readouterr().err + caplog.text
    return [line for line in err.splitlines() if "Traceback" in line or "didn't return enough" in line]


def error_badges(page) -> int:
    """Gradio's red "Error" badges on components (a handler that failed or returned the wrong outputs)."""
    return page.locator("span.error").count()


def wait_idle(page):
    """Until no component shows Gradio's progress (the queue has answered)."""
    page.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar, .meta-text')")


def detect(page, image):
    page.set_input_files("#input-image input[type=file]", str(image))
    page.wait_for_selector("#input-image img")
    page.click("#run")
    page.wait_for_function("() => { const s = document.querySelector('#summary').innerText;"
                           " return !s.includes('Working') && (s.includes('encoded') || s.includes('re-used')); }")
    page.wait_for_selector("#card-clip .mrad-score")
    wait_idle(page)


def test_a_failed_detect_gives_the_button_back_and_keeps_the_earlier_results(served, page, capfd, caplog):
    detect(page, ASSETS / "examples" / "fabric_hole.png")
    before = page.locator("#card-tf .mrad-score").inner_text()
    for name in VARIANT_NAMES.values():  # no variant chosen: Detect fails with a clear message
        page.locator(f"#variants label:has-text('{name}')").click()
    page.click("#run")
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('failed')")
    page.wait_for_function("() => !document.querySelector('#run').disabled")
    summary = page.locator("#summary").inner_text()
    assert "Detect failed" in summary and "choose at least one variant" in summary and "Working" not in summary
    assert page.locator("#card-tf .mrad-score").inner_text() == before  # the earlier results as before
    assert "stale" not in (page.locator("#result-tf").get_attribute("class") or "")
    for name in VARIANT_NAMES.values():  # and Detect works again
        page.locator(f"#variants label:has-text('{name}')").click()
    page.click("#run")
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('fabric_hole')"
                           " && !document.querySelector('#run').disabled")
    assert error_badges(page) == 0
    assert server_problems(capfd, caplog) == []


def test_every_live_control_redraws_without_an_error(served, page, capfd, caplog):
    detect(page, ASSETS / "examples" / "wood_crack.png")
    steps = [("normalisation", lambda: page.locator("#normalisation label:has-text('min–max')").click()),
             ("normalisation", lambda: page.locator("#normalisation label:has-text('raw')").click()),
             ("normalisation", lambda: page.locator("#normalisation label:has-text('calibrated')").click()),
             ("normalisation", lambda: page.locator("#normalisation label:has-text('raw')").click()),
             ("image threshold", lambda: page.locator("#image-threshold input[type=range]").fill("0.3")),
             ("pixel threshold", lambda: page.locator("#pixel-threshold input[type=range]").fill("0.2"))]
    page.get_by_text("Overlay style").click()
    steps += [("opacity", lambda: page.locator("#opacity input[type=range]").fill("0.8")),
              ("contours", lambda: page.locator("#contours input").click()),
              ("binary mask", lambda: page.locator("#binary input").click()),
              ("colormap", lambda: (page.locator("#colormap input").click(),
                                    page.locator("ul[role=listbox] li").nth(1).click()))]
    for what, act in steps:
        old = page.locator("#card-tf").inner_html()
        act()
        wait_idle(page)
        assert error_badges(page) == 0, what
        assert server_problems(capfd, caplog) == [], what
        if what in ("pixel threshold", "image threshold", "normalisation"):  # a visible redraw
            page.wait_for_function("old => document.querySelector('#card-tf').innerHTML !== old", arg=old)


@pytest.mark.parametrize("name, content, reason", [
    ("tiny.png", "png10", "too small"),
    ("notes.png", b"this is a text file, not a picture", "not an image"),
])
def test_a_refused_upload_says_why_on_the_page(served, page, tmp_path, name, content, reason):
    path = tmp_path / name
    if content == "png10":
        synthetic_image(1, size=(10, 10))[0].save(path)
    else:
        path.write_bytes(content)
    page.set_input_files("#input-image input[type=file]", str(path))
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('refused')")
    assert reason in page.locator("#summary").inner_text()
    assert page.locator("#input-image img").count() == 0  # the file is not kept as the input


def test_after_calibrate_each_card_is_judged_by_its_own_threshold(served, page, tmp_path):
    from mrad_core import teaching
    service, _ = served
    paths = []
    for i in range(6):
        synthetic_image(700 + i)[0].save(tmp_path / f"good_{i}.png")
        paths.append(str(tmp_path / f"good_{i}.png"))
    expected = teaching.calibrate(service, paths, list(VARIANT_NAMES), "env", None, 0.2, "line 7")
    thresholds = {v: p.image_threshold for v, p in expected.variants.items()}
    assert len({round(t, 3) for t in thresholds.values()}) > 1  # the test needs thresholds that differ
    detect(page, ASSETS / "examples" / "fabric_hole.png")
    page.locator("#teach-panel").get_by_text("Make it yours").click()
    page.get_by_role("tab", name="Calibrate (inspection profile)").click()
    page.set_input_files("#calibration-files input[type=file]", paths)
    page.locator("input[aria-label='False alarms allowed (% of normal images)'], "
                 "label:has-text('False alarms allowed') input").first.fill("20")
    page.locator("label:has-text('Profile name') input, label:has-text('Profile name') textarea").first.fill(
        "line 7")
    page.click("#calibrate")
    page.wait_for_function("() => document.querySelector('#card-tf').innerText.includes('line 7')")
    for v, threshold in thresholds.items():
        card = page.locator(f"#card-{v}")
        shown = float(card.locator(".mrad-threshold").inner_text().strip("()").split()[-1])
        assert shown == pytest.approx(threshold, abs=5e-4), v
        score = float(card.locator(".mrad-score").inner_text())
        assert card.locator(".mrad-verdict").inner_text() == ("ANOMALOUS" if score >= threshold else "normal"), v
        assert f"{VARIANT_NAMES[v]}'s threshold in profile 'line 7'" in card.inner_text()
    assert "image-threshold slider judges only" in page.locator("#summary").inner_text()


def test_evaluate_figures_are_shown_whole(served, page, tmp_path):
    good, bad = [], []
    for i in range(4):
        synthetic_image(800 + i)[0].save(tmp_path / f"good_{i}.png")
        img, mask = synthetic_image(900 + i, defect=True)
        img.save(tmp_path / f"bad_{i}.png")
        good.append(str(tmp_path / f"good_{i}.png"))
        bad.append(str(tmp_path / f"bad_{i}.png"))
    page.get_by_role("tab", name="Evaluate").click()
    page.set_input_files("#eval-good input[type=file]", good)
    page.set_input_files("#eval-bad input[type=file]", bad)
    page.wait_for_function("() => document.querySelectorAll('#eval-bad .file-preview tr, #eval-bad a').length > 0")
    page.click("#run-eval")
    page.wait_for_function("() => document.querySelector('#eval-report').innerText.includes('images evaluated')")
    for gallery in ("#eval-plots", "#eval-mistakes"):
        page.locator(gallery).scroll_into_view_if_needed()  # its images load lazily, as the user scrolls to them
        page.wait_for_function(f"() => [...document.querySelectorAll('{gallery} img')].some(i => i.naturalWidth)")
        shown = page.locator(f"{gallery} img").evaluate_all(
            "els => els.filter(e => e.naturalWidth).map(e => ({fit: getComputedStyle(e).objectFit,"
            " natural: e.naturalWidth / e.naturalHeight, box: e.clientWidth / e.clientHeight}))")
        assert shown, gallery
        for im in shown:  # the whole figure: scaled to fit (never cropped to fill the thumbnail)
            assert im["fit"] in ("contain", "scale-down") or abs(im["box"] / im["natural"] - 1) < 0.02, (gallery, im)
        # and not cut by a scroll window: the gallery's box holds every figure's box whole
        clipped = page.locator(gallery).evaluate(
            "g => { const wrap = g.querySelector('.grid-wrap') || g; const w = wrap.getBoundingClientRect();"
            " return [...g.querySelectorAll('img')].map(i => i.getBoundingClientRect())"
            ".filter(r => r.top < w.top - 1 || r.bottom > w.bottom + 1).length }")
        assert clipped == 0, gallery


def boxes(page, *selectors) -> dict:
    """Selector -> its box on the page (top, bottom, left, right in CSS px, from the page's top-left)."""
    return page.evaluate("""sels => Object.fromEntries(sels.map(s => { const r = document.querySelector(s)
        .getBoundingClientRect(); return [s, {top: r.top + scrollY, bottom: r.bottom + scrollY, left: r.left,
        right: r.right}]; }))""", list(selectors))


def settled(page):
    """Until the parts the narrow layout orders run no CSS transition: Gradio's button animates its properties (its
    CSS order too) after the screen's width crosses the breakpoint (getAnimations brings the styles up to date)."""
    page.wait_for_function("() => ['#input-image', '#run', '#detect-results', '#detect-controls'].every("
                           "s => document.querySelector(s).getAnimations().length === 0)")


def test_on_a_narrow_screen_the_results_follow_the_detect_button(served, page):
    """At 400 px: the image, the button, then the results (summary, the three columns), and only then the live
    controls and the examples. At 1280 px the results stay beside the inputs column, the controls under the button."""
    page.set_viewport_size({"width": 400, "height": 850})
    settled(page)
    detect(page, ASSETS / "examples" / "fabric_hole.png")
    parts = ("#input-image", "#run", "#summary", "#result-tf", "#result-clip", "#image-threshold",
             "#detect-controls")
    b = boxes(page, *parts)
    assert b["#input-image"]["bottom"] <= b["#run"]["top"] < b["#run"]["bottom"] <= b["#summary"]["top"], b
    assert b["#summary"]["bottom"] <= b["#result-tf"]["top"] < b["#result-clip"]["bottom"], b
    assert b["#result-clip"]["bottom"] <= b["#detect-controls"]["top"] <= b["#image-threshold"]["top"], b
    assert b["#summary"]["top"] - b["#run"]["bottom"] < 60  # right after the button, no scroll in between
    page.set_viewport_size({"width": 1280, "height": 800})
    settled(page)
    b = boxes(page, *parts, "#detect-results")
    assert abs(b["#detect-results"]["top"] - b["#input-image"]["top"]) < 2  # side by side, as before
    assert b["#run"]["bottom"] <= b["#image-threshold"]["top"] and b["#image-threshold"]["right"] < \
        b["#detect-results"]["left"]

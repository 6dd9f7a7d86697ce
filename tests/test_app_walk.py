"""Every control of every tab, once, in a real browser (the app on the tiny model, after one Detect): no traceback
in the server log (user errors such as "no files" are toasts and Gradio's error badges, not tracebacks)."""
from pathlib import Path

import pytest

from served_app import CHROMIUM, CHROMIUM_ARGS, served_tiny

ASSETS = Path(__file__).resolve().parents[1] / "assets"
pytestmark = pytest.mark.browser
TABS = ("Detect", "Batch", "Bank", "Evaluate", "Monitor")
CONTROLS = ("button:visible:not([role=tab]), input[type=range]:visible, input[type=checkbox]:visible, "
            "input[type=radio]:visible, input[type=number]:visible")


def idle(page):
    page.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar, .meta-text')", timeout=60_000)


def problems(capfd, caplog) -> list:
    text = capfd.readouterr().err + caplog.text
    return [line for line in text.splitlines() if "Traceback" in line or "didn't return enough" in line]


def test_every_control_of_every_tab_once(tiny_files, capfd, caplog):
    from playwright.sync_api import sync_playwright
    with served_tiny(tiny_files) as (service, demo, url), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        page.set_default_timeout(120_000)
        page.on("filechooser", lambda chooser: None)  # upload areas are buttons too: choose nothing
        page.goto(url, wait_until="load")
        page.set_input_files("#input-image input[type=file]", str(ASSETS / "examples" / "pill_chip.png"))
        page.wait_for_selector("#input-image img")
        page.click("#run")
        page.wait_for_selector("#card-clip .mrad-score")
        idle(page)
        page.set_default_timeout(10_000)  # a control detached by a re-render is skipped, not waited for
        for accordion in page.locator("button.label-wrap:visible").all():  # open every accordion first
            accordion.click()
        walked = 0
        for tab in TABS:
            page.keyboard.press("Escape")
            page.get_by_role("tab", name=tab, exact=True).first.click()
            panel = page.locator("[role=tabpanel]:visible").first
            seen = set()
            for _ in range(2):  # controls revealed by others (inner tabs, accordions) on the next pass
                controls = panel.locator(CONTROLS).all()
                for control in controls:
                    try:
                        key = control.evaluate("e => e.id + '|' + e.type + '|' + e.getAttribute('aria-label') + '|'"
                                               " + e.innerText + '|' + (e.closest('[id]') || {}).id")
                    except Exception:  # detached by a re-render
                        continue
                    if key in seen:
                        continue
                    seen.add(key)
                    kind = control.evaluate("e => e.tagName + ':' + (e.type || '')")
                    if kind.startswith("BUTTON") and not control.inner_text().strip():
                        continue  # Gradio's icon buttons (fullscreen, download, clear): not the app's controls
                    try:
                        if kind == "INPUT:range":
                            control.fill("0.3", timeout=5_000)
                        elif kind == "INPUT:number":  # a value inside its bounds (the middle)
                            low, high = control.evaluate("e => [e.min, e.max]")
                            value = (float(low or 0) + float(high or 4)) / 2
                            control.fill(f"{value:g}", timeout=5_000)
                            control.press("Enter")
                        else:
                            control.click(timeout=5_000)
                    except Exception:  # covered, disabled or gone: not a control a user can use now
                        continue
                    walked += 1
                    idle(page)
                    assert problems(capfd, caplog) == [], (tab, key)
                for inner in panel.locator("[role=tab]:visible").all():  # inner tabs (Make it yours)
                    try:
                        inner.click(timeout=5_000)
                    except Exception:
                        continue
        assert walked > 25  # the walk reached the controls
        assert problems(capfd, caplog) == []
        browser.close()

"""The Monitor tab's camera in a real browser: headless Chromium with a fake camera playing a .y4m file written
here; live scores appear and the rolling timeline grows."""
import re
from pathlib import Path

import cv2
import pytest

from served_app import CHROMIUM
from served_app import CHROMIUM_ARGS as ARGS
from test_app_monitor import served  # noqa: F401 (the fixture: the app served with the tiny model)
from test_monitor import line_frames

pytestmark = pytest.mark.browser


def write_y4m(path, frames, fps=10):
    """YUV4MPEG2 (4:2:0), what Chromium's --use-file-for-fake-video-capture plays (in a loop)."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


def _sessions(page_obj):
    """The LiveSessions the server holds (through the scorer threads' targets)."""
    import threading
    found = []
    for t in threading.enumerate():
        target = getattr(t, "_target", None)
        owner = getattr(target, "__self__", None)
        score = getattr(owner, "score", None)
        if t.name == "mrad-stream" and getattr(score, "__self__", None) is not None:
            found.append(score.__self__)
    return found


def test_fake_camera_gets_live_scores_and_a_growing_timeline(served, tmp_path):
    from playwright.sync_api import sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package")
    frames = [cv2.resize(f, (160, 120)) for f in line_frames()]
    y4m = write_y4m(tmp_path / "camera.y4m", frames)
    args = ARGS + ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                   f"--use-file-for-fake-video-capture={y4m}"]
    _, url, page_obj = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        context = browser.new_context(viewport={"width": 1400, "height": 1600}, permissions=["camera"])
        page = context.new_page()
        page.set_default_timeout(120_000)
        try:
            page.goto(url, wait_until="load")
            page.get_by_role("tab", name="Monitor").click()
            page.get_by_role("tab", name="Camera").click()
            page.wait_for_selector("#monitor-camera")
            page.locator("#monitor-camera button", has_text="Click to Access Webcam").click()
            page.wait_for_selector("#monitor-camera video:not(.hide)")  # the fake camera plays
            page.locator("#monitor-camera button", has_text="Record").click()  # start streaming
            page.wait_for_function("() => document.querySelector('#monitor-live-text').innerText.includes('MRAD-')")
            text = page.locator("#monitor-live-text").inner_text()
            assert "frames/s" in text and "dropped" in text
            scored = int(re.search(r"(\d+) frames scored", text).group(1))
            page.wait_for_function(
                "n => { const m = document.querySelector('#monitor-live-text').innerText.match(/(\\d+) frames scored/);"
                " return m && parseInt(m[1]) >= n; }", arg=scored + 2)
            # the rolling timeline (a Vega-Lite chart) has drawn points
            page.wait_for_selector("#monitor-live-plot canvas, #monitor-live-plot svg")
            page.wait_for_selector("#monitor-live img")  # the live overlay
            live = [s for s in _sessions(page_obj)]
            assert live and all(s.monitor.scored_frames >= scored + 2 for s in live[-1:])
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print("screenshot:", tmp_path / "failure.png")
            if page.locator("#monitor-camera").count():
                print(page.locator("#monitor-camera").inner_html()[:3000])
            raise
        finally:
            browser.close()
            for session in _sessions(page_obj):  # no scoring thread outlives the test
                assert session.close(timeout=300)

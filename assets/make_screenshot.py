#!/usr/bin/env python3
"""Make assets/screenshot.png: the app with MRAD-TF, MRAD-FT and MRAD-CLIP side by side, as a user sees it.

    python assets/make_screenshot.py [--example wood_crack] [--out assets/screenshot.png]

Starts `python app.py` in a subprocess on a free port with the full-size parity fixture (so all three variants
have heads and banks, no download): MRAD_BACKBONE = the generated ViT-L/14@336 backbone with *random* weights
(`make_fixture.py` writes it if it is missing), MRAD_HEADS / MRAD_IMAGE_BANK / MRAD_PATCH_BANK = the fixture's heads
and banks. The maps it shows are therefore not those of the trained CLIP. Then headless Chromium (Playwright, Debian's
/usr/bin/chromium) at 1280x800 clicks an example image, runs Detect with all three variants, waits until the three
result cards show their scores and saves the screenshot (palette-quantised PNG, to stay small).
`--tiny` uses the tests' tiny open_clip model instead (seconds instead of minutes; its maps are noise).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
VARIANTS = ("tf", "ft", "clip")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixture_files(shared: Path, fixture: Path) -> dict:
    """The parity fixture's files as the app's environment variables (the backbone generated if missing)."""
    if not (shared / "parity" / "heads_official.pth").is_file():
        raise SystemExit(f"the parity fixture is not in {shared / 'parity'}: pass --shared DIR or set MRAD_SHARED "
                         "(or use --tiny)")
    backbone = fixture / "backbone_openai_vitl14_336.safetensors"
    if not backbone.is_file():
        subprocess.run([sys.executable, str(shared / "parity" / "make_fixture.py"), "--out", str(fixture)], check=True)
    return {"MRAD_BACKBONE": str(backbone), "MRAD_HEADS": str(shared / "parity" / "heads_official.pth"),
            "MRAD_IMAGE_BANK": str(shared / "parity" / "cache_model_fixture.pt"),
            "MRAD_PATCH_BANK": str(shared / "parity" / "cache_patch_model_fixture.pt")}


def tiny_files(folder: Path) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import make_tiny_files  # noqa: E402  (the tests' helper)
    files = make_tiny_files(folder)
    return {"MRAD_MODEL": str(files["model"]), "MRAD_BACKBONE": str(files["backbone"]),
            "MRAD_HEADS": str(files["heads"]), "MRAD_IMAGE_BANK": str(files["image_bank"]),
            "MRAD_PATCH_BANK": str(files["patch_bank"])}


def wait_until_served(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll until the app answers (the process is watched: its log is shown if it dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the app exited with status {proc.returncode}:\n{log.read_text()}")
            time.sleep(0.5)
    raise SystemExit(f"the app did not answer within {timeout:.0f} s:\n{log.read_text()}")


def shoot(url: str, example: str, out: Path, timeout_ms: int) -> None:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
        page.set_default_timeout(timeout_ms)
        page.goto(url, wait_until="load")
        page.wait_for_selector("#run")
        # the three variants ticked (the source's description has arrived and left them all on)
        for v in VARIANTS:
            box = page.locator(f"#variants input[type=checkbox][name='{v}'], #variants label:has-text('MRAD-{v.upper()}')"
                               " input[type=checkbox]").first
            box.wait_for()
            if not box.is_checked():
                box.check()
        # click the example (its thumbnail in the "Synthetic examples" table) and wait for it in the input
        page.locator(f"img[src*='{example}']").first.click()
        page.wait_for_selector("#input-image img")
        page.click("#run")
        for v in VARIANTS:
            page.wait_for_selector(f"#card-{v} .mrad-score")
            page.wait_for_selector(f"#overlay-{v} img")
        page.wait_for_function("() => ![...document.querySelectorAll('.progress-text, .eta-bar')].some("
                               "e => e.offsetParent !== null)")  # progress bars gone
        page.wait_for_function("() => [...document.querySelectorAll('[id^=overlay-] img')].every("
                               "e => e.complete && e.naturalWidth > 0)")  # the overlay images decoded
        page.wait_for_selector("#run:not([disabled])")  # the button is enabled again when the run has ended
        page.wait_for_function("() => document.querySelector('#status').innerText.trim().startsWith('ready')")
        # start at the memory-bank row, so the three result cards (verdict, score) fit in 800 px with it
        page.evaluate("() => window.scrollTo(0, document.querySelector('#source').getBoundingClientRect().top"
                      " + window.scrollY - 60)")
        page.screenshot(path=str(out))
        browser.close()


def shrink(path: Path) -> None:
    """Palette-quantise the PNG (the UI has few colours; the overlays survive 256 well)."""
    from PIL import Image
    img = Image.open(path).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def main() -> None:
    default_shared = Path(os.environ.get("MRAD_SHARED") or ROOT.parent / "shared")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "assets" / "screenshot.png")
    ap.add_argument("--example", default="wood_crack", help="stem of an image in assets/examples/")
    ap.add_argument("--shared", type=Path, default=default_shared, help="folder holding parity/ [$MRAD_SHARED]")
    ap.add_argument("--fixture", type=Path, default=Path.home() / ".cache" / "mrad" / "parity-fixture",
                    help="where the generated full-size backbone is (written if missing)")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny model instead of the full-size fixture")
    ap.add_argument("--timeout", type=float, default=900, help="seconds for the start and for the Detect run")
    args = ap.parse_args()
    if not (ROOT / "assets" / "examples" / f"{args.example}.png").is_file():
        raise SystemExit(f"no assets/examples/{args.example}.png")

    with tempfile.TemporaryDirectory(prefix="mrad-screenshot-") as tmp:
        tmp = Path(tmp)
        files = tiny_files(tmp / "tiny") if args.tiny else fixture_files(args.shared, args.fixture)
        # fp32 on PyTorch: no OpenVINO conversion on the way; nothing downloaded; a throw-away cache
        env = {**os.environ, **files, "HF_HUB_OFFLINE": "1", "MRAD_DEVICE": "cpu", "MRAD_PRECISION": "fp32",
               "MRAD_ENGINE": "torch", "MRAD_CALIBRATION": "0", "MRAD_CACHE_DIR": str(tmp / "cache")}
        port, log = free_port(), tmp / "app.log"
        with open(log, "w") as log_file:
            proc = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)],
                                    cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}/"
                wait_until_served(url, proc, log, args.timeout)
                shoot(url, args.example, args.out, int(args.timeout * 1000))
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    shrink(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()

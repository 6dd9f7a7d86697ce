"""The app launched in-process for tests, as `python app.py` serves it (the same launch options), and browser
settings for Playwright with Debian's Chromium."""
from __future__ import annotations

import contextlib
import socket

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(service):
    """(demo, url) of the app around `service`, on 127.0.0.1 and a free port; close it with demo.close()."""
    import app
    demo = app.build_demo(service)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            **app.launch_options(demo))
    return demo, url


TINY_FILES = ("backbone", "heads", "image_bank", "patch_bank")


@contextlib.contextmanager
def served_tiny(tiny_files, **service_options):
    """(service, demo, url): the app on the tiny model's files (tests/tiny_model.py), closed on exit."""
    from mrad_core.service import Service
    service = Service(files={k: tiny_files[k] for k in TINY_FILES}, model=tiny_files["model"], device="cpu",
                      **service_options)
    demo, url = launch(service)
    try:
        yield service, demo, url
    finally:
        demo.close()

"""The app launched in-process for tests, as `python app.py` serves it (the app factory, the same launch options),
and browser settings for Playwright with Debian's Chromium."""
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


def serve(demo):
    """(demo, url): `demo` served on 127.0.0.1 and a free port with app.py's launch options; close it with
    demo.close()."""
    from mrad_core.ui import launch_kwargs
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            **launch_kwargs(demo.mrad.settings, demo.mrad.api_defaults()))
    return demo, url


def launch(service):
    """(demo, url) of the app (create_app) around `service`, on 127.0.0.1 and a free port; close it with
    demo.close()."""
    from mrad_core.ui import create_app
    return serve(create_app(service.settings, service))


TINY_FILES = ("backbone", "heads", "image_bank", "patch_bank")


@contextlib.contextmanager
def served_tiny(tiny_files, **options):
    """(service, demo, url): the app (create_app) on the tiny model's files (tests/tiny_model.py), closed on exit.
    `options`: more settings (precision="fp32", …)."""
    from mrad_core.settings import Settings
    from mrad_core.ui import create_app
    settings = Settings.from_env(files={k: tiny_files[k] for k in TINY_FILES}, model=tiny_files["model"],
                                 device="cpu", **options)
    demo, url = serve(create_app(settings))
    try:
        yield demo.mrad.service, demo, url
    finally:
        demo.close()
        # auto on a CPU may be OpenVINO converting in the background (a cold cache): its thread ends with the test
        assert demo.mrad.service.join_background(600), "the background OpenVINO conversion did not end"

"""MRAD Gradio app: compare MRAD-TF / FT / CLIP side by side on your images, explore with live sliders.

A thin front end: the page is built in mrad_core/ui (one module per tab), the model is held by
mrad_core.service.Service, settings come from the environment once (mrad_core/settings.py).
`python app.py [--host H] [--port P] [--share]`. API endpoints: /predict, /predict_batch, /build_bank, /status.
"""
from __future__ import annotations

import argparse
import logging

from mrad_core.detector import torch_report
from mrad_core.service import Service
from mrad_core.settings import Settings
from mrad_core.ui import build_demo, launch_kwargs

log = logging.getLogger("mrad.app")

SETTINGS = Settings.from_env()
SERVICE = Service(SETTINGS)
if SETTINGS.zero_gpu:  # every GPU worker forks from this process: the model must be in memory before
    SERVICE.preload()
demo = build_demo(SERVICE)


def launch_options(app_demo=demo) -> dict:
    """Everything `launch` needs beyond host and port (tests launch their own demo the same way)."""
    return launch_kwargs(app_demo.mrad.settings, app_demo.mrad.api_defaults())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="MRAD Gradio app")
    parser.add_argument("--host", default=None, help="interface to listen on (0.0.0.0 for all) [$GRADIO_SERVER_NAME, "
                                                     "default 127.0.0.1]")
    parser.add_argument("--port", type=int, default=None, help="port [$GRADIO_SERVER_PORT, default 7860]")
    parser.add_argument("--share", action="store_true", help="create a temporary public gradio.live link")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.info("%s; device %s, precision %s", torch_report(), SERVICE.device, SERVICE.precision)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options())

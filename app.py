"""MRAD Gradio app: compare MRAD-TF / FT / CLIP side by side on your images, explore with live sliders.

A thin front end: the page is built by mrad_core.ui.create_app (one module per tab), the model is held by
mrad_core.service.Service, and this is the one place the settings are read from the environment
(mrad_core/settings.py). `demo` stays at module level for Hugging Face Spaces (on a ZeroGPU Space the model is
loaded before it is served). `python app.py [--host H] [--port P] [--share]`. API endpoints: /predict,
/predict_batch, /build_bank, /evaluate, /status.
"""
from __future__ import annotations

import argparse
import logging

from mrad_core.runtime import torch_report
from mrad_core.settings import Settings
from mrad_core.ui import create_app, launch_kwargs

log = logging.getLogger("mrad.app")

demo = create_app(Settings.from_env())


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
    service = demo.mrad.service
    log.info("%s; %s (%s)", torch_report(), service.runtime.describe(), service.runtime.why)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options())

"""The app factory: Settings in, the whole Gradio app out. Importing this module does nothing else (no Service, no
environment, no model); repository-root app.py calls it once for Hugging Face Spaces.

    demo = create_app(Settings.from_env())        # what app.py does
    demo = create_app(settings, service)          # tests: around a Service they built on `settings`
"""
from __future__ import annotations

import gradio as gr

from ..service import Service
from ..settings import Settings
from .page import build_demo


def create_app(settings: Settings, service: Service | None = None) -> gr.Blocks:
    """The page around a Service on `settings` (the one given, else a new one). On a ZeroGPU Space the model is
    loaded first, in this process: every GPU worker forks from it and must find the model in memory."""
    if service is None:
        service = Service(settings)
    elif service.settings is not settings:
        raise ValueError("create_app: the service was built on other settings than those given")
    if settings.zero_gpu:
        service.preload()
    return build_demo(service)

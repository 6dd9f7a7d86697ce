"""The Gradio page (app.py serves it): one module per tab, the shared page, its words, and serving options."""
from .page import Page, build_demo
from .server import launch_kwargs

__all__ = ["Page", "build_demo", "launch_kwargs"]

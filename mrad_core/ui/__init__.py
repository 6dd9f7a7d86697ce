"""The Gradio page (app.py serves it): one module per tab, the shared page, its words, typed session state, the GPU
calls, serving options, and the app factory `create_app(settings)`.

Importing the package loads nothing but itself: each name below is imported when first used (so that importing one
module, e.g. `mrad_core.ui.sessions`, does not build the page's modules)."""
from __future__ import annotations

import importlib

_EXPORTS = {"create_app": ".app", "Page": ".page", "build_demo": ".page", "launch_kwargs": ".server"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)

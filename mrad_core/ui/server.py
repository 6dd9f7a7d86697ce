"""Serving the page: launch options and the API's defaults for raw HTTP calls."""
from __future__ import annotations

import json

import gradio as gr

from .detect import NARROW_CSS
from .evaluate_tab import FIGURES_CSS

def api_defaults_middleware(defaults: dict):
    """ASGI middleware: a POST to /gradio_api/call/<name> with fewer `data` items than the endpoint takes gets the
    endpoint's defaults appended (so `curl -d '{"data": [file]}'` works as documented)."""
    class PadInputs:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            name = scope.get("path", "").rsplit("/call/", 1)[-1] if scope["type"] == "http" else ""
            if scope.get("method") != "POST" or "/call/" not in scope.get("path", "") or name not in defaults:
                return await self.app(scope, receive, send)
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            try:
                payload = json.loads(body or b"{}")
                data = payload.get("data", [])
                if isinstance(data, list) and len(data) < len(defaults[name]) + 1:
                    payload["data"] = data + defaults[name][len(data) - 1:] if data else data
                    body = json.dumps(payload).encode()
            except (ValueError, AttributeError):
                pass  # gradio answers malformed requests itself
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            scope = {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await self.app(scope, replay, send)

    return PadInputs


def launch_kwargs(settings, api_defaults: dict) -> dict:
    """What `demo.launch` needs beyond host/port (the tests launch the app the same way). api_defaults: endpoint
    name -> the defaults of its inputs after the first."""
    from starlette.middleware import Middleware

    return {"max_file_size": settings.max_file_size, "theme": gr.themes.Soft(),
            "app_kwargs": {"middleware": [Middleware(api_defaults_middleware(api_defaults))]},
            "css": ".stale {opacity: 0.45}\n" + NARROW_CSS + FIGURES_CSS}

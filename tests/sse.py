"""Reading a Gradio event stream (`GET /gradio_api/call/<api>/<event id>`) as a raw HTTP client sees it."""
from __future__ import annotations

import json


def events(text: str) -> list:
    """[(event name, data text)] of a server-sent event stream, in order (heartbeats included)."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[len("event:"):].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:"):].strip())
        if name is not None or data:
            out.append((name, "\n".join(data)))
    return out


def complete_data(text: str):
    """The decoded data of the stream's `complete` event (never the first `data:` line: on a slow machine that
    is a heartbeat, `data: null`). AssertionError naming the events seen when there is none."""
    found = [data for name, data in events(text) if name == "complete"]
    assert found, f"no 'complete' event in the stream: {[name for name, _ in events(text)]}\n{text[:2000]}"
    return json.loads(found[-1])

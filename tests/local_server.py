"""The part every stand-in server shares (tests/hub_server.py, tests/drive_server.py): a threaded HTTP/1.1 server on
127.0.0.1 and a free port, silent, started and stopped as a context manager. A subclass answers each request in
`_serve(handler, body)` (body=False for HEAD, served only when the class sets `head = True`)."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer:
    head = False  # whether HEAD requests are answered (else the server's 501)

    def __init__(self):
        self.requests: list = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                owner._serve(self, body=True)

            if owner.head:
                def do_HEAD(self):
                    owner._serve(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _serve(self, handler, body: bool):
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

"""A stand-in for Google Drive's file download on 127.0.0.1 (tests have no internet).

`GET /{id}` answers what `files[id]` says: bytes (the file, as application/octet-stream with Content-Length), or
a fault: ("quota", _) Drive's quota HTML page (("quota429", _): the same with HTTP 429); ("virus", data) Drive's "can't scan this file for viruses" page
whose download form (action /download, hidden id/export/confirm/uuid inputs, as drive.usercontent.google.com
sends it) leads to `data`; ("truncated", data) announces len(data) bytes, sends half and hangs up;
("slow", data) sends `data` in 8 pieces, 0.15 s apart. Use with ArtefactOptions(drive_url=f"{server.url}/{{id}}")
(or MRAD_DRIVE_URL for the CLI).
"""
from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

from local_server import LocalServer

QUOTA_PAGE = b"""<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>
<p>Sorry, you can't view or download this file at this time.</p><p>Too many users have viewed or downloaded this
file recently. Please try accessing the file again later.</p></body></html>"""

VIRUS_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p><form id="download-form" action="/download" method="get">
<input type="submit" value="Download anyway"/><input type="hidden" name="id" value="{id}">
<input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t">
<input type="hidden" name="uuid" value="0b1d-uuid"></form></body></html>"""


class StandInDrive(LocalServer):
    def __init__(self, files: dict):
        super().__init__()  # self.requests: paths with query
        self.files = dict(files)

    def hits(self, file_id: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if file_id in r)

    def _send(self, h, status, body: bytes, ctype, length=None):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()

    def _serve(self, h, body: bool = True):
        parts = urlsplit(h.path)
        with self._lock:
            self.requests.append(h.path)
        if parts.path == "/download":  # the virus-scan form's target
            file_id = parse_qs(parts.query).get("id", [""])[0]
            entry = self.files.get(file_id)
            ok = isinstance(entry, tuple) and entry[0] == "virus" and parse_qs(parts.query).get("confirm")
            entry = entry[1] if ok else None
        else:
            file_id = parts.path.lstrip("/")
            entry = self.files.get(file_id)
        if entry is None:
            body = b"<html><body>Not Found</body></html>"
            self._send(h, 404, body, "text/html")
            h.wfile.write(body)
            return
        kind, data = entry if isinstance(entry, tuple) else ("file", entry)
        if kind in ("quota", "quota429"):
            self._send(h, 429 if kind == "quota429" else 200, QUOTA_PAGE, "text/html; charset=utf-8")
            h.wfile.write(QUOTA_PAGE)
        elif kind == "virus":
            page = VIRUS_PAGE.format(id=file_id).encode()
            self._send(h, 200, page, "text/html; charset=utf-8")
            h.wfile.write(page)
        elif kind == "truncated":
            self._send(h, 200, data, "application/octet-stream")
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
        elif kind == "slow":
            self._send(h, 200, data, "application/octet-stream")
            step = max(1, len(data) // 8 + 1)
            for i in range(0, len(data), step):
                h.wfile.write(data[i:i + step])
                h.wfile.flush()
                time.sleep(0.15)
        else:
            self._send(h, 200, data, "application/octet-stream")
            h.wfile.write(data)

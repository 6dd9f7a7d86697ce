"""A stand-in Hugging Face Hub on 127.0.0.1 for tests without internet.

Serves `/{org}/{name}/resolve/{revision}/{filename}` (HEAD and GET, with Range) with the headers that
huggingface_hub's `get_hf_file_metadata` / `http_get` read (huggingface_hub/file_download.py):
  X-Repo-Commit (40-hex commit), ETag and X-Linked-Etag (the file's sha256, as for LFS files), X-Linked-Size,
  Content-Length, Accept-Ranges; errors as the Hub sends them (utils/_http.py `hf_raise_for_status`):
  404 + X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound, 401 + GatedRepo, a bare 403.
Faults per file: "corrupt" (a flipped byte under the good file's headers), "short" (the GET body and its
Content-Length are half the announced X-Linked-Size), "drop-once" (the first GET closes the connection halfway;
the client's Range resume then succeeds), "drop" (every GET closes the connection before any byte).

    with StandInHub() as hub:
        hub.add_repo("org/name", {"file.bin": b"..."})
        os.environ["HF_ENDPOINT"] = hub.url  # before huggingface_hub is imported (e.g. in a subprocess)
"""
from __future__ import annotations

import hashlib
import re
from urllib.parse import unquote, urlsplit

from local_server import LocalServer

RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class Repo:
    def __init__(self, files: dict, revision="main", access="public", faults=None):
        self.files = dict(files)
        self.revision = revision
        self.commit = hashlib.sha1(repr(sorted(self.files)).encode() + revision.encode()).hexdigest()
        self.access = access  # public | gated | forbidden
        self.faults = dict(faults or {})


class StandInHub(LocalServer):
    head = True

    def __init__(self):
        super().__init__()  # self.requests: (method, path, Range header)
        self.repos: dict[str, Repo] = {}
        self._dropped = set()

    def add_repo(self, repo_id: str, files: dict, **kw) -> Repo:
        self.repos[repo_id] = Repo(files, **kw)
        return self.repos[repo_id]

    def hits(self, method=None, contains=""):
        with self._lock:
            return [r for r in self.requests if (method is None or r[0] == method) and contains in r[1]]

    # ------------------------------------------------------------ responses
    def _error(self, h, status, code=None, message="", commit=None):
        body = (f'{{"error": "{message}"}}').encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command == "GET":
            h.wfile.write(body)

    def _serve(self, h, body: bool):
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append((h.command, path, h.headers.get("Range")))
        m = RESOLVE.match(path)
        repo = self.repos.get(m["repo"]) if m else None
        if repo is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        if repo.access == "gated":
            return self._error(h, 401, "GatedRepo", f"Access to model {m['repo']} is restricted. You must have "
                                                   f"access to it and be authenticated to access it. Please log in.")
        if repo.access == "forbidden":
            return self._error(h, 403, None, "Forbidden: your token cannot read this repository")
        if m["rev"] not in (repo.revision, repo.commit):
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
        if m["file"] not in repo.files:
            return self._error(h, 404, "EntryNotFound", "Entry not found", commit=repo.commit)
        self._send_file(h, repo, m["file"], body)

    def _send_file(self, h, repo, name, body):
        data = repo.files[name]
        fault = repo.faults.get(name)
        sha = hashlib.sha256(data).hexdigest()
        if fault == "corrupt":
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        served = data[: len(data) // 2] if fault == "short" else data
        start = 0
        rng = h.headers.get("Range")
        if rng and body:
            start = int(re.match(r"bytes=(\d+)-", rng)[1])
        part = served[start:]
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", repo.commit)
        h.send_header("ETag", f'"{sha}"')
        h.send_header("X-Linked-Etag", f'"{sha}"')
        h.send_header("X-Linked-Size", str(len(repo.files[name])))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(part)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(served) - 1}/{len(served)}")
        h.end_headers()
        if not body:
            return
        drop = fault == "drop" or (fault == "drop-once" and (repo, name) not in self._dropped)
        if drop:  # announce the full length, send part of it (or nothing), hang up
            with self._lock:
                self._dropped.add((repo, name))
            h.wfile.write(part[: len(part) // 2] if fault == "drop-once" else b"")
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(part)

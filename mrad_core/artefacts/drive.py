"""The authors' files from Google Drive, file by file (the resolver's last step, and `mrad fetch-official`).

One file: GET the URL from options.drive_url (MRAD_DRIVE_URL: a template with `{id}`; default Google's
usercontent download URL; `off` disables Drive) with httpx, streaming into a temporary file next to its
destination while hashing it; follow Drive's "cannot scan for viruses" confirmation form; refuse an HTML page (quota, sign-in, errors) with
one message naming the file, its Drive link and where to put a manual download; check the sha256 against the
registry's table (plus MRAD_ACCEPT_DIGESTS); move it atomically to <cache_dir>/drive/<authors' name>; then
convert it once to our safetensors layout beside it (mrad_<kind>_<source>.safetensors). Later runs load the
converted file: no pickle, no hashing. On any failure nothing is left in the cache. A lock per file makes
concurrent requests (threads) wait for one download.

Why httpx and not gdown: a plain streaming GET works the same for Google's URL and for any MRAD_DRIVE_URL
(a proxy, a mirror, the tests' stand-in on 127.0.0.1); gdown rewrites and scrapes Drive URLs, keeps partial
files of its own and reports failures as free text. httpx2 is the client huggingface_hub uses here, so network
failures are classified the same way for the Hub and for Drive (hub.unreachable).
"""
from __future__ import annotations

import hashlib
import html
import os
import re
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

from .errors import FLAGS, HubError
from .options import ArtefactOptions
from .registry import Artefact, OfficialFile

DEFAULT_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
_LOCKS: dict = {}
_LOCKS_GUARD = threading.Lock()


class DriveError(HubError):
    """A file that could not be had from Google Drive; the message names it, its Drive link and the fix."""


def url_template(options: ArtefactOptions | None = None) -> str | None:
    """options.drive_url (MRAD_DRIVE_URL, must contain {id}), the default, or None when it is `off` or when
    offline (HF_HUB_OFFLINE=1)."""
    options = options or ArtefactOptions()
    template = (options.drive_url or "").strip() or DEFAULT_URL
    if template.lower() in ("off", "0", "none", "false") or offline(options):
        return None
    if "{id}" not in template:
        raise HubError(f"MRAD_DRIVE_URL={template!r} has no {{id}} placeholder: use e.g. "
                       f"http://host:port/{{id}}, or unset it for Google Drive ({DEFAULT_URL})")
    return template


def offline(options: ArtefactOptions | None = None) -> bool:
    """The settings say offline (HF_HUB_OFFLINE=1 at start), or huggingface_hub read it so at import."""
    from huggingface_hub import constants

    return bool((options or ArtefactOptions()).hub_offline) or constants.is_offline_mode()


def cache_dir(options: ArtefactOptions | None = None) -> Path:
    """<cache_dir>/drive (default ~/.cache/mrad/drive): verified originals and their converted files."""
    return (options or ArtefactOptions()).drive_dir


def accepted(official: OfficialFile, options: ArtefactOptions | None = None) -> list:
    """The registry's digest, then any in options.accept_digests (MRAD_ACCEPT_DIGESTS) that is a sha256."""
    extra = [d.lower() for d in (options or ArtefactOptions()).accept_digests]
    return [official.sha256] + [d for d in extra if re.fullmatch(r"[0-9a-f]{64}", d) and d != official.sha256]


def converted(art: Artefact, options: ArtefactOptions | None = None) -> Path | None:
    """Our safetensors file converted from the authors' download, if it is in the cache."""
    path = cache_dir(options) / art.filename
    return path if art.official and path.is_file() else None


def manual_fix(art: Artefact, roots=None) -> str:
    """Where a person puts a manual download (roots: the project directories, ArtefactOptions.project_dirs())."""
    off = art.official
    where = Path((roots or ArtefactOptions().project_dirs())[0]) / art.local_dir / off.name
    return (f"download it by hand from {off.link} and save it as {where} (or give its path with "
            f"{FLAGS[art.kind]}); it is then used without downloading. Or set MRAD_HUB_REPO (and "
            f"MRAD_HUB_REVISION) to a Hub mirror that has {art.filename}")


def failure(art: Artefact, what: str, why: str, roots=None, first_fix: str = "") -> DriveError:
    """'<label> is not available: <what>. To fix: <first_fix>, or <the manual download>.'"""
    fix = f"{first_fix}, or {manual_fix(art, roots)}" if first_fix else manual_fix(art, roots)
    return DriveError(f"{art.label} is not available: {what}. To fix: {fix}.", why)


def _lock(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path), threading.Lock())


# ---------------------------------------------------------------- one HTTP download
_FORM = re.compile(r"<form[^>]*\bid=\"download-form\"[^>]*>(.*?)</form>", re.S | re.I)
_INPUT = re.compile(r"<input[^>]*type=\"hidden\"[^>]*>", re.I)
_ATTR = re.compile(r"(\w+)=\"([^\"]*)\"")
_LEGACY = re.compile(r"href=\"(/uc\?export=download[^\"]*confirm=[^\"]+)\"", re.I)


def confirm_url(page: str, url: str) -> str | None:
    """The URL behind Drive's "Google Drive can't scan this file for viruses" page (its download form), or None."""
    form = _FORM.search(page)
    if form:
        attrs = dict(_ATTR.findall(page[form.start():form.start() + page[form.start():].index(">") + 1]))
        params = {}
        for tag in _INPUT.findall(form[1]):
            a = dict(_ATTR.findall(tag))
            if "name" in a:
                params[a["name"]] = html.unescape(a.get("value", ""))
        action = html.unescape(attrs.get("action", url))
        return urljoin(url, action) + ("&" if "?" in action else "?") + urlencode(params)
    legacy = _LEGACY.search(page)
    return urljoin(url, html.unescape(legacy[1])) if legacy else None


def _page_reason(page: str) -> str:
    text = re.sub(r"<[^>]+>", " ", page)
    text = " ".join(html.unescape(text).split())
    if re.search(r"quota|too many users", text, re.I):
        return "its quota page (too many downloads of this file recently)"
    if re.search(r"sign in|accounts\.google", text, re.I):
        return "a sign-in page (the file is not shared publicly)"
    return f"an HTML page ({text[:120]!r})" if text else "an empty HTML page"


def _page(response, first: bytes, rest) -> str | None:
    """The text of an HTML answer (Drive's confirmation, quota or sign-in pages), None for a file."""
    if "text/html" in response.headers.get("content-type", "") or \
            first.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return (first + b"".join(rest)).decode("utf-8", "replace")
    return None


def _stream(client, url, art, tmp, roots):
    """GET url into the open file `tmp`; returns sha256. Follows one confirmation page. Raises DriveError."""
    from .. import progress

    off = art.official
    for _ in range(2):
        with client.stream("GET", url) as r:
            if r.status_code != 200:  # Drive sends its quota and sign-in pages with 403/429 too
                chunks = r.iter_bytes()
                page = _page(r, next(chunks, b""), chunks)
                said = f": {_page_reason(page)}" if page and "quota" in _page_reason(page) else ""
                raise failure(art, f"Google Drive answered HTTP {r.status_code}{said} for {off.name} (file id "
                                   f"{off.drive_id}, {url})", f"HTTP {r.status_code} from {urlsplit(url).netloc}",
                              roots, "run again later")
            total = int(r.headers["content-length"]) if r.headers.get("content-length", "").isdigit() else None
            chunks = r.iter_bytes()  # as the bytes arrive (a chunk size would buffer: no progress to show)
            with progress.track(art.label, off.name, url, total) as dl:
                first = next(chunks, b"")
                page = _page(r, first, chunks)
                if page is None:
                    digest, done = hashlib.sha256(), 0
                    for chunk in _chain_first(first, chunks):
                        tmp.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        dl.advance(len(chunk))
            if page is not None:
                nxt = confirm_url(page, url)
                if nxt and nxt != url:
                    url = nxt
                    continue
                raise failure(art, f"Google Drive sent {_page_reason(page)} instead of {off.name} (file id "
                                   f"{off.drive_id})", "Drive sent an HTML page", roots)
            if total is not None and done != total:
                raise failure(art, f"the download of {off.name} from {url} stopped after {done} of {total} bytes; "
                                   f"nothing was kept", "the download was incomplete", roots, "run again")
            return digest.hexdigest()
    raise failure(art, f"Google Drive kept asking for confirmation for {off.name}", "Drive sent an HTML page",
                  roots)


def _chain_first(first, rest):
    yield first
    yield from rest


def _download(art: Artefact, dest: Path, roots, options: ArtefactOptions) -> str:
    """Download the authors' file to `dest` (atomically, verified). Returns its sha256. Raises DriveError."""
    import httpx2

    off, template = art.official, url_template(options)
    url = template.replace("{id}", off.drive_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{off.name}.", suffix=".part", delete=False)
    try:
        with tmp, httpx2.Client(follow_redirects=True, timeout=httpx2.Timeout(60.0, connect=15.0)) as client:
            try:
                digest = _stream(client, url, art, tmp, roots)
            except httpx2.TransportError as e:
                where = urlsplit(url).netloc
                what = "was interrupted" if isinstance(e, (httpx2.ReadError, httpx2.RemoteProtocolError,
                                                           httpx2.ReadTimeout)) else "could not start"
                raise failure(art, f"the download of {off.name} from {where} {what} ({type(e).__name__}: {e}); "
                                   f"nothing was kept", f"Google Drive ({where}) could not be reached: {e}", roots,
                              "check the network and run again") from e
        ok = accepted(off, options)
        if digest not in ok:
            also = f" (or one of MRAD_ACCEPT_DIGESTS: {', '.join(ok[1:])})" if ok[1:] else ""
            raise failure(art, f"{off.name} downloaded from {url} has sha256 {digest} but {off.sha256} is expected"
                               f"{also} (the registry's digest, reported by an independent evaluation harness); "
                               f"nothing was kept", "sha256 mismatch", roots, f"run again; if the authors "
                               f"re-published the file and you trust it, accept it with MRAD_ACCEPT_DIGESTS={digest}")
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, dest)
        return digest
    finally:
        Path(tmp.name).unlink(missing_ok=True)


# ---------------------------------------------------------------- the cache
def fetch_original(art: Artefact, roots=None, options: ArtefactOptions | None = None) -> Path:
    """The authors' file in the cache, downloaded (once, under a lock) and verified when not there yet."""
    options = options or ArtefactOptions()
    dest = cache_dir(options) / art.official.name
    with _lock(dest):
        if not dest.is_file():
            try:
                _download(art, dest, roots, options)
            except OSError as e:  # the cache cannot be written (read-only, full, not a directory)
                raise failure(art, f"{art.official.name} cannot be saved in {dest.parent} ({type(e).__name__}: {e}); "
                                   f"nothing was kept", "the cache cannot be written", roots,
                              "free space there or set MRAD_CACHE_DIR to a writable directory") from e
    return dest


def ensure(art: Artefact, roots=None, options: ArtefactOptions | None = None) -> Path:
    """Our converted safetensors file for `art`, downloading and converting the authors' file once."""
    from ..errors import MRADError
    from .convert import convert

    out = cache_dir(options) / art.filename
    with _lock(out):
        if out.is_file():
            return out
        original = fetch_original(art, roots, options)
        try:
            convert(original, out.parent, art.kind, art.source, force=True)
        except (MRADError, OSError, RuntimeError) as e:
            original.unlink(missing_ok=True)
            if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
                raise failure(art, f"{out.name} cannot be written in {out.parent} ({type(e).__name__}: {e})",
                              "the cache cannot be written", roots,
                              "free space there or set MRAD_CACHE_DIR to a writable directory") from e
            raise failure(art, f"{original.name} from Google Drive has an accepted digest but could not be "
                               f"converted ({e}); it was removed from {original.parent}", "conversion failed",
                          roots) from e
    return out

"""Artefact names -> verified local files.

Order for heads and banks (an explicit path or MRAD_* variable is handled by resolve.py before this):
  1. the project: <root>/checkpoints/ (heads) or <root>/cache/ (banks), our safetensors name or the official one;
  2. the Hugging Face cache (HF_HOME / HF_HUB_CACHE), for the artefact's repo and revision;
  3. the authors' files already fetched from Drive and converted, in <cache_dir>/drive (drive.py);
  4. `hf_hub_download` from the Hub mirror (the artefact's repo_id, else options.hub_repo = MRAD_HUB_REPO) at its
     revision, only when a mirror is configured (registry.Artefact.mirror), with huggingface_hub's progress bar;
  5. the authors' file from Google Drive by file id (drive.py), verified against the registry's sha256.
Every file is checked (size, sha256) on first use; the digest is cached by (path, size, mtime) in
<cache_dir>/verified.json (digest.py). Failures become one HubError that says what was looked for, where, why it
failed and what to do. The backbone goes through open_clip's own Hub mechanism. Downloads are announced in
progress.py (the app shows them). Configuration comes in an ArtefactOptions (options.py), never from the
environment; None = its documented defaults.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import first_line
from .digest import file_sha256, lfs_sha256, verify  # noqa: F401  (lfs_sha256: re-exported)
from .errors import FLAGS, HubError
from .options import ArtefactOptions
from .registry import BACKBONE, BACKBONE_SIZE, Artefact


@dataclass(frozen=True)
class Resolved:
    """Where an artefact was found: origin is explicit | environment | project | hf-cache | drive-cache | hub |
    drive."""

    artefact: Artefact
    path: str
    origin: str
    check: str  # what verification established, e.g. "sha256 verified"


def configured(art: Artefact, options: ArtefactOptions | None) -> Artefact:
    """The artefact with the settings' Hub mirror and revision where it names none (an explicit repo wins)."""
    options = options or ArtefactOptions()
    return art.filled(options.hub_repo, options.hub_revision)


# ---------------------------------------------------------------- failures
def _chain(e):
    seen = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def reason(exc: BaseException, repo: str, revision: str, filename: str) -> str:
    """One sentence for what went wrong talking to the Hub (huggingface_hub's exceptions, connection errors)."""
    from huggingface_hub import constants
    from huggingface_hub import errors as E

    chain = _chain(exc)
    first = lambda *types: next((x for x in chain if isinstance(x, types)), None)  # noqa: E731
    http = first(E.HfHubHTTPError)
    status = getattr(getattr(http, "response", None), "status_code", None)
    url = f"{constants.ENDPOINT}/{repo}"
    if first(E.GatedRepoError):
        return (f"the repo {repo} is gated: accept its conditions at {url} and log in (`hf auth login` or "
                f"HF_TOKEN)")
    if first(E.RevisionNotFoundError):
        return f"the repo {repo} has no revision {revision!r} (check MRAD_HUB_REVISION / --hub-revision)"
    if first(E.RemoteEntryNotFoundError):
        return f"the repo {repo} (revision {revision}) has no file {filename}"
    if first(E.RepositoryNotFoundError) or status == 401:
        return (f"the repo {repo} does not exist, or it is private and you are not logged in (check "
                f"MRAD_HUB_REPO / --hub-repo, or log in with `hf auth login` or HF_TOKEN)")
    if status == 403:
        return f"access to {repo} was refused (HTTP 403): log in with an account that may read it"
    if first(E.OfflineModeIsEnabled) or constants.is_offline_mode():
        return "HF_HUB_OFFLINE=1 is set and the file is not in the Hugging Face cache"
    if status is not None:
        return f"the Hub answered HTTP {status} for {filename}"
    consistency = next((x for x in chain if "Consistency check failed" in str(x)), None)
    if consistency is not None:
        return f"the download was incomplete ({str(consistency).splitlines()[0]}); run again to retry"
    import httpx2
    transport = first(httpx2.TransportError, ConnectionError, TimeoutError)
    if transport is not None and first(httpx2.ReadError, httpx2.RemoteProtocolError, httpx2.ReadTimeout):
        return f"the download was interrupted ({transport}); run again to retry"
    if transport is not None or first(E.LocalEntryNotFoundError):
        return (f"the Hub at {constants.ENDPOINT} could not be reached ({transport or 'no connection'}); check "
                f"the network, or set HF_HUB_OFFLINE=1 and provide the file locally")
    return first_line(exc)


def not_found(art: Artefact, why: str, roots=None, options: ArtefactOptions | None = None) -> HubError:
    """The one message for an artefact that cannot be had: what, where it was looked for, why, what to do."""
    from huggingface_hub import constants

    options = options or ArtefactOptions()

    if art.kind == "backbone":
        return HubError(f"{art.label} is not available: looked in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                        f"and on the Hub for {art.repo}/{art.filename} (open_clip's ViT-L-14-336-quickgelu, "
                        f"'openai'): {why}. To fix: connect once to let open_clip download it (then HF_HUB_OFFLINE=1 "
                        f"works), or give a local state dict with {FLAGS['backbone']}.", why)
    dirs = [str(Path(r) / art.local_dir) for r in (roots or options.project_dirs())] if art.local_dir else []
    names = " or ".join(art.local_names) or art.filename
    looked = f"looked for {names} in {', '.join(dirs)}, then for " if dirs else "looked for "
    link = f" from {art.official.link}" if art.official else ""
    place = f"place {art.local_names[-1] if art.local_names else art.filename} (the authors' file{link}) or " \
            f"{art.filename} in {dirs[0]}/; or " if dirs else ""
    if art.mirror:
        where = (f"{art.repo}@{art.rev}/{art.filename} in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                 f"on the Hub")
    else:  # no mirror: the authors' file from Drive, converted in MRAD_CACHE_DIR
        where = f"{art.filename} in {options.drive_dir} (no Hub mirror is set)"
    return HubError(
        f"{art.label} is not available: {looked}{where}: {why}. To fix: {place}run `mrad fetch-official` (downloads "
        f"the authors' files from Google Drive into checkpoints/ and cache/); or set MRAD_HUB_REPO (and "
        f"MRAD_HUB_REVISION) to a Hub repo that has {art.filename}; or give a path with {FLAGS[art.kind]}.", why)


# ---------------------------------------------------------------- resolution
def find_in_project(art: Artefact, roots=None, options: ArtefactOptions | None = None):
    for root in roots or (options or ArtefactOptions()).project_dirs():
        for name in art.local_names:
            path = Path(root) / art.local_dir / name
            if art.local_dir and path.is_file():
                return path
    return None


def find_in_cache(art: Artefact, filename: str | None = None):
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(art.repo, filename or art.filename, revision=art.rev)
    return found if isinstance(found, str) else None


def _probe(repo, filename, revision):
    """Fail fast when the Hub cannot be reached: one HEAD request without huggingface_hub's retry loop (which
    waits ~25 s per file when there is no network). HTTP answers are left to hf_hub_download to report.
    Returns the file's size when the Hub said it, else None."""
    import httpx2
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        return get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), retry_on_errors=False).size
    except (httpx2.TransportError, OfflineModeIsEnabled):
        raise
    except HfHubHTTPError as e:
        if e.response.status_code >= 500:  # the Hub is down: no point in retrying for half a minute
            raise
    except Exception:  # e.g. missing metadata headers: hf_hub_download says it its own way
        pass
    return None


def partial_bytes(repo: str):
    """A probe for progress.track: bytes in huggingface_hub's partial downloads (blobs/*.incomplete) of a repo."""
    from huggingface_hub import constants

    blobs = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "blobs"
    return lambda: sum(p.stat().st_size for p in blobs.glob("*.incomplete")) if blobs.is_dir() else 0


def download(art: Artefact, roots=None, options: ArtefactOptions | None = None) -> str:
    """hf_hub_download into the HF cache (huggingface_hub's progress bar); HubError with the reason on failure."""
    from huggingface_hub import constants, hf_hub_download

    from .. import progress

    try:
        size = _probe(art.repo, art.filename, art.rev)
        with progress.track(art.label, art.filename, f"{constants.ENDPOINT}/{art.repo}", size,
                            done=partial_bytes(art.repo), bar=False):
            return hf_hub_download(art.repo, art.filename, revision=art.rev)
    except Exception as e:  # huggingface_hub errors, OSError, httpx2 transport errors
        raise not_found(art, reason(e, art.repo, art.rev, art.filename), roots, options) from e


def _fix(art: Artefact, path) -> str:
    real = os.path.realpath(path)
    if real != str(path):
        return (f"delete {path} and {real} (or the repo's whole cache with `hf cache rm model/{art.repo}`) and run "
                f"again to download it afresh")
    return f"delete {path} and run again (it is then downloaded afresh), or put a good copy in its place"


NO_DOWNLOAD = "it is not downloaded yet (no download was attempted)"


def unreachable(exc: BaseException) -> str | None:
    """The reason, when `exc` says the Hub cannot be reached at all (offline, no network): then trying the
    next file is pointless."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    chain = _chain(exc)
    if any(isinstance(x, HfHubHTTPError) for x in chain):
        return None
    if constants.is_offline_mode() or any(isinstance(x, (OfflineModeIsEnabled, LocalEntryNotFoundError,
                                                         ConnectionError)) for x in chain):
        return getattr(exc, "why", None) or str(exc)
    import httpx2
    if any(isinstance(x, (httpx2.ConnectError, httpx2.ConnectTimeout)) for x in chain):
        return getattr(exc, "why", None) or str(exc)
    return None


def _authors_check(art: Artefact, path, options: ArtefactOptions) -> str:
    """An authors' file in the project: checked against the registry's table of their digests."""
    from . import drive

    if art.official is None:
        return "unverified (the authors' file; no published digest)"
    ok = drive.accepted(art.official, options)
    actual = file_sha256(path, options.cache_dir)
    if actual not in ok:
        raise HubError(f"{art.label}: {path} is not the authors' {art.official.name}: its sha256 is {actual} but "
                       f"{art.official.sha256} is expected (the registry's table). To fix: delete it and run again "
                       f"(it is then downloaded from Google Drive), or accept this copy with "
                       f"MRAD_ACCEPT_DIGESTS={actual}.")
    return "sha256 verified (the authors' digest)" if actual == art.official.sha256 else \
        "sha256 accepted (MRAD_ACCEPT_DIGESTS)"


def resolve(art: Artefact, roots=None, allow_download: bool = True, no_download_reason: str = NO_DOWNLOAD, *,
            options: ArtefactOptions | None = None) -> Resolved:
    """Project dir -> HF cache -> converted Drive files -> Hub mirror -> Google Drive, verified. `options`: the
    settings (None = ArtefactOptions(), the defaults); they fill the artefact's mirror (`configured`).
    Raises HubError (not found / cannot download / corrupt)."""
    from . import drive

    options = options or ArtefactOptions()
    art, roots = configured(art, options), roots or options.project_dirs()
    cache = options.cache_dir
    local = find_in_project(art, roots, options)
    if local is not None:
        ours = local.name == art.filename  # registry digests describe our file, not the authors' original
        if not ours:
            return Resolved(art, str(local), "project", _authors_check(art, local, options))
        return Resolved(art, str(local), "project", verify(local, art.label, art.sha256, art.size, _fix(art, local),
                                                           cache))
    cached = find_in_cache(art)
    if cached is not None:
        return Resolved(art, cached, "hf-cache", verify(cached, art.label, art.sha256, art.size, _fix(art, cached),
                                                        cache))
    fetched = drive.converted(art, options)
    if fetched is not None:
        return Resolved(art, str(fetched), "drive-cache", f"converted from the authors' {art.official.name} "
                                                           f"(sha256 verified when downloaded)")
    if not allow_download:
        raise not_found(art, no_download_reason, roots, options)
    offline = drive.offline(options)
    use_drive = art.official is not None and drive.url_template(options) is not None
    hub_error = None
    if art.mirror and offline:  # the settings say offline: no request, whatever huggingface_hub read at import
        raise not_found(art, "HF_HUB_OFFLINE=1 is set and the file is not in the Hugging Face cache", roots, options)
    if art.mirror:
        try:
            path = download(art, roots, options)
        except HubError as e:
            if not use_drive:
                raise
            hub_error = e
        else:
            return Resolved(art, path, "hub", verify(path, art.label, art.sha256, art.size, _fix(art, path), cache))
    if not use_drive:
        why = "HF_HUB_OFFLINE=1 is set (no download from a Hub mirror or Google Drive)" if offline else \
            "no Hub mirror is configured (MRAD_HUB_REPO)" + (" and Google Drive downloads are off (MRAD_DRIVE_URL=off)"
                                                             if art.official else "")
        raise not_found(art, why, roots, options)
    try:
        path = drive.ensure(art, roots, options)
    except drive.DriveError as e:
        if hub_error is None:
            raise
        raise drive.DriveError(f"{e} (The Hub mirror was tried first: {hub_error.why or hub_error}.)", e.why) from e
    return Resolved(art, str(path), "drive", f"the authors' {art.official.name} from Google Drive, sha256 verified, "
                                             f"converted to safetensors")


def backbone_weights(model_name: str, pretrained: str = "openai", allow_download: bool = True,
                     cache_dir=None) -> str | None:
    """Local file of open_clip's pretrained weights for (model, tag), fetched through open_clip's Hub mechanism.
    None when open_clip has no Hub entry for them (a custom config): then open_clip decides. `cache_dir`: where
    the sha256 verdict is cached (Settings.cache_dir; None = ~/.cache/mrad)."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name, pretrained)
    hub_id = (cfg or {}).get("hf_hub", "")
    if not hub_id:
        return None
    repo, filename = os.path.split(hub_id)  # open_clip's convention: "org/name/" or "org/name/file"
    art = Artefact("backbone", "openai", filename or BACKBONE.filename, repo_id=repo, licence=BACKBONE.licence)
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:
        cached = find_in_cache(art, name)
        if cached:
            verify(cached, art.label, fix=_fix(art, cached), cache_dir=cache_dir)  # the Hub's LFS sha256, cached
            return cached
    if not allow_download:
        raise not_found(art, NO_DOWNLOAD)
    from huggingface_hub import constants

    from .. import progress
    try:
        sizes = {}
        for name in names:  # the file open_clip will take (the first that exists) and its size
            sizes[name] = _probe(repo, name, "main")
            if sizes[name]:
                break
        name = next((n for n, size in sizes.items() if size), names[-1])
        with progress.track("the CLIP backbone" + ("" if sizes.get(name) else f" ({BACKBONE_SIZE})"), name,
                            f"{constants.ENDPOINT}/{repo}", sizes.get(name), done=partial_bytes(repo), bar=False):
            path = download_pretrained(cfg)
    except Exception as e:  # open_clip wraps huggingface_hub's errors; the cause is kept in the chain
        raise not_found(art, reason(e, repo, "main", names[0])) from e
    verify(path, art.label, fix=_fix(art, path), cache_dir=cache_dir)
    return path

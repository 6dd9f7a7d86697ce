"""The one resolver: from "what the user configured" to a ready Detector, and a report of what is available and
what is missing.

Per artefact: explicit path > a path the environment gave (options.files: MRAD_BACKBONE, MRAD_HEADS, …) > the
project's checkpoints/ or cache/ > the Hugging Face cache > the authors' files already converted in
<cache_dir>/drive > a Hub mirror (only when one is set) > the authors' Google Drive, file by file (see hub.py,
drive.py). What the environment says arrives as an ArtefactOptions (`Settings.artefacts`), passed explicitly;
without one, the documented defaults (ArtefactOptions()) apply and no environment variable is read. The backbone
without a path comes through open_clip's Hub mechanism. Downloads in progress: progress.current_downloads().
Heads and banks that cannot be had are reported (Resolution.report(), Resolution.missing) instead of failing,
unless a variant that needs them is required; the backbone is always required.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import DEFAULT
from ..errors import MRADError
from .options import ArtefactOptions

ENV = {"backbone": "MRAD_BACKBONE", "heads": "MRAD_HEADS", "image_bank": "MRAD_IMAGE_BANK",
       "patch_bank": "MRAD_PATCH_BANK"}
NEEDS = {"tf": ("image_bank", "patch_bank"), "ft": ("image_bank", "patch_bank", "heads"),
         "clip": ("image_bank", "patch_bank", "heads")}


def resolve_paths(backbone=None, heads=None, image_bank=None, patch_bank=None, *, files=None) -> dict:
    """Explicit path > the environment's path (`files`: Settings.files / ArtefactOptions.files) > None (None = not
    configured: the resolver looks further)."""
    given = {"backbone": backbone, "heads": heads, "image_bank": image_bank, "patch_bank": patch_bank}
    files = files or {}
    return {k: (v or files.get(k) or None) for k, v in given.items()}


@dataclass(frozen=True)
class ArtefactStatus:
    """One artefact: where it came from (explicit | environment | project | hf-cache | drive-cache | hub | drive |
    open_clip | missing), what verification established, and for a missing one the error saying how to provide it."""

    kind: str
    label: str
    path: str | None
    origin: str
    check: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.origin != "missing"

    def line(self) -> str:
        if not self.ok:
            return f"missing: {self.error}"
        where = self.path or "open_clip's own pretrained weights"
        return f"ok: {self.label}: {where} ({self.origin}{'; ' + self.check if self.check else ''})"


@dataclass(frozen=True)
class Resolution:
    """Paths to load (kind -> path or None) and one status per artefact."""

    source: str
    paths: dict
    statuses: tuple = field(default_factory=tuple)

    @property
    def missing(self) -> list:
        return [s for s in self.statuses if not s.ok]

    @property
    def variants(self) -> tuple:
        """Variants these files allow (MRAD-CLIP also needs heads with the prompt parts, known only on load)."""
        from ..detector import availability
        banks = bool(self.paths.get("image_bank") and self.paths.get("patch_bank"))
        return tuple(v for v, why in availability(banks, "unknown" if self.paths.get("heads") else "none").items()
                     if why is None)

    def report(self) -> str:
        """One line per artefact, for the app and the CLI."""
        return "\n".join(s.line() for s in self.statuses)


def _label(kind, source):
    from .registry import BACKBONE, REGISTRY
    return BACKBONE.label if kind == "backbone" else REGISTRY[kind, source].label


def artefacts_for(source=None, repo_id=None, revision=None, options: ArtefactOptions | None = None) -> dict:
    """{kind: Artefact} of a training source: the explicit source / repo / revision, else the settings'
    (MRAD_SOURCE, MRAD_HUB_REPO, MRAD_HUB_REVISION in `options`), else the registry's defaults."""
    from . import hub, registry

    options = options or ArtefactOptions()
    arts = registry.artefacts(source or options.training_source, repo_id, revision)
    return {kind: hub.configured(art, options) for kind, art in arts.items()}


def resolve_artefacts(backbone=None, heads=None, image_bank=None, patch_bank=None, *, model=None, source=None,
                      repo_id=None, revision=None, download: bool = True, require=(), roots=None,
                      strict_backbone: bool = True, options: ArtefactOptions | None = None) -> Resolution:
    """Find every file (downloading when allowed). `require`: variants that must be possible; a missing file
    they need raises its HubError, as does a missing backbone unless strict_backbone=False. Missing optional
    files are only reported. `roots`: project directories (default options.project_dirs()). `options`: the
    settings (Settings.artefacts); None = ArtefactOptions(), the defaults. Raises MRADError."""
    from . import hub

    options = options or ArtefactOptions()
    arts = artefacts_for(source, repo_id, revision, options)
    source = next(iter(arts.values())).source
    bad = [v for v in require if v not in NEEDS]
    if bad:
        raise MRADError(f"unknown variant {bad[0]!r}; choose from {', '.join(NEEDS)}")
    needed = {k for v in require for k in NEEDS[v]}
    given = {"backbone": backbone, "heads": heads, "image_bank": image_bank, "patch_bank": patch_bank}
    paths, statuses = {}, []
    for kind, value in given.items():
        env = options.files.get(kind)
        if value or env:
            paths[kind] = str(value or env)
            statuses.append(ArtefactStatus(kind, _label(kind, source), paths[kind],
                                           "explicit" if value else "environment", "as given"))

    if "backbone" not in paths:
        label = _label("backbone", source)
        try:
            path = hub.backbone_weights(model or DEFAULT.model_name, DEFAULT.pretrained, allow_download=download,
                                        cache_dir=options.cache_dir)
        except hub.HubError as e:
            if strict_backbone:
                raise
            path, statuses = None, statuses + [ArtefactStatus("backbone", label, None, "missing", error=str(e))]
        else:
            statuses.append(ArtefactStatus("backbone", label, path, "open_clip", "its Hub file" if path else ""))
        paths["backbone"] = path

    offline_reason = None  # once the Hub is unreachable, do not wait for it again for every file
    for kind, art in arts.items():
        if kind in paths:
            continue
        try:
            found = hub.resolve(art, roots, allow_download=download and offline_reason is None,
                                no_download_reason=offline_reason or hub.NO_DOWNLOAD, options=options)
        except hub.HubError as e:
            if kind in needed:
                raise
            offline_reason = offline_reason or hub.unreachable(e)
            paths[kind] = None
            statuses.append(ArtefactStatus(kind, art.label, None, "missing", error=str(e)))
            continue
        paths[kind] = found.path
        statuses.append(ArtefactStatus(kind, art.label, found.path, found.origin, found.check))

    if bool(paths["image_bank"]) != bool(paths["patch_bank"]):  # a bank alone is of no use: report, do not load
        lone = "image_bank" if paths["image_bank"] else "patch_bank"
        paths[lone] = None
        statuses = [replace(s, path=None, origin="missing", error="not used: the other memory bank is missing")
                    if s.kind == lone else s for s in statuses]
    order = list(given)
    return Resolution(source, paths, tuple(sorted(statuses, key=lambda s: order.index(s.kind))))


def backbone_file(explicit=None, model=None, options: ArtefactOptions | None = None, allow_download: bool = True):
    """The backbone's weights file: an explicit path > the environment's (MRAD_BACKBONE in options.files) >
    open_clip's pretrained file for the model (the Hugging Face cache, downloaded when allowed). None when
    open_clip has no Hub entry for the model (a custom config: open_clip decides)."""
    from . import hub

    options = options or ArtefactOptions()
    given = explicit or options.files.get("backbone")
    if given:
        return str(given)
    return hub.backbone_weights(model or DEFAULT.model_name, DEFAULT.pretrained, allow_download=allow_download,
                                cache_dir=options.cache_dir)


def load_detector(backbone=None, heads=None, image_bank=None, patch_bank=None, model=None, device=None,
                  precision=None, batch_size=8, *, source=None, repo_id=None, revision=None,
                  download: bool = True, require=(), resolution: Resolution | None = None, engine=None,
                  runtime=None, options: ArtefactOptions | None = None, with_banks: bool = True, progress=None):
    """Build a Detector from paths, the environment's paths, the project, the HF cache or the Hub (in that order;
    `options`: the settings, None = the defaults). The Resolution used is kept as `detector.delivery` (its
    `.report()` and `.missing` say what is absent). `runtime`: the caller's decision (mrad_core.runtime.resolve
    for its entry point); None = the library's: runtime.resolve("library", device, engine, precision), i.e.
    PyTorch fp32 unless asked. with_banks=False: the backbone only (an encoder, for building banks and training).
    progress(text) hears about a one-time engine conversion. Raises MRADError subclasses with readable messages."""
    from .. import runtime as runtimes
    from ..backbone import Backbone
    from ..bank import MemoryBank
    from ..detector import Detector
    from ..heads import Heads
    from .digest import file_sha256

    options = options or ArtefactOptions()
    rt = runtime or runtimes.resolve("library", device, engine, precision)
    if not with_banks:
        path = backbone_file(backbone, model, options, allow_download=download)
        resolution = Resolution("", {"backbone": path, "heads": None, "image_bank": None, "patch_bank": None})
    elif resolution is None:
        resolution = resolve_artefacts(backbone, heads, image_bank, patch_bank, model=model, source=source,
                                       repo_id=repo_id, revision=revision, download=download, require=require,
                                       options=options)
    paths = resolution.paths
    config = replace(DEFAULT, model_name=model or DEFAULT.model_name)
    net = Backbone.load(paths["backbone"], config)
    weights = paths["backbone"]
    digest = file_sha256(weights, options.cache_dir) if weights and Path(weights).is_file() and \
        rt.engine != "torch" else None
    encoder = runtimes.make_encoder(rt, net, cache_dir=options.cache_dir, weights_digest=digest, progress=progress)
    detector = Detector(net, Heads.load(paths["heads"]) if paths.get("heads") else None,
                        MemoryBank.load(paths["image_bank"], "image") if paths.get("image_bank") else None,
                        MemoryBank.load(paths["patch_bank"], "patch") if paths.get("patch_bank") else None,
                        device=rt.device, precision=rt.precision, batch_size=batch_size, engine=encoder)
    detector.delivery = resolution
    return detector


def delivery_status(source=None, repo_id=None, revision=None, model=None, roots=None,
                    options: ArtefactOptions | None = None) -> Resolution:
    """What is available locally right now, without downloading anything (for the app's status panel)."""
    return resolve_artefacts(model=model, source=source, repo_id=repo_id, revision=revision, download=False,
                             roots=roots, strict_backbone=False, options=options)

"""What the artefacts layer is configured with: one frozen value passed down explicitly (no module reads the
environment). `mrad_core.settings.Settings.artefacts` builds it from the environment at an entry point (the CLI,
the app, the Service); a library call without one gets `ArtefactOptions()`, the documented defaults below.

    options = ArtefactOptions(cache_dir=Path("/data/mrad"), hub_repo="you/mrad")
    resolve_artefacts(..., options=options)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CACHE_DIR = "~/.cache/mrad"  # the one spelling of MRAD_CACHE_DIR's default
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the repository when mrad_core is installed in place


def cache_path(value=None) -> Path:
    """MRAD_CACHE_DIR's value (or the default) as a Path, `~` expanded: the one place that turns it into a path."""
    return Path(value or DEFAULT_CACHE_DIR).expanduser()


@dataclass(frozen=True)
class ArtefactOptions:
    """Environment variable in brackets (read only by mrad_core.settings)."""

    cache_dir: Path = field(default_factory=cache_path)  # verified.json, drive/ [MRAD_CACHE_DIR]
    project_dir: Path | None = None  # checkpoints/, cache/; None = cwd, then PACKAGE_PARENT [MRAD_PROJECT_DIR]
    hub_repo: str | None = None  # Hub mirror of our files; None = none unless DEFAULT_REPO is published [MRAD_HUB_REPO]
    hub_revision: str | None = None  # None = registry.DEFAULT_REVISION [MRAD_HUB_REVISION]
    drive_url: str | None = None  # template with {id}; None = drive.DEFAULT_URL; "off" = no Drive [MRAD_DRIVE_URL]
    accept_digests: tuple = ()  # sha256 accepted besides the registry's for the authors' files [MRAD_ACCEPT_DIGESTS]
    hub_offline: bool = False  # no downloads at all (besides huggingface_hub's own reading) [HF_HUB_OFFLINE=1]
    training_source: str | None = None  # "visa" | "mvtec"; None = "visa" [MRAD_SOURCE]
    files: dict = field(default_factory=dict)  # kind -> path given by the environment [MRAD_BACKBONE, MRAD_HEADS, …]

    def __post_init__(self):  # paths and sequences as given by a library caller (str, list) -> the field types
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        object.__setattr__(self, "project_dir", Path(self.project_dir) if self.project_dir else None)
        object.__setattr__(self, "accept_digests", tuple(self.accept_digests))
        object.__setattr__(self, "files", {k: str(v) for k, v in dict(self.files).items() if v})

    @property
    def digest_cache(self) -> Path:
        """verified.json: sha256 verdicts by (path, size, mtime)."""
        return self.cache_dir / "verified.json"

    @property
    def drive_dir(self) -> Path:
        """The authors' files from Drive and their converted safetensors."""
        return self.cache_dir / "drive"

    def project_dirs(self) -> list:
        """Where checkpoints/ and cache/ are looked for: project_dir, else the working directory and the directory
        above the mrad_core package."""
        if self.project_dir:
            return [Path(self.project_dir)]
        return list(dict.fromkeys([Path.cwd().resolve(), PACKAGE_PARENT]))

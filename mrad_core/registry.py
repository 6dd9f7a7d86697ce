"""Names of every downloadable artefact: where it lives on the Hub, what it is called locally, its licence.

One `Artefact` per file. Heads and banks exist per *training source* ("visa" or "mvtec": the dataset the
heads were trained on / the bank was built from). The paper's pairing (its test.py) picks the source from
the dataset under test: MVTec -> VisA files, VisA -> MVTec files, anything else -> VisA files.

Digests: `sha256`/`size` are filled in only for files whose digest has been published (`mrad publish` prints
them). None means "not known here": the resolver then checks what it can (the Hub's own LFS sha256 for
downloads) and says that the file is otherwise unverified. Never put a digest here that was not computed
from the published file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

from .errors import MRADError

DEFAULT_REPO = "mrad-project/mrad"
DEFAULT_REVISION = "main"
SOURCES = ("visa", "mvtec")
KINDS = ("heads", "image_bank", "patch_bank")
LOCAL_DIRS = {"heads": "checkpoints", "image_bank": "cache", "patch_bank": "cache"}

LICENCES = {
    "visa": "built from VisA (CC BY 4.0: attribution required); MRAD code MIT",
    "mvtec": "built from MVTec AD (CC BY-NC-SA 4.0: non-commercial, share-alike); MRAD code MIT",
}
SPDX = {"visa": "cc-by-4.0", "mvtec": "cc-by-nc-sa-4.0"}

# The authors' release (Google Drive, see OFFICIAL_FILES.md). Heads are named after the dataset they are
# *tested* on: test_on_mvtec.pth was trained on VisA, and its counterpart test_on_visa.pth on MVTec.
OFFICIAL_NAMES = {
    ("heads", "visa"): "test_on_mvtec.pth",
    ("heads", "mvtec"): "test_on_visa.pth",
    ("image_bank", "visa"): "cache_model_visa.pt",
    ("image_bank", "mvtec"): "cache_model_mvtec.pt",
    ("patch_bank", "visa"): "cache_patch_model_visa.pt",
    ("patch_bank", "mvtec"): "cache_patch_model_mvtec.pt",
}
OFFICIAL_FOLDERS = {  # Google Drive folder -> local directory it fills
    "banks": ("https://drive.google.com/drive/folders/1XLl297B_jnu9Qv5KPZEw8MeAY9JJnaZg", "cache"),
    "heads": ("https://drive.google.com/drive/folders/11lugxXdal5_3RUhr9UcC2JItp95C4aIv", "checkpoints"),
}


@dataclass(frozen=True)
class Artefact:
    """One file. `repo_id`/`revision` None = take MRAD_HUB_REPO / MRAD_HUB_REVISION (or the defaults) at use."""

    kind: str  # "heads" | "image_bank" | "patch_bank" | "backbone"
    source: str  # training source ("visa" | "mvtec"), "openai" for the backbone
    filename: str  # name in the Hub repo (and our local safetensors name)
    local_names: tuple = ()  # names that count in the project's local_dir, first match wins
    local_dir: str = ""  # "checkpoints" | "cache" ("" = none: the backbone lives in the HF cache only)
    repo_id: str | None = None
    revision: str | None = None
    sha256: str | None = None  # lower-case hex, None = not published
    size: int | None = None  # bytes, None = not published
    licence: str = ""

    @property
    def repo(self) -> str:
        return self.repo_id or os.environ.get("MRAD_HUB_REPO") or DEFAULT_REPO

    @property
    def rev(self) -> str:
        return self.revision or os.environ.get("MRAD_HUB_REVISION") or DEFAULT_REVISION

    @property
    def label(self) -> str:
        """Human name, e.g. 'heads (trained on VisA)'."""
        if self.kind == "backbone":
            return "CLIP backbone (OpenAI ViT-L/14@336)"
        what = {"heads": "heads (trained on", "image_bank": "image memory bank (built from",
                "patch_bank": "patch memory bank (built from"}[self.kind]
        return f"{what} {'VisA' if self.source == 'visa' else 'MVTec AD'})"

    def at(self, repo_id=None, revision=None) -> "Artefact":
        """The same artefact from another repo / revision (None keeps the current setting)."""
        return replace(self, repo_id=repo_id or self.repo_id, revision=revision or self.revision)


def our_name(kind: str, source: str) -> str:
    return f"mrad_{kind}_{source}.safetensors"


def _entry(kind, source):
    return Artefact(kind, source, our_name(kind, source), (our_name(kind, source), OFFICIAL_NAMES[kind, source]),
                    LOCAL_DIRS[kind], licence=LICENCES[source])


REGISTRY = {(kind, source): _entry(kind, source) for source in SOURCES for kind in KINDS}

# open_clip fetches this itself (ViT-L-14-336-quickgelu, pretrained "openai"); listed for status and preloading.
BACKBONE = Artefact("backbone", "openai", "open_clip_model.safetensors",
                    repo_id="timm/vit_large_patch14_clip_336.openai", licence="OpenAI CLIP weights (MIT)")


def check_source(source: str | None) -> str:
    """None -> MRAD_SOURCE or "visa"; anything else must be one of SOURCES."""
    source = (source or os.environ.get("MRAD_SOURCE") or "visa").lower()
    if source not in SOURCES:
        raise MRADError(f"unknown training source {source!r}: choose {' or '.join(SOURCES)} "
                        f"(the dataset the heads were trained on / the banks were built from)")
    return source


def source_for_dataset(dataset: str | None) -> str:
    """The paper's pairing: testing MVTec -> VisA files, testing VisA -> MVTec files, anything else -> VisA."""
    name = (dataset or "").lower().replace(" ", "").replace("-", "").replace("_", "")
    return "mvtec" if name == "visa" else "visa"


def artefacts(source: str | None = None, repo_id: str | None = None, revision: str | None = None) -> dict:
    """{kind: Artefact} for heads, image_bank and patch_bank of one training source."""
    source = check_source(source)
    return {kind: REGISTRY[kind, source].at(repo_id, revision) for kind in KINDS}


def hub_files(repo_id: str | None = None) -> list:
    """Every (repo, filename) the app may download, for Space preloading and the model card."""
    return [(a.at(repo_id).repo, a.filename) for a in REGISTRY.values()] + [(BACKBONE.repo, BACKBONE.filename)]

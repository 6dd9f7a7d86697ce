"""Names of every downloadable artefact: where it lives on the Hub, what it is called locally, its licence.
Pure data, like open_clip's pretrained.py: no environment, no network. The Hub repo and revision an artefact
comes from are its fields; the resolver fills those not given from the settings (ArtefactOptions.hub_repo /
hub_revision, i.e. MRAD_HUB_REPO / MRAD_HUB_REVISION) with `Artefact.filled`.

One `Artefact` per file. Heads and banks exist per *training source* ("visa" or "mvtec": the dataset the
heads were trained on / the bank was built from). The paper's pairing (its test.py) picks the source from
the dataset under test: MVTec -> VisA files, VisA -> MVTec files, anything else -> VisA files.

Digests: `sha256`/`size` describe OUR safetensors file and are filled in only once such a file has been published
(`mrad publish` prints them). None means "not known here": the resolver then checks what it can (the Hub's own
LFS sha256 for downloads) and says that the file is otherwise unverified.

The authors' own files (`OFFICIAL`: Google Drive file id and sha256 per file) are a separate table: those ids and
digests are reported by an independent public evaluation harness that downloads these files; they were not
computed here (no internet on the build machines). They are treated as the expected content of the authors'
files: a download from Drive must match them (or a digest the user accepts with MRAD_ACCEPT_DIGESTS).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import MRADError

DEFAULT_REPO = "mrad-project/mrad"
DEFAULT_REVISION = "main"
DEFAULT_REPO_PUBLISHED = False  # True once `mrad publish --repo mrad-project/mrad` has been done: then it is used
TRAINING_SOURCES = ("visa", "mvtec")
ARTEFACT_KINDS = ("heads", "image_bank", "patch_bank")
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
OFFICIAL_FOLDERS = {  # Google Drive folder -> local directory it fills (for people; downloads go by file id)
    "banks": ("https://drive.google.com/drive/folders/1XLl297B_jnu9Qv5KPZEw8MeAY9JJnaZg", "cache"),
    "heads": ("https://drive.google.com/drive/folders/11lugxXdal5_3RUhr9UcC2JItp95C4aIv", "checkpoints"),
}


@dataclass(frozen=True)
class OfficialFile:
    """One of the authors' files on Google Drive: its id and expected sha256 (from an independent evaluation
    harness that downloads it; see the module docstring)."""

    name: str
    drive_id: str
    sha256: str

    @property
    def link(self) -> str:
        """The page a person opens to download it by hand."""
        return f"https://drive.google.com/file/d/{self.drive_id}/view"


OFFICIAL = {key: OfficialFile(OFFICIAL_NAMES[key], drive_id, sha) for key, drive_id, sha in (
    (("heads", "visa"), "1EdqTDU3NSeW1fQIkdZNdlH6iHcOjqQlC",
     "2af68c308183678bcdbe216dd62151d02294bfe726fd51ad4205f663a1a02535"),
    (("heads", "mvtec"), "1Wv9ajL-_6tZcftsyamuaWrFHL-RiBptR",
     "8b46b1358218e8b43872a9d00d13206b8a213315350b57031f6da682694ca524"),
    (("image_bank", "mvtec"), "1dBMpWfPed0ImjkpkuhqbLWzOEhebI6MV",
     "886431afb17a35d9c72aaeecf46655bd8d126236350566842aa828d6c45fd19e"),
    (("image_bank", "visa"), "1Z8vgexJc20TvTnMBRU-NUmmphD2PbNoJ",
     "66dfa8b32ad2c151ea3677a41f830cef0fd406234c7778644fd10bc819d1214b"),
    (("patch_bank", "mvtec"), "1sqavkro1VXZw1vSDJuUQ8Il5EE5yQP0l",
     "f5b1b081c10f6fa7a9fe0cf034be2425de45043f932e6665546b3d16123fbef3"),
    (("patch_bank", "visa"), "14E6bn3-pau1vg6CQhRLfZ5JPi9OP7MEm",
     "822bccd1c590b515ef49102afa631b1682131a299442fb18065c76f44138f600"),
)}


@dataclass(frozen=True)
class Artefact:
    """One file. `repo_id`/`revision` None = not configured: DEFAULT_REPO (only when published) / DEFAULT_REVISION."""

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
        return self.repo_id or DEFAULT_REPO

    @property
    def mirror(self) -> str | None:
        """The Hub repo to download from, or None when no mirror is configured (no repo_id: no --hub-repo, no
        MRAD_HUB_REPO) and nothing is published under DEFAULT_REPO: then the Hub step is skipped."""
        if self.repo_id:
            return self.repo_id
        return DEFAULT_REPO if DEFAULT_REPO_PUBLISHED else None

    @property
    def official(self) -> "OfficialFile | None":
        """The authors' file behind this artefact (Drive id, expected sha256), if there is one."""
        return OFFICIAL.get((self.kind, self.source)) if self.kind in ARTEFACT_KINDS else None

    @property
    def rev(self) -> str:
        return self.revision or DEFAULT_REVISION

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

    def filled(self, repo_id=None, revision=None) -> "Artefact":
        """The same artefact with repo / revision taken from the arguments where it has none (the settings' mirror
        fills what an explicit --hub-repo / --hub-revision did not set)."""
        return replace(self, repo_id=self.repo_id or repo_id or None, revision=self.revision or revision or None)


def our_name(kind: str, source: str) -> str:
    return f"mrad_{kind}_{source}.safetensors"


def _entry(kind, source):
    return Artefact(kind, source, our_name(kind, source), (our_name(kind, source), OFFICIAL_NAMES[kind, source]),
                    LOCAL_DIRS[kind], licence=LICENCES[source])


REGISTRY = {(kind, source): _entry(kind, source) for source in TRAINING_SOURCES for kind in ARTEFACT_KINDS}

# open_clip fetches this itself (ViT-L-14-336-quickgelu, pretrained "openai"): open_clip 3.3 tries
# open_clip_model.safetensors first, then open_clip_pytorch_model.bin, the file known to exist in the repo (timm
# pins it as hf_hub_filename). Listed for status and Space preloading.
BACKBONE = Artefact("backbone", "openai", "open_clip_pytorch_model.bin",
                    repo_id="timm/vit_large_patch14_clip_336.openai", licence="OpenAI CLIP weights (MIT)")
BACKBONE_SIZE = "≈1.7 GB"


def check_source(source: str | None) -> str:
    """None -> "visa" (the resolver passes MRAD_SOURCE from the settings); else one of TRAINING_SOURCES."""
    source = (source or "visa").lower()
    if source not in TRAINING_SOURCES:
        raise MRADError(f"unknown training source {source!r}: choose {' or '.join(TRAINING_SOURCES)} "
                        f"(the dataset the heads were trained on / the banks were built from)")
    return source


def source_for_dataset(dataset: str | None) -> str:
    """The paper's pairing: testing MVTec -> VisA files, testing VisA -> MVTec files, anything else -> VisA."""
    name = (dataset or "").lower().replace(" ", "").replace("-", "").replace("_", "")
    return "mvtec" if name == "visa" else "visa"


def artefacts(source: str | None = None, repo_id: str | None = None, revision: str | None = None) -> dict:
    """{kind: Artefact} for heads, image_bank and patch_bank of one training source."""
    source = check_source(source)
    return {kind: REGISTRY[kind, source].at(repo_id, revision) for kind in ARTEFACT_KINDS}


def hub_files(repo_id: str | None = None) -> list:
    """Every (repo, filename) known to exist on the Hub, for Space preloading: the backbone, plus our files in
    `repo_id` when one is given (a mirror you published), or in DEFAULT_REPO once it is published."""
    mirror = repo_id or (DEFAULT_REPO if DEFAULT_REPO_PUBLISHED else None)
    ours = [(mirror, a.filename) for a in REGISTRY.values()] if mirror else []
    return ours + [(BACKBONE.repo, BACKBONE.filename)]

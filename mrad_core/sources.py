"""Where a detector's heads and memory banks come from: one typed class per kind of source, each saying what it holds
and which variants it can run, with the reason for the others.

    PaperSource("visa")     the paper's files (VisA memory + VisA-trained heads; "mvtec" likewise), found or
                            downloaded by the artefacts resolver
    FilesSource()           the files given by MRAD_HEADS / MRAD_IMAGE_BANK / MRAD_PATCH_BANK (replace the paper's)
    ExamplesSource()        a bank built on first use from the synthetic images in assets/bank
    CustomSource(bank_id)   a bank built (or taught) in the app, kept as safetensors files by the Catalogue

`availability()` is judged from the files without loading them ({variant: None, or why not}); once a detector is
loaded its own `Detector.availability()` is exact (a heads file without the prompt parts runs MRAD-FT but not
MRAD-CLIP). Both apply the one rule, detector.availability.
"""
from __future__ import annotations

from dataclasses import dataclass

from .artefacts import registry
from .artefacts.resolve import delivery_status, resolve_artefacts
from .bank import MemoryBank
from .config import VARIANTS
from .detector import availability
from .errors import MRADError
from .heads import Heads

LABELS = {
    "env": "Your files (MRAD_HEADS / MRAD_IMAGE_BANK / MRAD_PATCH_BANK)",
    "visa": "VisA memory + VisA-trained heads (the paper's pairing for MVTec AD and other datasets)",
    "mvtec": "MVTec AD memory + MVTec-trained heads (the paper's pairing for VisA; non-commercial)",
    "examples": "Built-in synthetic examples (assets/bank; MRAD-TF with the CLIP backbone alone)",
    "custom": "My bank (built in the Bank tab or taught)",
}


@dataclass(frozen=True)
class SourceFacts:
    """What a source is and what it has, as plain facts (the app words them)."""

    key: str
    label: str
    lines: tuple  # one fact per line: files and their origin, what is missing and how to provide it, licence
    missing: bool  # something needed is missing


class Source:
    """A source of heads and memory banks. Subclasses set `key` and implement the three methods."""

    key = ""

    def __init__(self, settings):
        self.settings = settings

    @property
    def label(self) -> str:
        return LABELS[self.key]

    def facts(self) -> SourceFacts:
        raise NotImplementedError

    def availability(self) -> dict:
        """{variant: None if it can run, else why not}, from the files (loads nothing)."""
        raise NotImplementedError

    def parts(self, build_examples=None) -> tuple:
        """(heads or None, image bank, patch bank), loaded now. Raises MRADError naming what is missing."""
        raise NotImplementedError

    def _own_heads(self):
        path = self.settings.files.get("heads")
        return Heads.load(path) if path else None


class PaperSource(Source):
    """The authors' files for a training source ("visa" or "mvtec")."""

    def __init__(self, settings, training: str):
        super().__init__(settings)
        self.key = registry.check_source(training)

    def delivery(self):
        """What is available right now, without downloading (artefacts.resolve.Resolution)."""
        return delivery_status(source=self.key, model=self.settings.model, options=self.settings.artefacts)

    def facts(self) -> SourceFacts:
        lines, missing = [], False
        try:
            res = self.delivery()
            lines += [s.line() for s in res.statuses if s.kind != "backbone"]
            missing = any(not s.ok for s in res.statuses if s.kind != "backbone")
        except Exception as e:  # a status check must never stop the app from opening
            lines.append(f"status unavailable: {e}")
            missing = True
        lines.append(f"licence: {registry.LICENCES[self.key]}")
        return SourceFacts(self.key, self.label, tuple(lines), missing)

    def availability(self) -> dict:
        try:
            paths = self.delivery().paths
        except Exception:  # unknown: everything may come; loading says
            return availability(True, "unknown")
        if not paths.get("image_bank"):  # nothing here yet: all may be downloaded on first use
            return availability(True, "unknown")
        return availability(True, "unknown" if paths.get("heads") else "none")

    def parts(self, build_examples=None) -> tuple:
        res = resolve_artefacts(model=self.settings.model, source=self.key, download=self.settings.download,
                                require=("tf",), strict_backbone=False, options=self.settings.artefacts)
        heads = Heads.load(res.paths["heads"]) if res.paths.get("heads") else None
        return (heads, MemoryBank.load(res.paths["image_bank"], "image"),
                MemoryBank.load(res.paths["patch_bank"], "patch"))

    def heads(self):
        """This source's heads (for a bank taught from it), or None when they cannot be had."""
        res = resolve_artefacts(model=self.settings.model, source=self.key, download=self.settings.download,
                                strict_backbone=False, options=self.settings.artefacts)
        return Heads.load(res.paths["heads"]) if res.paths.get("heads") else None


class FilesSource(Source):
    """MRAD_HEADS / MRAD_IMAGE_BANK / MRAD_PATCH_BANK (or the same paths given to the app)."""

    key = "env"

    def _banks_given(self) -> bool:
        files = self.settings.files
        return bool(files.get("image_bank") and files.get("patch_bank"))

    def facts(self) -> SourceFacts:
        files, lines, missing = self.settings.files, [], False
        lines += [f"{k.replace('_', ' ')}: {v}" for k, v in files.items() if v and k != "backbone"]
        if not self._banks_given():
            lines.append("missing: both MRAD_IMAGE_BANK and MRAD_PATCH_BANK must be set")
            missing = True
        if not files.get("heads"):
            lines.append("no heads (MRAD_HEADS): only MRAD-TF can run")
        return SourceFacts(self.key, self.label, tuple(lines), missing)

    def availability(self) -> dict:
        return availability(self._banks_given(), "unknown" if self.settings.files.get("heads") else "none")

    def parts(self, build_examples=None) -> tuple:
        files = self.settings.files
        if not self._banks_given():
            raise MRADError("MRAD_IMAGE_BANK and MRAD_PATCH_BANK must both be set to memory bank files")
        return (self._own_heads(), MemoryBank.load(files["image_bank"], "image"),
                MemoryBank.load(files["patch_bank"], "patch"))


class ExamplesSource(Source):
    """A bank built on first use from the synthetic images in assets/bank (the app's out-of-the-box default)."""

    key = "examples"

    def facts(self) -> SourceFacts:
        folder = self.settings.assets / "bank"
        n = len([p for p in folder.glob("*.png") if not p.stem.endswith("_mask")])
        return SourceFacts(self.key, self.label, (
            f"built on first use from the {n} synthetic images in {folder} (procedural textures, not dataset "
            "images); MRAD-FT and MRAD-CLIP run only when MRAD_HEADS gives heads",), False)

    def availability(self) -> dict:
        return availability(True, "unknown" if self.settings.files.get("heads") else "none")

    def parts(self, build_examples=None) -> tuple:
        if build_examples is None:
            raise MRADError("the examples bank is built by the service (it needs the backbone)")
        return (self._own_heads(), *build_examples())


class CustomSource(Source):
    """A bank built or taught in the app (`bank_id`), stored by the Catalogue; a bank taught from a paper source
    keeps that source's heads (`heads_from` in its metadata)."""

    key = "custom"

    def __init__(self, settings, catalogue, bank_id=None):
        super().__init__(settings)
        self.catalogue, self.bank_id = catalogue, bank_id

    def _heads_from(self):
        try:
            return self.catalogue.bank(self.bank_id)[0].meta.get("heads_from")
        except MRADError:
            return None

    def facts(self) -> SourceFacts:
        if self.bank_id and self.catalogue.has_bank(self.bank_id):
            return SourceFacts(self.key, self.label, ("ready: " + self.catalogue.bank_info(self.bank_id),), False)
        return SourceFacts(self.key, self.label, ("not built yet: upload normal images in the Bank tab",), True)

    def availability(self) -> dict:
        if not (self.bank_id and self.catalogue.has_bank(self.bank_id)):
            return availability(False, "none") | {
                v: "no custom bank yet: build one in the Bank tab from your normal images" for v in VARIANTS}
        paper = self._heads_from() in registry.TRAINING_SOURCES and not self.settings.uses_own_files
        return availability(True, "unknown" if paper or self.settings.files.get("heads") else "none")

    def parts(self, build_examples=None) -> tuple:
        image_bank, patch_bank = self.catalogue.bank(self.bank_id)
        source = image_bank.meta.get("heads_from")
        heads = None
        if source in registry.TRAINING_SOURCES and not self.settings.uses_own_files:
            heads = PaperSource(self.settings, source).heads()
        return heads or self._own_heads(), image_bank, patch_bank

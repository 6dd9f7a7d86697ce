"""The sources one app offers (keys -> the typed sources of sources.py) and the banks people build in the app.

Sources (keys; the app shows their labels):
    visa, mvtec   the paper's files, found (or downloaded) by the artefacts resolver (sources.PaperSource)
    env           the files given by MRAD_HEADS / MRAD_IMAGE_BANK / MRAD_PATCH_BANK (they replace visa and mvtec)
    examples      a bank built on first use from the synthetic images in assets/bank
    custom        a bank built in the app from uploads; kept as two safetensors files under the work directory,
                  so any process (a fresh ZeroGPU worker too) can load it by its id
"""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import torch

from .backbone import Encoding
from .artefacts.registry import TRAINING_SOURCES
from .bank import BankBuilder, MemoryBank
from .errors import MRADError
from .files import safe_name
from .images import ImageError, load_image, load_mask, preprocess
from .lru import LRU
from .sources import LABELS as SOURCE_LABELS, CustomSource, ExamplesSource, FilesSource, PaperSource, Source, \
    SourceFacts

BANK_ID = re.compile(r"[0-9a-f]{12}")
KEPT_BANKS = 16  # custom banks kept in memory (their files stay until the work directory is tidied)


class Catalogue:
    """The sources one service offers and the custom banks built in it."""

    def __init__(self, settings, workdir: Path):
        self.settings = settings
        self.bank_dir = Path(workdir) / "banks"
        self._banks = LRU(KEPT_BANKS)  # bank id -> (image bank, patch bank)

    # ------------------------------------------------------------------ sources
    def keys(self) -> list:
        """Source keys offered in this setup; MRAD_* files replace the paper's sources."""
        return (["env"] if self.settings.uses_own_files else ["visa", "mvtec"]) + ["examples", "custom"]

    def choices(self) -> list:
        return [(SOURCE_LABELS[k], k) for k in self.keys()]

    def check(self, key) -> str:
        if key not in self.keys():
            raise MRADError(f"unknown source {key!r}; choose one of: "
                            + "; ".join(f"{SOURCE_LABELS[k]} ({k})" for k in self.keys()))
        return key

    def source(self, key, bank_id=None) -> Source:
        """The typed source behind a key (sources.py): what it holds, which variants it can run, its parts."""
        self.check(key)
        if key in TRAINING_SOURCES:
            return PaperSource(self.settings, key)
        if key == "env":
            return FilesSource(self.settings)
        if key == "examples":
            return ExamplesSource(self.settings)
        return CustomSource(self.settings, self, bank_id)

    def default(self) -> str:
        """MRAD_APP_SOURCE if offered; else your files; else VisA/MVTec when their banks are here; else examples."""
        if self.settings.app_source in self.keys():
            return self.settings.app_source
        if self.settings.uses_own_files:
            return "env"
        for key in TRAINING_SOURCES:
            try:
                if PaperSource(self.settings, key).delivery().paths.get("image_bank"):
                    return key
            except Exception:  # a status check must never stop the app from opening
                pass
        return "examples"

    def facts(self, key: str, bank_id=None) -> SourceFacts:
        """What a source is and what is missing. Loads nothing."""
        return self.source(key, bank_id).facts()

    def availability(self, key: str, bank_id=None) -> dict:
        """{variant: None if it can run, else why not}, judged from the source's files (loads nothing)."""
        return self.source(key, bank_id).availability()

    def variants(self, key: str, bank_id=None) -> tuple:
        """The variants a source can run, judged from its files without loading them."""
        return tuple(v for v, why in self.availability(key, bank_id).items() if why is None)

    def parts(self, key: str, bank_id, build_examples) -> tuple:
        """(heads or None, image bank, patch bank) of a source. `build_examples()` builds the examples bank."""
        return self.source(key, bank_id).parts(build_examples)

    def example_images(self) -> tuple:
        """(images, masks or None, ids) of the built-in bank in assets/bank."""
        folder = self.settings.assets / "bank"
        images = sorted(p for p in folder.glob("*.png") if not p.stem.endswith("_mask"))
        if not images:
            raise MRADError(f"no example images in {folder}: run `python assets/make_examples.py`")
        masks = [folder / f"{p.stem}_mask.png" for p in images]
        return images, [m if m.is_file() else None for m in masks], [p.stem for p in images]

    # ------------------------------------------------------------------ custom banks
    def add_bank(self, banks: tuple, name: str) -> str:
        """Keep a custom (image bank, patch bank) pair as files and in memory; returns its id."""
        bank_id = uuid.uuid4().hex[:12]
        folder = self.bank_dir / bank_id
        folder.mkdir(parents=True)
        stem = safe_name(name, "bank", 60)
        banks[0].save(folder / f"{stem}_image_bank.safetensors")
        banks[1].save(folder / f"{stem}_patch_bank.safetensors")
        self._banks.put(bank_id, banks)
        return bank_id

    def _folder(self, bank_id) -> Path:
        if not isinstance(bank_id, str) or not BANK_ID.fullmatch(bank_id):
            raise MRADError("no custom bank yet: build one in the Bank tab from your normal images")
        return self.bank_dir / bank_id

    def has_bank(self, bank_id) -> bool:
        try:
            return bank_id in self._banks or any(self._folder(bank_id).glob("*_image_bank.safetensors"))
        except MRADError:
            return False

    def bank_files(self, bank_id) -> list:
        """[image bank file, patch bank file] of a custom bank."""
        folder = self._folder(bank_id)
        image = sorted(folder.glob("*_image_bank.safetensors"))
        patch = sorted(folder.glob("*_patch_bank.safetensors"))
        if not (image and patch):
            raise MRADError("this custom bank is gone (banks are kept for a few hours): build it again in the "
                            "Bank tab")
        return [image[0], patch[0]]

    def bank(self, bank_id) -> tuple:
        """(image bank, patch bank) of a custom bank: from memory, else from its files (another process built it)."""
        banks = self._banks.get(bank_id)
        if banks is None:
            image, patch = self.bank_files(bank_id)
            banks = (MemoryBank.load(image, "image"), MemoryBank.load(patch, "patch"))
            self._banks.put(bank_id, banks)
        return banks

    def bank_info(self, bank_id) -> str:
        image, patch = self.bank(bank_id)
        n_bad = int(image.labels.sum())
        label = image.meta.get("source") or SOURCE_LABELS["custom"].split(" (")[0]  # the authors' files name none
        return (f"'{label}' (id {bank_id}): {len(image)} images ({len(image) - n_bad} normal, {n_bad} defect), "
                f"{len(patch)} patch regions")

    def custom_inputs(self, normal, defects) -> tuple:
        """Uploads -> (images, masks or None, ids, notes). `defects` holds defect images and their masks, paired
        by name (x.png + x_mask.png). Without defect images the synthetic defects of assets/bank are the anomalous
        memories (retrieval needs both kinds)."""
        masks = {Path(p).stem[:-5]: p for p in defects if Path(p).stem.endswith("_mask")}
        notes, images, image_masks, ids = [], [], [], []
        todo = [(p, False) for p in normal] + [(p, True) for p in defects if not Path(p).stem.endswith("_mask")]
        limit = self.settings.max_bank_images
        if len(todo) > limit:
            notes.append(f"{len(todo) - limit} image(s) left out: a bank built here takes at most {limit}")
            todo = todo[:limit]
        for src, is_defect in todo:
            if is_defect and Path(src).stem not in masks:
                notes.append(f"{Path(src).name}: skipped, a defect image needs its mask ({Path(src).stem}_mask.png)")
                continue
            try:  # checked now, decoded again chunk by chunk when encoded (bounded memory)
                load_image(src, self.settings.max_pixels)
            except ImageError as e:
                notes.append(str(e))
                continue
            images.append(src)
            image_masks.append(masks[Path(src).stem] if is_defect else None)
            ids.append(Path(src).stem)
        if not any(m is None for m in image_masks):
            raise MRADError("no usable normal image: " + ("; ".join(notes) or "upload at least one"))
        if all(m is None for m in image_masks):
            synth = sorted((self.settings.assets / "bank").glob("*_mask.png"))
            images += [p.with_name(p.name.replace("_mask", "")) for p in synth]
            image_masks += synth
            ids += [p.stem.replace("_mask", "") for p in synth]
            notes.append(f"no defect images given: the {len(synth)} synthetic defects of assets/bank were added "
                         "as the anomalous memories (MRAD retrieves between normal and anomalous memories)")
        return images, image_masks, ids, notes


def build_banks(calls, encoder, images, masks, ids, chunk: int = 8, progress=None, **meta) -> tuple:
    """Encode images (paths; each once, `chunk` at a time so memory stays bounded) with masks (None = normal)
    -> (image bank, patch bank). `calls.encode(encoder, pixels)` runs the model; progress(fraction, text)."""
    builder = BankBuilder(**meta)
    size = encoder.config.image_size
    for start in range(0, len(images), chunk):
        if progress:
            progress(start / len(images), f"encoding bank images {start + 1}-{min(len(images), start + chunk)} "
                                          f"of {len(images)}")
        part = slice(start, start + chunk)
        pixels = torch.stack([preprocess(load_image(p).image, size) for p in images[part]])
        if progress and encoder.device.type == "cpu":  # seconds per image: progress after each (same calls)
            parts = []
            for i in range(len(pixels)):
                parts.append(calls.encode(encoder, pixels[i:i + 1]))
                progress(min(start + i + 1, len(images)) / len(images),
                         f"encoded bank image {start + i + 1} of {len(images)}")
            enc = Encoding.cat(parts)
        else:
            enc = calls.encode(encoder, pixels)
        labels = [int(m is not None) for m in masks[part]]
        builder.add(enc.to("cpu"), labels, torch.stack([load_mask(m, size) for m in masks[part]]), ids[part])
    return builder.build()

"""The authors' .pth heads / .pt banks (read with weights_only=True) -> our safetensors files with metadata
(variants, training source, dims, provenance incl. the source file's sha256). After this, nothing is unpickled at
run time. Each output is re-read and compared tensor by tensor before it is kept. Library code: `mrad convert`
(cli/convert.py) and the Drive step of the resolver (drive.ensure) call it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .. import __version__
from ..bank import MemoryBank
from ..errors import MRADError, first_line
from ..heads import GROUPS, Heads
from .digest import sha256_of
from .options import ArtefactOptions
from .registry import LICENCES, LOCAL_DIRS, OFFICIAL_NAMES, TRAINING_SOURCES, our_name

BY_NAME = {name: key for key, name in OFFICIAL_NAMES.items()}  # official file name -> (kind, source)


def identify(path: Path, kind=None, source=None):
    """(kind, source) from the flags, the official file name, or the contents. Raises MRADError."""
    known_kind, known_source = BY_NAME.get(path.name, (None, None))
    stem = path.stem.lower()
    if known_source is None and stem.startswith("test_on_"):
        known_source = {"mvtec": "visa", "visa": "mvtec"}.get(stem[len("test_on_"):])  # named after the TEST set
    elif known_source is None:
        known_source = next((s for s in TRAINING_SOURCES if s in stem), None)
    kind, source = kind or known_kind, source or known_source
    if kind is None:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise MRADError(f"{path}: cannot be read as an official MRAD file ({first_line(e)})") from e
        if isinstance(raw, dict) and any(g in raw for g in GROUPS):
            kind = "heads"
        elif isinstance(raw, dict) and {"keys", "values"} <= set(raw):
            kind = "patch_bank" if "patch" in stem else "image_bank" if ("cache_model" in stem or "image" in stem) \
                else None
            if kind is None:
                raise MRADError(f"{path}: a memory bank, but its name does not say image or patch: give --kind")
        else:
            raise MRADError(f"{path}: neither MRAD heads nor a memory bank")
    if source is None:
        raise MRADError(f"{path}: the training source is not in the file name: give --source visa or mvtec")
    return kind, source


def convert(path, out_dir=None, kind=None, source=None, force=False, roots=None) -> Path:
    """One official file -> our safetensors file (checked to hold exactly the same tensors). Returns its path.
    Without out_dir: checkpoints/ or cache/ of the first project directory (roots; default
    ArtefactOptions().project_dirs(), i.e. the working directory)."""
    path = Path(path)
    if not path.is_file():
        raise MRADError(f"{path}: no such file")
    kind, source = identify(path, kind, source)
    out_dir = Path(out_dir) if out_dir else Path((roots or ArtefactOptions().project_dirs())[0]) / LOCAL_DIRS[kind]
    out = out_dir / our_name(kind, source)
    if out.exists() and not force:
        raise MRADError(f"{out} exists: use --force to overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
    provenance = json.dumps({"file": path.name, "sha256": sha256_of(path), "layout": "official MRAD " + path.suffix,
                             "converted_by": f"mrad convert {__version__}"})
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")  # loaders go by the suffix
    try:
        if kind == "heads":
            heads = Heads.load(path)
            heads.save(tmp, training_source=source, licence=LICENCES[source], provenance=provenance,
                       image_dim=heads.image_proj.mlp1.in_features, patch_dim=heads.patch_proj.fc[0].in_features)
            before, after = heads.state_dict(), Heads.load(tmp).state_dict()
        else:
            bank = MemoryBank.load(path, kind.split("_")[0])
            bank.meta = {"source": source, "licence": LICENCES[source], "provenance": provenance,
                         "entries": len(bank), "dim": bank.dim, "variants": "tf,ft,clip"}
            bank.save(tmp)
            again = MemoryBank.load(tmp, bank.kind)
            before, after = {"keys": bank.keys, "values": bank.values}, {"keys": again.keys, "values": again.values}
        if before.keys() != after.keys() or not all(torch.equal(before[k], after[k]) for k in before):
            raise MRADError(f"{path}: the converted file does not hold identical tensors (not written)")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out

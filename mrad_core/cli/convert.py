"""`mrad convert`: the authors' .pth heads / .pt banks (read with weights_only=True) -> our safetensors files
with metadata (variants, training source, dims, provenance incl. the source file's sha256). After this,
nothing is unpickled at run time. Each output is re-read and compared tensor by tensor before it is kept."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .. import __version__
from ..bank import MemoryBank
from ..errors import MRADError, first_line
from ..heads import GROUPS, Heads
from ..hub import project_dirs
from ..registry import ARTEFACT_KINDS, LICENCES, LOCAL_DIRS, OFFICIAL_NAMES, TRAINING_SOURCES, our_name

COMMAND = "convert"
BY_NAME = {name: key for key, name in OFFICIAL_NAMES.items()}  # official file name -> (kind, source)


def add_parser(sub, name):
    p = sub.add_parser(name, help="convert official .pth/.pt files to safetensors",
                       description="Convert the authors' checkpoints (test_on_*.pth) and memory banks "
                                   "(cache_model_*.pt, cache_patch_model_*.pt) to our safetensors layout. Writes "
                                   "mrad_<kind>_<source>.safetensors into checkpoints/ (heads) or cache/ (banks) "
                                   "unless --out is given; the resolver finds them there.")
    p.add_argument("inputs", nargs="+", metavar="FILE", help="official .pth / .pt files")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: checkpoints/ or cache/)")
    p.add_argument("--source", choices=TRAINING_SOURCES, default=None,
                   help="training source, when the file name does not say it (test_on_mvtec.pth = visa)")
    p.add_argument("--kind", choices=ARTEFACT_KINDS, default=None, help="what the file is, when its name does not say it")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(run=run)


def sha256_of(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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


def convert(path, out_dir=None, kind=None, source=None, force=False) -> Path:
    """One official file -> our safetensors file (checked to hold exactly the same tensors). Returns its path."""
    path = Path(path)
    if not path.is_file():
        raise MRADError(f"{path}: no such file")
    kind, source = identify(path, kind, source)
    out_dir = Path(out_dir) if out_dir else project_dirs()[0] / LOCAL_DIRS[kind]
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


def run(args):
    plan = [(src, identify(Path(src), args.kind, args.source)) for src in args.inputs]  # check all before writing
    names = [our_name(*ks) for _, ks in plan]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MRADError(f"several inputs would become {', '.join(dupes)}: convert them one by one")
    for src, (kind, source) in plan:
        out = convert(src, args.out, kind, source, args.force)
        print(f"{src} -> {out} ({kind}, trained on/built from {source}; sha256 {sha256_of(out)}, "
              f"{out.stat().st_size} bytes)")
    return 0

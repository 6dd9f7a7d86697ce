"""`mrad convert`: the authors' .pth heads / .pt banks -> our safetensors files (the work is
mrad_core.artefacts.convert's; this module is the command line)."""
from __future__ import annotations

from pathlib import Path

from ..artefacts.convert import convert, identify, sha256_of  # noqa: F401  (the library part)
from ..artefacts.registry import ARTEFACT_KINDS, TRAINING_SOURCES, our_name
from ..errors import MRADError
from ..settings import settings_of

COMMAND = "convert"


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


def run(args):
    roots = settings_of(args).artefacts.project_dirs()
    plan = [(src, identify(Path(src), args.kind, args.source)) for src in args.inputs]  # check all before writing
    names = [our_name(*ks) for _, ks in plan]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MRADError(f"several inputs would become {', '.join(dupes)}: convert them one by one")
    for src, (kind, source) in plan:
        out = convert(src, args.out, kind, source, args.force, roots=roots)
        print(f"{src} -> {out} ({kind}, trained on/built from {source}; sha256 {sha256_of(out)}, "
              f"{out.stat().st_size} bytes)")
    return 0

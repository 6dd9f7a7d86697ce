"""Options shared by the sub-commands that load a model, and turning them into a Detector.

Every command's device, engine and precision come from one call, `runtime_from_args` -> runtime.resolve, with the
command's name as the entry point (runtime.ENTRY_DEFAULTS holds each command's defaults). The environment was read
once by `mrad_core.cli.main` into `args.settings`.
"""
from __future__ import annotations

import sys
from dataclasses import replace

from .. import autotune, runtime
from ..artefacts.registry import DEFAULT_REPO, DEFAULT_REPO_PUBLISHED, DEFAULT_REVISION, TRAINING_SOURCES, \
    source_for_dataset
from ..config import DEFAULT, VARIANTS
from ..engines import ENGINES
from ..settings import settings_of

FILE_OPTIONS = {  # option -> (environment variable, help)
    "backbone": ("MRAD_BACKBONE", "CLIP ViT-L/14@336 state dict (.safetensors, or a torch file); default: open_clip's "
                                  "OpenAI weights from the Hugging Face Hub"),
    "heads": ("MRAD_HEADS", "MRAD-FT/CLIP heads: official .pth or our .safetensors"),
    "image_bank": ("MRAD_IMAGE_BANK", "image-level memory bank: official .pt or our .safetensors"),
    "patch_bank": ("MRAD_PATCH_BANK", "patch-level memory bank: official .pt or our .safetensors"),
}


def add_model_args(parser, engine=True):
    g = parser.add_argument_group("model files (each defaults to its environment variable)")
    for name, (env, text) in FILE_OPTIONS.items():
        g.add_argument("--" + name.replace("_", "-"), metavar="PATH", default=None,
                       help=f"{text} [${env}]")
    g.add_argument("--model", default=None, metavar="NAME",
                   help=f"open_clip model name or config .json [$MRAD_MODEL] (default: {DEFAULT.model_name})")
    h = parser.add_argument_group("weights and banks not given above: checkpoints/ and cache/ in the project, "
                                  "the Hugging Face cache, $MRAD_CACHE_DIR, then a Hub mirror (only when one is "
                                  "set), then the authors' Google Drive ($MRAD_DRIVE_URL)")
    h.add_argument("--source", choices=TRAINING_SOURCES, default=None,
                   help="training source of the heads and banks: visa (the paper's choice for MVTec and any other "
                        "dataset) or mvtec (for testing VisA) [$MRAD_SOURCE] (default: paired with --dataset "
                        "where there is one, else visa)")
    h.add_argument("--hub-repo", default=None, metavar="ID",
                   help="Hub mirror of our safetensors files [$MRAD_HUB_REPO] (default: "
                        + (DEFAULT_REPO if DEFAULT_REPO_PUBLISHED else "none: the authors' files from Drive") + ")")
    h.add_argument("--hub-revision", default=None, metavar="REV",
                   help=f"branch, tag or commit [$MRAD_HUB_REVISION] (default: {DEFAULT_REVISION})")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--precision", choices=(*runtime.PRECISIONS, "auto"), default=None,
                        help="backbone precision; fp32 reproduces the reference exactly; bf16-mlp runs only the MLPs "
                             "in bf16; auto picks the fastest within the accuracy bounds (default: fp32)")
    if engine:  # who runs the image encoder; commands that train need PyTorch's own
        parser.add_argument("--engine", choices=ENGINES, default=None,
                            help="who runs the image encoder: openvino (CPU; fp32 matches the reference within the "
                                 "parity bounds, and is faster) or torch [$MRAD_ENGINE] (default: in predict and "
                                 "build-bank openvino on a CPU where it is installed, for fp32 and bf16; else torch; "
                                 "with --precision auto, the fastest engine within the bounds)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")


def model_of(args) -> str:
    """--model > $MRAD_MODEL > the paper's ViT-L/14@336 (QuickGELU)."""
    return getattr(args, "model", None) or settings_of(args).model


def config_of(args):
    return replace(DEFAULT, model_name=model_of(args))


def runtime_from_args(args, device=None) -> runtime.Runtime:
    """--device / --engine ($MRAD_ENGINE) / --precision over this command's defaults (runtime.ENTRY_DEFAULTS);
    `device` overrides --device (a torchrun rank's own GPU)."""
    s = settings_of(args)
    entry = args.command if args.command in runtime.ENTRY_DEFAULTS else "library"
    precision = getattr(args, "precision", None)
    auto = (precision or runtime.ENTRY_DEFAULTS[entry].precision) == "auto"
    return runtime.resolve(entry, device if device is not None else args.device,
                           getattr(args, "engine", None) or s.engine, precision,
                           visible_devices=s.visible_devices, measured=measured_from_args(args) if auto else None)


def measured_from_args(args) -> list | None:
    """This machine's cached `auto` measurement (`mrad doctor`) for the backbone these options name, or None (then
    `auto` uses the recorded facts, else what is exact). Never measures, never downloads; hashes the backbone file
    (once, cached) only when some measurement is cached."""
    from ..artefacts.resolve import backbone_file
    from ..errors import MRADError

    s = settings_of(args)
    if not autotune.any_measured(s.cache_dir):
        return None
    try:
        path = backbone_file(getattr(args, "backbone", None), model_of(args), s.artefacts, allow_download=False)
    except MRADError:
        return None
    return autotune.measured_for(s.cache_dir, path, model_of(args), config_of(args).image_size)


def detector_from_args(args, device=None):
    """A Detector from the parsed options, on this command's runtime (its row of runtime.ENTRY_DEFAULTS); files
    needed by the requested --variant (if any) must be found."""
    from ..artefacts.resolve import load_detector

    settings = settings_of(args)
    variant = getattr(args, "variant", None)
    require = VARIANTS if variant == "all" else (variant,) if variant in VARIANTS else ()
    source = getattr(args, "source", None)
    if source is None and getattr(args, "dataset", None) and not settings.training_source:
        source = source_for_dataset(args.dataset)  # the paper's pairing: MVTec -> VisA files, VisA -> MVTec files
    return load_detector(args.backbone, args.heads, args.image_bank, args.patch_bank, model=model_of(args),
                         runtime=runtime_from_args(args, device), batch_size=args.batch_size, source=source,
                         repo_id=getattr(args, "hub_repo", None), revision=getattr(args, "hub_revision", None),
                         require=require, options=settings.artefacts, progress=_say)


def encoder_from_args(args, backbone_path, device=None):
    """A Detector without banks (encodes only) for bank building and training, on this command's runtime."""
    from ..artefacts.resolve import load_detector

    return load_detector(backbone_path, model=model_of(args), runtime=runtime_from_args(args, device),
                         batch_size=args.batch_size, options=settings_of(args).artefacts, with_banks=False,
                         progress=_say)


def _say(text):
    print(f"mrad: {text} …", file=sys.stderr, flush=True)

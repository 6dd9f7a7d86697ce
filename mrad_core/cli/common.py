"""Options shared by the sub-commands that load a model, and turning them into a Detector."""
from __future__ import annotations

import os

from ..config import DEFAULT, VARIANTS
from ..detector import resolve_device
from ..engines import ENGINES, check_engine, default_engine
from ..registry import DEFAULT_REPO, DEFAULT_REPO_PUBLISHED, DEFAULT_REVISION, TRAINING_SOURCES, source_for_dataset

FILE_OPTIONS = {  # option -> (environment variable, help)
    "backbone": ("MRAD_BACKBONE", "CLIP ViT-L/14@336 state dict (.safetensors, or a torch file); default: open_clip's "
                                  "OpenAI weights from the Hugging Face Hub"),
    "heads": ("MRAD_HEADS", "MRAD-FT/CLIP heads: official .pth or our .safetensors"),
    "image_bank": ("MRAD_IMAGE_BANK", "image-level memory bank: official .pt or our .safetensors"),
    "patch_bank": ("MRAD_PATCH_BANK", "patch-level memory bank: official .pt or our .safetensors"),
}


def add_model_args(parser, precision_default="fp32", engine=True):
    g = parser.add_argument_group("model files (each defaults to its environment variable)")
    for name, (env, text) in FILE_OPTIONS.items():
        g.add_argument("--" + name.replace("_", "-"), metavar="PATH", default=None,
                       help=f"{text} [${env}]")
    g.add_argument("--model", default=os.environ.get("MRAD_MODEL") or DEFAULT.model_name, metavar="NAME",
                   help="open_clip model name or config .json [$MRAD_MODEL] (default: %(default)s)")
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
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "bf16-mlp", "auto"), default=precision_default,
                        help="backbone precision; fp32 reproduces the reference exactly; bf16-mlp runs only the MLPs "
                             "in bf16; auto picks the fastest within the accuracy bounds (default: %(default)s)")
    if engine:  # who runs the image encoder; commands that train need PyTorch's own
        parser.add_argument("--engine", choices=ENGINES, default=None,
                            help="who runs the image encoder: openvino (CPU; fp32 matches the reference within the "
                                 "parity bounds, and is faster) or torch [$MRAD_ENGINE] (default: in predict and "
                                 "build-bank openvino on a CPU where it is installed, for fp32 and bf16; else torch; "
                                 "with --precision auto, the fastest engine within the bounds)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")


def engine_from_args(args, device=None, openvino_default=False):
    """--engine > $MRAD_ENGINE > (precision auto: None, resolved with it) > with openvino_default (predict,
    build-bank), openvino on a CPU where installed > torch."""
    engine = getattr(args, "engine", None) or os.environ.get("MRAD_ENGINE") or None
    if engine is None and getattr(args, "precision", "fp32") != "auto":
        engine = default_engine(resolve_device(device if device is not None else args.device),
                                getattr(args, "precision", "fp32")) if openvino_default else "torch"
    return check_engine(engine) if engine else None


def detector_from_args(args, openvino_default=False):
    """A Detector from the parsed options; files needed by the requested --variant (if any) must be found."""
    from ..loading import load_detector

    variant = getattr(args, "variant", None)
    require = VARIANTS if variant == "all" else (variant,) if variant in VARIANTS else ()
    source = getattr(args, "source", None)
    if source is None and getattr(args, "dataset", None) and not os.environ.get("MRAD_SOURCE"):
        source = source_for_dataset(args.dataset)  # the paper's pairing: MVTec -> VisA files, VisA -> MVTec files
    return load_detector(args.backbone, args.heads, args.image_bank, args.patch_bank, model=args.model,
                         device=args.device, precision=args.precision, batch_size=args.batch_size,
                         engine=engine_from_args(args, openvino_default=openvino_default),
                         source=source, repo_id=getattr(args, "hub_repo", None),
                         revision=getattr(args, "hub_revision", None), require=require)

"""Options shared by the sub-commands that load a model, and turning them into a Detector."""
from __future__ import annotations

from ..config import DEFAULT

FILE_OPTIONS = {  # option -> (environment variable, help)
    "backbone": ("MRAD_BACKBONE", "CLIP ViT-L/14@336 state dict (.safetensors, or a torch file); default: open_clip's "
                                  "OpenAI weights from the Hugging Face Hub"),
    "heads": ("MRAD_HEADS", "MRAD-FT/CLIP heads: official .pth or our .safetensors"),
    "image_bank": ("MRAD_IMAGE_BANK", "image-level memory bank: official .pt or our .safetensors"),
    "patch_bank": ("MRAD_PATCH_BANK", "patch-level memory bank: official .pt or our .safetensors"),
}


def add_model_args(parser, precision_default="fp32"):
    g = parser.add_argument_group("model files (each defaults to its environment variable)")
    for name, (env, text) in FILE_OPTIONS.items():
        g.add_argument("--" + name.replace("_", "-"), metavar="PATH", default=None,
                       help=f"{text} [${env}]")
    g.add_argument("--model", default=DEFAULT.model_name, metavar="NAME",
                   help="open_clip model name or config .json [$MRAD_MODEL] (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=precision_default,
                        help="backbone precision; fp32 reproduces the reference exactly (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")


def detector_from_args(args):
    from ..loading import load_detector

    return load_detector(args.backbone, args.heads, args.image_bank, args.patch_bank, model=args.model,
                         device=args.device, precision=args.precision, batch_size=args.batch_size)

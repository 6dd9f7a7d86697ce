"""`mrad export`: the image encoder as OpenVINO IR or ONNX, for deployment without this project.

Writes DIR/mrad_encoder.xml + .bin (openvino) or DIR/mrad_encoder.onnx (onnx), and DIR/mrad_encoder.json saying
what goes in and out (the README's "Exporting the encoder" section has a runnable example):
    input  pixels         (B, 3, S, S) float32, S = 518: RGB stretched to S x S (bicubic), OpenAI mean/std
    output image_feature  (B, E)      o[CLS] @ proj (not normalised)
           patch_tokens   (B, N, W)   ln_post(s)[1:], layer 24 of the V-V stream, N = (S / 14)^2
           proj_tokens    (B, N, E)   (ln_post(s) @ proj)[1:]
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from ..config import DEFAULT, OPENAI_MEAN, OPENAI_STD
from ..errors import MRADError
from ..settings import settings_of

COMMAND = "export"
FORMATS = ("openvino", "onnx")


def add_parser(sub, name):
    p = sub.add_parser(name, help="export the image encoder (OpenVINO IR or ONNX) for deployment",
                       description="Write the dual-path image encoder (pixels -> image feature, patch tokens, "
                                   "projected tokens) as OpenVINO IR or ONNX, float32, dynamic batch, with "
                                   "mrad_encoder.json describing inputs, outputs and preprocessing.")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--backbone", metavar="PATH", default=None,
                   help="CLIP ViT-L/14@336 state dict [$MRAD_BACKBONE] (default: open_clip's OpenAI weights)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help=f"open_clip model name or config .json [$MRAD_MODEL] (default: {DEFAULT.model_name})")
    p.set_defaults(run=run)


def export_onnx(backbone, path: Path):
    """Backbone -> ONNX file (opset 17, dynamic batch) through torch.onnx's TorchScript exporter."""
    import torch

    from ..engines import OUTPUTS, EncoderModule

    try:
        import onnx  # noqa: F401  (torch.onnx needs it to write the file)
    except ImportError as e:
        raise MRADError("--format onnx needs the onnx package (pip install onnx)") from e
    s = backbone.config.image_size
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no ONNX form; the plain path does
    try:
        with torch.no_grad():
            torch.onnx.export(EncoderModule(backbone).eval(), (torch.zeros(1, 3, s, s),), str(path), dynamo=False,
                              input_names=["pixels"], output_names=list(OUTPUTS), opset_version=17,
                              dynamic_axes={n: {0: "batch"} for n in ("pixels", *OUTPUTS)})
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def export(fmt: str, out, backbone_path=None, model=None, settings=None) -> list[Path]:
    """Write the encoder in `fmt` to directory `out`; returns the files written. `settings`: MRAD_MODEL,
    MRAD_BACKBONE and the cache directory (None = the defaults, no environment)."""
    from ..artefacts import hub
    from ..artefacts.digest import file_sha256
    from ..backbone import Backbone
    from ..settings import Settings
    from ..engines import OUTPUTS, cached_ir

    if fmt not in FORMATS:
        raise MRADError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    settings = settings or Settings()
    config = replace(DEFAULT, model_name=model or settings.model)
    backbone_path = backbone_path or settings.files.get("backbone") or \
        hub.backbone_weights(config.model_name, config.pretrained, allow_download=True, cache_dir=settings.cache_dir)
    backbone = Backbone.load(backbone_path, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "openvino":
        xml, _ = cached_ir(backbone, settings.cache_dir / "openvino")  # the engine's own cached conversion
        files = [out / "mrad_encoder.xml", out / "mrad_encoder.bin"]
        shutil.copyfile(xml, files[0])
        shutil.copyfile(xml.with_suffix(".bin"), files[1])
    else:
        files = [out / "mrad_encoder.onnx"]
        export_onnx(backbone, files[0])
    s, g = config.image_size, config.image_size // backbone.patch
    e, w = backbone.image_dim, backbone.patch_dim
    meta = {
        "format": fmt, "files": [f.name for f in files], "model": config.model_name,
        "backbone": str(backbone_path) if backbone_path else None,
        "backbone_sha256": file_sha256(backbone_path, settings.cache_dir) if backbone_path else None,
        "inputs": {"pixels": {"shape": ["B", 3, s, s], "dtype": "float32"}},
        "outputs": {n: {"shape": shape, "dtype": "float32"} for n, shape in zip(OUTPUTS, (
            ["B", e], ["B", g * g, w], ["B", g * g, e]))},
        "preprocessing": {"color": "RGB", "resize": [s, s], "interpolation": "bicubic",
                          "keep_aspect_ratio": False, "scale": "1/255", "mean": list(OPENAI_MEAN),
                          "std": list(OPENAI_STD)},
        "postprocessing": "neighbour-average patch_tokens / proj_tokens on the grid (mean of 1x1, 3x3, 5x5 "
                          "stride-1 average pools, zero padding counted), L2-normalise, then MRAD's retrieval "
                          "heads (mrad_core.detector.Detector.score)",
    }
    files.append(out / "mrad_encoder.json")
    files[-1].write_text(json.dumps(meta, indent=1))
    return files


def run(args):
    files = export(args.format, args.out, args.backbone, args.model, settings_of(args))
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0

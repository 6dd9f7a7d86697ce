"""int8 recipes of the encoder's OpenVINO IR (NNCF), tried honestly: each is measured by bench/bench.py (speed and
the maps against PyTorch fp32, within the bounds of `auto`), never assumed to help.

    engine = Int8Engine(backbone, "int8-smoothquant", calibration_pixels)   # quantises (or loads the cached IR)
    enc = engine.encode(pixels, "int8")

Recipes (RECIPES): NNCF post-training quantisation with the transformer model type (its default SmoothQuant),
SmoothQuant with alpha 0.5, the transformer preset with the attention (the qkv/out projections and the attention
products) kept in f32 through an ignored scope, the same with the last blocks and the output projections kept in
f32, and weight-only int8 compression (no calibration: the activations stay f32). The compiled model runs with
INFERENCE_PRECISION_HINT f32, so what is not int8 stays f32 (on a bf16 CPU the plugin's default would be bf16,
which would mix two effects in one figure).

A recipe becomes the precision "int8" (`auto` may pick it) only when a benchmark found it within the bounds:
KEPT_RECIPE names it, None while no recipe was (docs/auto.md has the figures).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

from . import engines, files
from .backbone import Encoding, encoding_from_tokens
from .engines import EngineError

# name -> what NNCF is asked to do; "last_blocks" keeps that many final blocks in f32
RECIPES = {
    "int8-transformer": {"kind": "quantize"},
    "int8-smoothquant": {"kind": "quantize", "smooth_quant_alpha": 0.5},
    "int8-keep-attention": {"kind": "quantize", "keep": "attention"},
    "int8-keep-last-blocks": {"kind": "quantize", "keep": "last_blocks", "last_blocks": 4},
    "int8-weights": {"kind": "weights"},
}
KEPT_RECIPE: str | None = None  # none was within the bounds on any CPU measured (docs/auto.md)
CALIBRATION_IMAGES = 8


def nncf_available() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def _import_nncf():
    try:
        import nncf
    except ImportError as e:
        raise EngineError("int8 recipes need NNCF (pip install nncf)") from e
    return nncf


def check_recipe(name: str) -> dict:
    if name not in RECIPES:
        raise EngineError(f"int8 recipe must be one of {', '.join(RECIPES)}, not {name!r}")
    return RECIPES[name]


def ignored_scope(recipe: dict, layers: int):
    """The nodes a recipe keeps in f32 (None: quantise all NNCF would). Node names are the traced module paths
    (`__module.backbone.clip.visual.transformer.resblocks.N...`); the qkv projection (F.linear on in_proj_weight)
    and the dual path's attention come out unnamed (`aten::linear/MatMul*`, `aten::scaled_dot_product_attention*`),
    the output projection as `aten::to/Convert*` MatMuls."""
    nncf = _import_nncf()
    keep = recipe.get("keep")
    if keep == "attention":
        return nncf.IgnoredScope(patterns=[r".*\.attn[./].*", r"^aten::linear/MatMul.*",
                                           r".*scaled_dot_product_attention.*"],
                                 types=["ScaledDotProductAttention"], validate=False)
    if keep == "last_blocks":
        blocks = "|".join(str(b) for b in range(max(0, layers - recipe["last_blocks"]), layers))
        return nncf.IgnoredScope(patterns=[rf".*\.resblocks\.({blocks})\..*", r"^aten::to/Convert.*",
                                           r".*ln_post.*"], validate=False)
    return None


def quantize_model(model, recipe_name: str, calibration: list, layers: int):
    """openvino.Model (fp32 encoder IR) -> its int8 version by the recipe; calibration: (1, 3, S, S) numpy
    arrays (unused by weight-only compression)."""
    nncf = _import_nncf()
    recipe = check_recipe(recipe_name)
    if recipe["kind"] == "weights":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    if not calibration:
        raise EngineError("int8 quantisation needs calibration images")
    advanced = None
    if "smooth_quant_alpha" in recipe:
        advanced = nncf.AdvancedQuantizationParameters(
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=recipe["smooth_quant_alpha"]))
    return nncf.quantize(model, nncf.Dataset(list(calibration)), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(calibration), ignored_scope=ignored_scope(recipe, layers),
                         advanced_parameters=advanced)


def calibration_arrays(pixels: torch.Tensor) -> list:
    """(B, 3, S, S) pixels -> B arrays of (1, 3, S, S), as the IR takes them."""
    x = pixels.detach().cpu().float().contiguous().numpy()
    return [x[i:i + 1] for i in range(len(x))]


def int8_ir(backbone, recipe_name: str, calibration: list, cache_dir, weights_digest: str | None = None) -> tuple:
    """The recipe's int8 IR for this backbone: quantised from the fp32 IR (engines.cached_ir under
    <cache_dir>/openvino) on the first call and cached under <cache_dir>/openvino-int8/<key>/, keyed by the fp32
    IR, the recipe, the calibration pixels and NNCF's version. cache_dir: Settings.cache_dir. Returns (path of
    encoder.xml, info: {"key", "quantized": bool, "quantize_s"})."""
    ov = engines.require_openvino()
    nncf = _import_nncf()
    recipe = check_recipe(recipe_name)
    root = Path(cache_dir).expanduser()
    xml32, _ = engines.cached_ir(backbone, root, weights_digest)
    h = hashlib.sha256(f"{xml32.parent.name}|{recipe_name}|{json.dumps(recipe, sort_keys=True)}|"
                       f"{nncf.__version__}".encode())
    if recipe["kind"] != "weights":
        for a in calibration:
            h.update(a.tobytes())
    key = h.hexdigest()[:32]
    directory = root / "openvino-int8" / key
    xml = directory / "encoder.xml"
    if xml.is_file() and (directory / "encoder.bin").is_file():
        return xml, {"key": key, "quantized": False, "quantize_s": 0.0}
    t = time.perf_counter()
    layers = backbone_layers(backbone, xml32)
    model = quantize_model(ov.Core().read_model(xml32), recipe_name, calibration, layers)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=directory.parent))
    try:
        ov.save_model(model, tmp / "encoder.xml", compress_to_fp16=False)
        del model
        (tmp / "meta.json").write_text(json.dumps({"recipe": recipe_name, **recipe, "nncf": nncf.__version__,
                                                   "fp32_ir": str(xml32), "calibration_images": len(calibration)},
                                                  indent=1))
        for written in tmp.iterdir():
            files.sync(written)
        try:
            tmp.rename(directory)
        except OSError:
            if not xml.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml, {"key": key, "quantized": True, "quantize_s": time.perf_counter() - t}


def backbone_layers(backbone, xml32: Path | None = None) -> int:
    """The vision tower's block count (from the weights, or from the fp32 IR's node names once released)."""
    if backbone.has_vision:
        return len(backbone.clip.visual.transformer.resblocks)
    import re
    found = {int(m) for m in re.findall(r"resblocks\.(\d+)\.", Path(xml32).read_text(errors="ignore"))}
    return max(found) + 1 if found else 0


class Int8Engine:
    """An int8 recipe of the encoder, compiled for the CPU with the rest in f32; `encode(pixels, "int8")`."""

    name = "openvino"

    def __init__(self, backbone, recipe: str, calibration_pixels: torch.Tensor | None = None, cache_dir=None,
                 weights_digest: str | None = None):
        ov = engines.require_openvino()
        self.recipe, self.config = recipe, backbone.config
        calibration = [] if calibration_pixels is None else calibration_arrays(calibration_pixels)
        if cache_dir is None:
            raise EngineError("an int8 engine needs a cache directory for its IRs (Settings.cache_dir)")
        self.xml, self.info = int8_ir(backbone, recipe, calibration, cache_dir, weights_digest)
        t = time.perf_counter()
        core = ov.Core()
        model = core.read_model(self.xml)
        size = self.config.image_size
        model.reshape([1, 3, size, size])
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "PERFORMANCE_HINT": "LATENCY"})
        self.request, self._lock = self.compiled.create_infer_request(), threading.Lock()
        self.info["load_s"] = time.perf_counter() - t

    @staticmethod
    def check(precision: str):
        if precision != "int8":
            raise EngineError(f"an int8 engine runs int8, not {precision!r}")

    def encode(self, pixels: torch.Tensor, precision: str = "int8") -> Encoding:
        self.check(precision)
        x = pixels.detach().cpu().float().contiguous().numpy()
        outs = []
        with self._lock:
            for i in range(len(x)):
                out = self.request.infer({0: x[i:i + 1]})
                outs.append([torch.from_numpy(out[k].copy()) for k in range(len(engines.OUTPUTS))])
        image_feature, patch_tokens, proj_tokens = (torch.cat(t) for t in zip(*outs))
        return encoding_from_tokens(image_feature, patch_tokens, proj_tokens, self.config.avg_kernels)


def int8_factory(recipe: str, calibration_pixels: torch.Tensor, cache_dir, weights_digest: str | None = None):
    """backbone -> Int8Engine for autotune's EngineSet (the kept recipe's candidate)."""
    return lambda backbone: Int8Engine(backbone, recipe, calibration_pixels, cache_dir, weights_digest)

"""Engines that run the image encoder (`Backbone.encode_tokens`): PyTorch, or OpenVINO on the CPU.

Every engine has `encode(pixels, precision) -> Encoding` for (B, 3, S, S) normalised pixels; the heads, the text
tower and the neighbour averaging stay in PyTorch (they are cheap). The OpenVINO engine converts the encoder once
per backbone file (`openvino.convert_model` on the traced module), saves the IR under
$MRAD_CACHE_DIR/openvino/ (default ~/.cache/mrad) keyed by the backbone file's sha256, the model config and the
OpenVINO version, and compiles it from there; later starts only read and compile (seconds). Once compiled, the
PyTorch vision weights are released (`Backbone.release_vision`): the text tower is all PyTorch keeps; and the
pages of the mapped IR are dropped while it compiles (memory.paging_out): the compiled model keeps its own copy.

    engine = make_engine("openvino", backbone)          # converts or loads the cached IR
    enc = engine.encode(pixels, "fp32")                  # Encoding, as Backbone.encode_image gives
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

from . import files, memory
from .backbone import Backbone, Encoding, encoding_from_tokens
from .errors import MRADError

ENGINES = ("torch", "openvino")
OUTPUTS = ("image_feature", "patch_tokens", "proj_tokens")  # the encoder's outputs, in this order
TORCH_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "bf16-mlp": None}
# precision -> OpenVINO INFERENCE_PRECISION_HINT; the CPU plugin keeps precision-sensitive ops (softmax, norms,
# reductions) in f32 by itself, so "bf16" there is its own mixed recipe
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}  # the measured ones (bench/bench.py)


class EngineError(MRADError):
    """An engine that cannot run here (not installed, wrong device, unsupported precision)."""


def cache_root() -> Path:
    return Path(os.environ.get("MRAD_CACHE_DIR") or Path.home() / ".cache" / "mrad")


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401  (only whether it imports)
    except ImportError:
        return False
    return True


def _import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise EngineError("the OpenVINO engine needs the openvino package (pip install openvino); "
                          "or use --engine torch / MRAD_ENGINE=torch") from e
    return openvino


def check_engine(name: str) -> str:
    if name not in ENGINES:
        raise EngineError(f"engine must be one of {', '.join(ENGINES)}, not {name!r}")
    return name


def default_engine(device: torch.device | None = None, precision: str = "fp32") -> str:
    """$MRAD_ENGINE, else openvino on a CPU where it is installed (it is fp32-exact and faster) for the precisions it
    runs, else torch (CUDA, and PyTorch-only recipes such as bf16-mlp)."""
    env = os.environ.get("MRAD_ENGINE")
    if env:
        return check_engine(env)
    cpu = device is None or torch.device(device).type == "cpu"
    return "openvino" if cpu and precision in OPENVINO_HINTS and openvino_available() else "torch"


class EncoderModule(nn.Module):
    """The traceable encoder: (B, 3, S, S) pixels -> (image_feature (B, E), patch_tokens (B, N, W),
    proj_tokens (B, N, E)), float32; what the OpenVINO engine runs and `mrad export` writes."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels):
        return self.backbone.encode_tokens(pixels)


class TorchEngine:
    """The backbone's own PyTorch forward; precision = autocast dtype, or bf16 MLPs only ("bf16-mlp")."""

    name = "torch"

    def __init__(self, backbone: Backbone, device: torch.device):
        self.backbone, self.device = backbone, device

    def check(self, precision: str):
        if precision not in TORCH_AUTOCAST:
            raise EngineError(f"the PyTorch engine runs {', '.join(TORCH_AUTOCAST)}, not {precision!r}")

    def encode(self, pixels: torch.Tensor, precision: str = "fp32") -> Encoding:
        dtype = TORCH_AUTOCAST[precision]
        mlp_dtype = torch.bfloat16 if precision == "bf16-mlp" else None
        ctx = contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)
        with ctx:
            return self.backbone.encode_image(pixels.to(self.device), mlp_dtype=mlp_dtype)


def backbone_key(backbone: Backbone) -> str:
    """What the converted encoder depends on: the weights (file sha256, or the tensors' bytes when the backbone
    did not come from a file), the model name, the input size and the OpenVINO version."""
    import openvino

    from . import hub

    if backbone.weights_path and Path(backbone.weights_path).is_file():
        weights = hub.file_sha256(backbone.weights_path)
    else:
        h = hashlib.sha256()
        for name, t in sorted(backbone.clip.visual.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        weights = h.hexdigest()
    cfg = backbone.config
    parts = [weights, cfg.model_name if not cfg.model_name.endswith(".json") else
             hashlib.sha256(Path(cfg.model_name).read_bytes()).hexdigest(), str(cfg.image_size), openvino.__version__]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def convert_openvino(backbone: Backbone):
    """Backbone -> openvino.Model of the encoder (dynamic batch; input "pixels", outputs OUTPUTS)."""
    ov = _import_openvino()
    s = backbone.config.image_size
    with torch.no_grad():
        model = ov.convert_model(EncoderModule(backbone).eval(), example_input=torch.zeros(1, 3, s, s),
                                 input=[ov.PartialShape([-1, 3, s, s])])
    model.inputs[0].get_tensor().set_names({"pixels"})
    for out, name in zip(model.outputs, OUTPUTS):
        out.get_tensor().set_names({name})
    return model


def cached_ir(backbone: Backbone, cache_dir: Path | None = None) -> tuple[Path, dict]:
    """The encoder's IR for this backbone: converted and saved on the first call, read from the cache later.
    Returns (path of encoder.xml, info: {"key", "converted": bool, "convert_s"})."""
    ov = _import_openvino()
    key = backbone_key(backbone)
    directory = Path(cache_dir or cache_root() / "openvino") / key
    xml = directory / "encoder.xml"
    if xml.is_file() and (directory / "encoder.bin").is_file():
        return xml, {"key": key, "converted": False, "convert_s": 0.0}
    t = time.perf_counter()
    model = convert_openvino(backbone)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=directory.parent))
    try:  # write next to the cache, then move into place: never a half-written IR
        ov.save_model(model, tmp / "encoder.xml", compress_to_fp16=False)
        del model
        meta = {"weights": backbone.weights_path, "model": backbone.config.model_name,
                "image_size": backbone.config.image_size, "openvino": ov.__version__, "outputs": OUTPUTS}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        for written in tmp.iterdir():  # on disk before the directory is renamed into place
            files.sync(written)
        try:
            tmp.rename(directory)
        except OSError:  # another process won the race: use its copy
            if not xml.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    memory.trim_heap()  # the conversion's working memory (about 3 GB for ViT-L/14) goes back to the system
    return xml, {"key": key, "converted": True, "convert_s": time.perf_counter() - t}


class OpenVINOEngine:
    """The encoder compiled by OpenVINO for the CPU, one compiled model per precision (compiled on first use)."""

    name = "openvino"

    def __init__(self, backbone: Backbone, cache_dir: Path | None = None, release: bool = True,
                 precision: str = "fp32"):
        ov = _import_openvino()
        self.check(precision)  # before converting anything
        self.config = backbone.config
        self.xml, self.info = cached_ir(backbone, cache_dir)
        self.core = ov.Core()
        self._compiled, self._requests, self._lock = {}, {}, threading.Lock()
        t = time.perf_counter()
        self._model = self.core.read_model(self.xml)
        size = self.config.image_size  # one image per inference: a static shape, and no batch-sized working
        self._model.reshape([1, 3, size, size])  # memory (on a CPU larger batches are no faster: bench/bench.py)
        if release:  # the engine reads its weights from the IR: PyTorch's copy is no longer needed
            backbone.release_vision()
        self.compiled(precision)  # only the precision in use: each compiled model holds its own weights
        self.info["load_s"] = time.perf_counter() - t

    @staticmethod
    def check(precision: str):
        if precision not in OPENVINO_HINTS:
            raise EngineError(f"the OpenVINO engine runs {', '.join(OPENVINO_HINTS)}, not {precision!r} "
                              "(bf16-mlp and fp16 are PyTorch recipes: use --engine torch)")

    def compiled(self, precision: str):
        self.check(precision)
        if precision not in self._compiled:
            # the compiled model copies the weights into its own layout and never reads the mapped IR again: its
            # pages are dropped as the compiler goes, so the weights are not resident twice (peak RSS)
            with memory.paging_out(self.xml.with_suffix(".bin")):
                self._compiled[precision] = self.core.compile_model(self._model, "CPU", {
                    "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"})
        return self._compiled[precision]

    def encode(self, pixels: torch.Tensor, precision: str = "fp32") -> Encoding:
        """(B, 3, S, S) pixels -> Encoding, one image per inference."""
        x = pixels.detach().cpu().float().contiguous().numpy()
        outs = []
        with self._lock:  # one infer request per precision (each holds ~1 GB of working memory), used in turn
            request = self._requests.get(precision)
            if request is None:
                request = self._requests[precision] = self.compiled(precision).create_infer_request()
            for i in range(len(x)):
                out = request.infer({0: x[i:i + 1]})
                outs.append([torch.from_numpy(out[k].copy()) for k in range(len(OUTPUTS))])
        image_feature, patch_tokens, proj_tokens = (torch.cat(t) for t in zip(*outs))
        return encoding_from_tokens(image_feature, patch_tokens, proj_tokens, self.config.avg_kernels)


def make_engine(name: str, backbone: Backbone, device: torch.device, precision: str = "fp32", **kw):
    """name ("torch" | "openvino") -> engine for this backbone on this device, ready for `precision` (OpenVINO
    compiles it now; another precision is compiled when first asked for). Raises EngineError.
    The OpenVINO engine is kept on the backbone (`backbone.openvino_engine`) and re-used by later calls."""
    check_engine(name)
    if name == "torch":
        return TorchEngine(backbone, device)
    if device.type != "cpu":
        raise EngineError(f"the OpenVINO engine runs on the CPU, not {device.type} (use --engine torch there)")
    engine = getattr(backbone, "openvino_engine", None)
    if engine is None:  # one per backbone: detectors sharing a backbone share its compiled encoder
        engine = backbone.openvino_engine = OpenVINOEngine(backbone, precision=precision, **kw)
    return engine


FACTS = Path(__file__).with_name("engine_facts.json")  # written by `python bench/bench.py --record`


def cpu_class() -> str:
    """The CPU feature level that decides reduced-precision speed: amx, avx512_bf16, avx512, avx2 or other."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    for name, flag in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return name
    return "other"


def recorded_facts(path: Path | None = None) -> dict:
    """{cpu class: [{"engine", "precision", "three_variants_s", "max_abs_map_diff", "min_map_correlation",
    "within_bounds"}, ...]}, as measured by bench/bench.py on the parity fixture; {} when none are recorded."""
    try:
        return json.loads(Path(path or FACTS).read_text())
    except (OSError, ValueError):
        return {}


def resolve_auto(device, engine: str | None = None, facts: dict | None = None) -> tuple[str, str]:
    """`--precision auto` -> (engine, precision): the fastest pair the benchmark recorded inside the bounds (maps
    within 1e-2 max abs and correlation >= 0.999 of fp32 on the parity fixture) for this CPU class, among the
    engines installed (only `engine`'s precisions when one is given). On CUDA: fp16 autocast. A CPU class without
    recorded facts gets what is exact: OpenVINO fp32 where installed, else PyTorch's measured default."""
    device = torch.device(device)
    if device.type == "cuda":
        return "torch", "fp16"
    usable = {"torch"} | ({"openvino"} if openvino_available() else set())
    if engine is not None:
        usable &= {check_engine(engine)}
        if not usable:
            _import_openvino()  # raises the clear "not installed" error
    rows = (recorded_facts() if facts is None else facts).get(cpu_class(), [])
    inside = [r for r in rows if r.get("within_bounds") and r["engine"] in usable]
    if inside:
        best = min(inside, key=lambda r: r["three_variants_s"])
        return best["engine"], best["precision"]
    if "openvino" in usable:
        return "openvino", "fp32"
    from .detector import fast_precision
    return "torch", fast_precision(device)

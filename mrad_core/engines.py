"""Engines that run the image encoder (`Backbone.encode_tokens`): PyTorch, or OpenVINO on the CPU.

Every engine has `encode(pixels, precision) -> Encoding` for (B, 3, S, S) normalised pixels; the heads, the text
tower and the neighbour averaging stay in PyTorch (they are cheap). The OpenVINO engine converts the encoder once
per backbone file (`openvino.convert_model` on the traced module), saves the IR under <cache_dir>/openvino/
(Settings.cache_dir: $MRAD_CACHE_DIR, default ~/.cache/mrad) keyed by the backbone file's sha256, the model config and the
OpenVINO version, and compiles it from there; later starts only read and compile (seconds). Once compiled, the
PyTorch vision weights are released (`Backbone.release_vision`): the text tower is all PyTorch keeps; and the IR
read for compiling is let go once compiled (the compiled model keeps its own copy; another precision reads it again).

    engine = make_engine("openvino", backbone, device, "fp32", cache_dir=settings.cache_dir)  # converts or loads
    enc = engine.encode(pixels, "fp32")                  # Encoding, as Backbone.encode_image gives
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
from torch import nn

from . import files
from .backbone import Backbone, Encoding, TorchEncoder, encoding_from_tokens
from .errors import MRADError

ENGINES = ("torch", "openvino")
OUTPUTS = ("image_feature", "patch_tokens", "proj_tokens")  # the encoder's outputs, in this order
TorchEngine = TorchEncoder  # the backbone's own PyTorch forward (autocast precisions, or bf16 MLPs only)
# precision -> OpenVINO INFERENCE_PRECISION_HINT; the CPU plugin keeps precision-sensitive ops (softmax, norms,
# reductions) in f32 by itself, so "bf16" there is its own mixed recipe
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}  # the measured ones (bench/bench.py)


class EngineError(MRADError):
    """An engine that cannot run here (not installed, wrong device, unsupported precision)."""


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401  (only whether it imports)
    except ImportError:
        return False
    return True


def require_openvino():
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


class EncoderModule(nn.Module):
    """The traceable encoder: (B, 3, S, S) pixels -> (image_feature (B, E), patch_tokens (B, N, W),
    proj_tokens (B, N, E)), float32; what the OpenVINO engine runs and `mrad export` writes."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels):
        return self.backbone.encode_tokens(pixels)


def engine_runs(name: str, precision: str, device: torch.device):
    """Raise EngineError unless engine `name` runs `precision` on `device` (checked before anything is converted)."""
    check_engine(name)
    if name == "torch":
        TorchEncoder.check(precision)
        return
    if torch.device(device).type != "cpu":
        raise EngineError(f"the OpenVINO engine runs on the CPU, not {torch.device(device).type} (use --engine torch "
                          "there)")
    OpenVINOEngine.check(precision)
    require_openvino()


def backbone_key(backbone: Backbone, weights_digest: str | None = None) -> str:
    """What the converted encoder depends on: the weights (the file's sha256 as the caller computed it with its
    digest cache, or the tensors' bytes when there is none), the model name, the input size and the OpenVINO
    version."""
    import openvino

    if weights_digest:
        weights = weights_digest
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
    ov = require_openvino()
    s = backbone.config.image_size
    with torch.no_grad():
        model = ov.convert_model(EncoderModule(backbone).eval(), example_input=torch.zeros(1, 3, s, s),
                                 input=[ov.PartialShape([-1, 3, s, s])])
    model.inputs[0].get_tensor().set_names({"pixels"})
    for out, name in zip(model.outputs, OUTPUTS):
        out.get_tensor().set_names({name})
    return model


CONVERTING = ("converting the image encoder for this CPU with OpenVINO (once per backbone file; about 1-4 minutes "
              "on 2 cores, later starts read the cached result in seconds)")


def ir_dir(backbone: Backbone, cache_dir, weights_digest: str | None = None) -> Path:
    """Where the encoder's IR for this backbone is (or will be) cached: <cache_dir>/openvino/<key>."""
    return Path(cache_dir).expanduser() / "openvino" / backbone_key(backbone, weights_digest)


def is_converted(directory: Path) -> bool:
    return (directory / "encoder.xml").is_file() and (directory / "encoder.bin").is_file()


def cached_ir(backbone: Backbone, cache_dir, weights_digest: str | None = None, progress=None) -> tuple[Path, dict]:
    """The encoder's IR for this backbone: converted and saved on the first call, read from the cache later.
    progress(text) is told before a conversion starts. Returns (path of encoder.xml, info: {"key", "converted":
    bool, "convert_s"})."""
    ov = require_openvino()
    directory = ir_dir(backbone, cache_dir, weights_digest)
    key = directory.name
    xml = directory / "encoder.xml"
    if is_converted(directory):
        return xml, {"key": key, "converted": False, "convert_s": 0.0}
    if progress is not None:
        progress(CONVERTING)
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
    return xml, {"key": key, "converted": True, "convert_s": time.perf_counter() - t}


class OpenVINOEngine:
    """The encoder compiled by OpenVINO for the CPU, one compiled model per precision (compiled on first use)."""

    name = "openvino"

    def __init__(self, backbone: Backbone, cache_dir, release: bool = True, precision: str = "fp32",
                 weights_digest: str | None = None, progress=None):
        ov = require_openvino()
        self.check(precision)  # before converting anything
        self.config = backbone.config
        self.xml, self.info = cached_ir(backbone, cache_dir, weights_digest, progress)
        self.core = ov.Core()
        self._compiled, self._requests, self._lock = {}, {}, threading.Lock()
        t = time.perf_counter()
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
            # the compiled model holds what it needs (OpenVINO may keep the IR's clean file pages mapped); the model
            # read here is let go afterwards (no madvise: see memory.py)
            model = self.core.read_model(self.xml)
            size = self.config.image_size  # one image per inference: a static shape, and no batch-sized working
            model.reshape([1, 3, size, size])  # memory (on a CPU larger batches are no faster: bench/bench.py)
            self._compiled[precision] = self.core.compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"})
            del model
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


def make_engine(name: str, backbone: Backbone, device: torch.device, precision: str = "fp32", *, cache_dir=None,
                weights_digest: str | None = None, progress=None, **kw):
    """name ("torch" | "openvino") -> engine for this backbone on this device, ready for `precision` (OpenVINO
    converts once into cache_dir/openvino and compiles now; another precision is compiled when first asked for).
    Raises EngineError. The OpenVINO engine is kept on the backbone (`backbone.openvino_engine`) and re-used by
    later calls."""
    device = torch.device(device)
    engine_runs(name, precision, device)
    if name == "torch":
        return TorchEncoder(backbone, device)
    engine = getattr(backbone, "openvino_engine", None)
    if engine is None:  # one per backbone: detectors sharing a backbone share its compiled encoder
        if cache_dir is None:
            raise EngineError("the OpenVINO engine needs a cache directory for its converted encoder (cache_dir; "
                              "Settings.cache_dir, i.e. $MRAD_CACHE_DIR)")
        engine = backbone.openvino_engine = OpenVINOEngine(backbone, cache_dir, precision=precision,
                                                           weights_digest=weights_digest, progress=progress, **kw)
    return engine

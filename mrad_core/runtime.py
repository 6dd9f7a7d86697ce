"""The runtime: which device, engine and precision run the model, decided in one place for every entry point.

    rt = resolve("predict")                       # this entry point's defaults (ENTRY_DEFAULTS), on this machine
    rt = resolve("app", precision="auto")         # the fastest engine and precision inside the accuracy bounds
    encoder = make_encoder(rt, backbone, cache_dir=..., weights_digest=...)   # engines.make_engine
    det = Detector(backbone, heads, image_bank, patch_bank, device=rt.device, precision=rt.precision, engine=encoder)

Every entry point (the library's loader, each CLI command, the app) calls `resolve` with what its user gave
(None = not given); the defaults of each entry point are one row of ENTRY_DEFAULTS. The library and `mrad predict`
are reproducible by default (fp32; OpenVINO fp32 matches the reference within the parity bounds), the app is fast
within the bounds (`auto`). Nothing here reads the environment: `Settings` (settings.py) did, once, at start.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import engines
from .errors import MRADError

PRECISIONS = ("fp32", "bf16", "fp16", "bf16-mlp")  # "auto" is resolved here into one of these
FACTS = Path(__file__).with_name("engine_facts.json")  # written by `python bench/bench.py --record`


@dataclass(frozen=True)
class EntryDefault:
    """What an entry point runs when its user names nothing. engine: "torch", or "exact-fastest" (OpenVINO on a CPU
    where it is installed, for the precisions it runs: fp32-exact within the parity bounds, and faster)."""

    precision: str
    engine: str


ENTRY_DEFAULTS = {
    "library": EntryDefault("fp32", "torch"),  # load_detector / Detector: the reference's own computation
    "predict": EntryDefault("fp32", "exact-fastest"),  # reproducible (parity bounds), and the fastest such engine
    "build-bank": EntryDefault("fp32", "exact-fastest"),
    "monitor": EntryDefault("fp32", "exact-fastest"),  # frame scores equal mrad predict's
    "eval": EntryDefault("fp32", "torch"),  # evaluation figures compared with the app's at 1e-9
    "calibrate": EntryDefault("fp32", "torch"),
    "bank": EntryDefault("fp32", "torch"),
    "train": EntryDefault("fp32", "torch"),  # training needs PyTorch's autograd-capable forward
    "doctor": EntryDefault("fp32", "torch"),
    "app": EntryDefault("auto", "torch"),  # auto: the fastest pair inside the accuracy bounds (engine included);
    # MRAD_PRECISION=fp32 without MRAD_ENGINE: PyTorch, as ever
}


@dataclass(frozen=True)
class Runtime:
    """A decision: the device, the engine that runs the image encoder and its precision, and why."""

    device: torch.device
    engine: str
    precision: str
    why: str = ""

    def describe(self) -> str:
        return f"device {self.device.type.upper()} · engine {self.engine} · precision {self.precision}"


# ---------------------------------------------------------------- the device
def gpu_present(visible_devices: str = "") -> bool:
    """The machine has an NVIDIA GPU and driver (whether or not this torch build can use it). visible_devices:
    NVIDIA_VISIBLE_DEVICES as Settings read it (a container that was given a GPU)."""
    return Path("/proc/driver/nvidia/version").is_file() or visible_devices.strip() not in ("", "void", "none")


def torch_report() -> str:
    """torch, its CUDA build and the driver: one line for the start-up log."""
    driver = ""
    try:
        driver = Path("/proc/driver/nvidia/version").read_text().split("Kernel Module")[1].split()[0]
    except (OSError, IndexError):
        pass
    cuda = torch.version.cuda or "none (CPU build)"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none usable"
    return f"torch {torch.__version__}, CUDA build {cuda}, NVIDIA driver {driver or 'not found'}, GPU {gpu}"


def resolve_device(device=None, visible_devices: str = "") -> torch.device:
    """None/"auto" -> CUDA when usable, else CPU; but never a silent CPU fallback on a machine that has a GPU
    (e.g. a torch built for a newer CUDA than the driver supports): that is an error naming the versions."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if gpu_present(visible_devices):
            raise MRADError(f"this machine has an NVIDIA GPU but torch cannot use it ({torch_report()}); install a "
                            "torch build for the driver's CUDA version (e.g. the CUDA 12 wheels from "
                            "download.pytorch.org/whl/cu126), or choose the CPU explicitly with --device cpu / "
                            "MRAD_DEVICE=cpu")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise MRADError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MRADError(f"--device {device} was asked for, but torch cannot use a CUDA device ({torch_report()}); "
                        "use --device cpu")
    return device


def synchronize(device: torch.device):
    """Wait for queued GPU work, so that a clock read after it measures it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- the precision
def check_precision(precision: str, device: torch.device):
    """A known precision; bf16 needs native support: GPUs before Ampere (T4: compute capability 7.5) only emulate it."""
    if precision not in PRECISIONS:
        raise MRADError(f"precision must be one of {', '.join(PRECISIONS)} or auto, not {precision!r}")
    if device.type == "cuda" and precision in ("bf16", "bf16-mlp") and torch.cuda.get_device_capability(device) < (8, 0):
        raise MRADError(f"precision {precision} needs a GPU with native bf16 (compute capability 8.0+, e.g. A10G, "
                        f"L4, A100); {torch.cuda.get_device_name(device)} has none: use fp16 or auto")


def fast_precision(device: torch.device) -> str:
    """PyTorch's `auto` precision (when the benchmark recorded nothing for this CPU and OpenVINO is not installed):
    the fastest one that keeps the maps within the bounds (1e-2 max abs, correlation >= 0.999 of fp32 on the parity
    fixture; bench/bench.py measures them). On CUDA fp16 autocast. On CPU, full bf16 misses the correlation bound
    (0.9976) while bf16 MLPs alone meet it (0.99998) at ~1.4x the fp32 speed; without native bf16 kernels it would
    only be slower, so such CPUs stay fp32."""
    if device.type == "cuda":
        return "fp16"
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return "bf16-mlp" if supported is not None and supported() else "fp32"


def cpu_flags(cpuinfo: str | None = None) -> frozenset:
    """The CPU's feature flags: the first `flags` (x86) or `Features` (ARM) line of /proc/cpuinfo (or of the text
    given); empty where there is none. Only the flags: a stable key (the MHz and bogomips lines change)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_class(flags=None) -> str:
    """The CPU feature level that decides reduced-precision speed: amx, avx512_bf16, avx512, avx2 or other."""
    flags = cpu_flags() if flags is None else flags
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


def resolve_auto(device, engine: str | None = None, facts: dict | None = None, measured: list | None = None) \
        -> tuple[str, str]:
    """`auto` -> (engine, precision): the fastest pair inside the bounds (maps within 1e-2 max abs and correlation
    >= 0.999 of fp32) among the engines installed (only `engine`'s precisions when one is given): from this machine's
    own measurement (`measured`: rows as recorded facts, e.g. from `mrad doctor`) when there is one, else from the
    benchmark's recorded facts for this CPU class. On CUDA: fp16 autocast. Nothing known: what is exact (OpenVINO
    fp32 where installed, else PyTorch's measured default)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "torch", "fp16"
    usable = {"torch"} | ({"openvino"} if engines.openvino_available() else set())
    if engine is not None:
        usable &= {engines.check_engine(engine)}
        if not usable:
            engines.require_openvino()  # raises the clear "not installed" error
    rows = measured if measured is not None else (recorded_facts() if facts is None else facts).get(cpu_class(), [])
    inside = [r for r in rows if r.get("within_bounds") and r["engine"] in usable]
    if inside:
        best = min(inside, key=lambda r: r["three_variants_s"])
        return best["engine"], best["precision"]
    if "openvino" in usable:
        return "openvino", "fp32"
    return "torch", fast_precision(device)


# ---------------------------------------------------------------- the one decision
def resolve(entry: str = "library", device=None, engine: str | None = None, precision: str | None = None, *,
            visible_devices: str = "", facts: dict | None = None, measured: list | None = None) -> Runtime:
    """The device, engine and precision for `entry` (a key of ENTRY_DEFAULTS): what the user gave (None = not
    given) over that entry point's defaults. Raises MRADError for an unknown or impossible choice."""
    if entry not in ENTRY_DEFAULTS:
        raise MRADError(f"unknown entry point {entry!r}; one of {', '.join(ENTRY_DEFAULTS)}")
    default = ENTRY_DEFAULTS[entry]
    dev = resolve_device(device, visible_devices)
    if engine is not None:
        engines.check_engine(engine)
    precision = precision or default.precision
    if precision == "auto":
        engine, precision = resolve_auto(dev, engine, facts, measured)
        why = f"auto: {'measured on this machine' if measured else 'the fastest within the accuracy bounds'}"
    elif engine is not None:
        why = "as chosen"
    else:
        exact = default.engine == "exact-fastest" and dev.type == "cpu" and precision in engines.OPENVINO_HINTS \
            and engines.openvino_available()
        engine = "openvino" if exact else "torch"
        why = f"{entry}'s default"
    check_precision(precision, dev)
    engines.engine_runs(engine, precision, dev)
    return Runtime(dev, engine, precision, why)


def make_encoder(rt: Runtime, backbone, *, cache_dir, weights_digest: str | None = None, progress=None):
    """The engine object that runs `backbone`'s image encoder for this decision (engines.make_engine)."""
    return engines.make_engine(rt.engine, backbone, rt.device, rt.precision, cache_dir=cache_dir,
                               weights_digest=weights_digest, progress=progress)

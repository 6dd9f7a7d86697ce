"""The runtime: one decision of device, engine and precision per entry point (runtime.ENTRY_DEFAULTS), and the device
logic that matters on GPU machines, checked on the CPU with torch's CUDA queries replaced: no silent CPU fallback on
a GPU machine, bf16 refused on GPUs without it, TF32 off for reproducible fp32 (and restored after), one GPU per
torchrun rank with --device auto."""
import sys

import pytest
import torch

from mrad_core import distributed, engines, runtime
from mrad_core.backbone import exact_fp32
from mrad_core.errors import MRADError

FACTS = {"amx": [
    {"engine": "torch", "precision": "fp32", "three_variants_s": 4.8, "within_bounds": True},
    {"engine": "torch", "precision": "bf16", "three_variants_s": 1.9, "within_bounds": False},
    {"engine": "torch", "precision": "bf16-mlp", "three_variants_s": 3.6, "within_bounds": True},
    {"engine": "openvino", "precision": "fp32", "three_variants_s": 2.4, "within_bounds": True},
    {"engine": "openvino", "precision": "bf16", "three_variants_s": 1.2, "within_bounds": True},
]}


@pytest.mark.parametrize("entry, engine", [
    ("library", "torch"), ("predict", "openvino"), ("build-bank", "openvino"), ("monitor", "openvino"),
    ("eval", "torch"), ("calibrate", "torch"), ("bank", "torch"), ("train", "torch"),
])
def test_each_entry_point_defaults_to_reproducible_fp32(entry, engine):
    rt = runtime.resolve(entry, "cpu")
    assert (rt.device.type, rt.engine, rt.precision) == ("cpu", engine, "fp32")


def test_the_exact_fastest_default_needs_openvino_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    assert runtime.resolve("predict", "cpu").engine == "torch"
    with pytest.raises(MRADError, match="pip install openvino"):
        runtime.resolve("predict", "cpu", engine="openvino")


def test_the_app_is_fast_within_the_bounds(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_class", lambda flags=None: "amx")
    rt = runtime.resolve("app", "cpu", facts=FACTS)
    assert (rt.engine, rt.precision) == ("openvino", "bf16") and rt.why.startswith("auto")
    assert runtime.resolve("app", "cpu", engine="torch", facts=FACTS).precision == "bf16-mlp"  # bf16 out of bounds
    assert runtime.resolve("app", "cpu", precision="fp32").precision == "fp32"  # MRAD_PRECISION=fp32


def test_a_given_engine_and_precision_win_and_impossible_pairs_are_refused():
    rt = runtime.resolve("predict", "cpu", engine="torch", precision="bf16-mlp")
    assert (rt.engine, rt.precision, rt.why) == ("torch", "bf16-mlp", "as chosen")
    assert runtime.resolve("predict", "cpu", precision="bf16-mlp").engine == "torch"  # a PyTorch recipe: its engine
    with pytest.raises(MRADError, match="bf16-mlp and fp16 are PyTorch recipes"):
        runtime.resolve("predict", "cpu", engine="openvino", precision="bf16-mlp")
    with pytest.raises(MRADError, match="engine must be one of torch, openvino"):
        runtime.resolve("predict", "cpu", engine="tensorrt")
    with pytest.raises(MRADError, match="precision must be one of"):
        runtime.resolve("predict", "cpu", precision="int4")
    with pytest.raises(MRADError, match="unknown entry point"):
        runtime.resolve("serve", "cpu")


def test_every_model_command_has_a_row():
    from mrad_core.cli import commands
    loading = {name for name, module in commands().items() if "add_model_args" in vars(module)}
    assert loading <= set(runtime.ENTRY_DEFAULTS), sorted(loading - set(runtime.ENTRY_DEFAULTS))


def test_auto_picks_the_fastest_pair_inside_the_bounds(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_class", lambda flags=None: "amx")
    assert runtime.resolve_auto("cpu", facts=FACTS) == ("openvino", "bf16")
    assert runtime.resolve_auto("cpu", "torch", facts=FACTS) == ("torch", "bf16-mlp")  # bf16 is out of bounds
    assert runtime.resolve_auto("cuda", facts=FACTS) == ("torch", "fp16")
    monkeypatch.setattr(runtime, "cpu_class", lambda flags=None: "avx2")  # nothing recorded: the exact engine
    assert runtime.resolve_auto("cpu", facts=FACTS) == ("openvino", "fp32")
    measured = [{"engine": "openvino", "precision": "bf16", "three_variants_s": 1.0, "within_bounds": True}]
    assert runtime.resolve_auto("cpu", facts=FACTS, measured=measured) == ("openvino", "bf16")  # this machine's
    monkeypatch.setattr(runtime, "cpu_class", lambda flags=None: "amx")
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed: only PyTorch's recorded pairs count
    assert runtime.resolve_auto("cpu", facts=FACTS) == ("torch", "bf16-mlp")
    with pytest.raises(MRADError, match="pip install openvino"):
        runtime.resolve_auto("cpu", "openvino", facts=FACTS)


def test_cpu_class_from_flags():
    assert runtime.cpu_class({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}) == "amx"
    assert runtime.cpu_class({"avx2", "avx512f", "avx512_bf16"}) == "avx512_bf16"
    assert runtime.cpu_class({"avx2", "avx512f"}) == "avx512"
    assert runtime.cpu_class({"avx2"}) == "avx2"
    assert runtime.cpu_class(set()) == "other"


def test_recorded_facts_are_valid():
    """The committed facts (bench/bench.py --record) name real engines and precisions, with their bounds."""
    from mrad_core.backbone import TORCH_AUTOCAST
    facts = runtime.recorded_facts()
    assert facts, "engine_facts.json is missing: run python bench/bench.py --record"
    for rows in facts.values():
        for r in rows:
            assert r["engine"] in engines.ENGINES
            assert r["precision"] in (TORCH_AUTOCAST if r["engine"] == "torch" else engines.OPENVINO_HINTS)
            assert r["within_bounds"] == (r["max_abs_map_diff"] <= 1e-2 and r["min_map_correlation"] >= 0.999)


def test_a_gpu_machine_that_torch_cannot_use_is_an_error_not_a_cpu_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "gpu_present", lambda visible="": True)
    with pytest.raises(MRADError, match="NVIDIA GPU but torch cannot use it.*--device cpu"):
        runtime.resolve_device(None)
    with pytest.raises(MRADError, match="NVIDIA GPU"):
        runtime.resolve_device("auto")
    assert runtime.resolve_device("cpu").type == "cpu"  # asked for explicitly: fine
    monkeypatch.setattr(runtime, "gpu_present", lambda visible="": False)
    assert runtime.resolve_device(None).type == "cpu"  # no GPU at all: the CPU is the device
    with pytest.raises(MRADError, match="cannot use a CUDA device"):
        runtime.resolve_device("cuda")
    assert "torch " + torch.__version__ in runtime.torch_report()


def test_gpu_present_reads_the_containers_visible_devices():
    assert runtime.gpu_present("0") or runtime.gpu_present("all")
    if not runtime.gpu_present(""):  # no driver here: only the variable says so
        assert not runtime.gpu_present("void") and not runtime.gpu_present("none")


def test_bf16_is_refused_on_gpus_without_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # T4
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    cuda = torch.device("cuda")
    for precision in ("bf16", "bf16-mlp"):
        with pytest.raises(MRADError, match="Tesla T4 has none: use fp16 or auto"):
            runtime.check_precision(precision, cuda)
    runtime.check_precision("fp16", cuda)
    runtime.check_precision("bf16", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))  # L4
    runtime.check_precision("bf16", cuda)
    assert runtime.fast_precision(cuda) == "fp16"


def test_fp32_on_cuda_turns_tf32_off_and_restores_it(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    with exact_fp32("cuda"):
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
    with pytest.raises(RuntimeError):
        with exact_fp32("cuda"):
            raise RuntimeError("a failing forward")
    assert torch.backends.cuda.matmul.allow_tf32 is True  # restored on errors too
    with exact_fp32("cpu"):
        assert torch.backends.cuda.matmul.allow_tf32 is True  # the CPU: untouched


def test_the_detector_leaves_auto_to_the_runtime(tiny_files, tiny_config):
    from mrad_core import Backbone, Detector
    with pytest.raises(MRADError, match="runtime.resolve"):
        Detector(Backbone.load(tiny_files["backbone"], tiny_config), precision="auto")
    with pytest.raises(MRADError, match="make_encoder"):
        Detector(Backbone.load(tiny_files["backbone"], tiny_config), engine="openvino")


def test_torchrun_with_device_auto_gives_each_rank_its_own_gpu(monkeypatch):
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("set_device", i))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: calls.update(backend=backend, **kw))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    shard, device = distributed.setup("auto")
    assert device == "cuda:1" and calls["set_device"] == 1 and shard.rank == 1
    assert calls["backend"] == "nccl" and calls["device_id"] == torch.device("cuda:1")

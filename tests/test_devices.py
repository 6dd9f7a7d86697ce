"""Device logic that matters on GPU machines, checked on the CPU with torch's CUDA queries replaced: no silent CPU
fallback on a GPU machine, bf16 refused on GPUs without it, TF32 off for reproducible fp32, one GPU per torchrun
rank with --device auto."""
import pytest
import torch

from mrad_core import detector as D
from mrad_core import distributed
from mrad_core.errors import MRADError


def test_a_gpu_machine_that_torch_cannot_use_is_an_error_not_a_cpu_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "gpu_present", lambda: True)
    with pytest.raises(MRADError, match="NVIDIA GPU but torch cannot use it.*--device cpu"):
        D.resolve_device(None)
    with pytest.raises(MRADError, match="NVIDIA GPU"):
        D.resolve_device("auto")
    assert D.resolve_device("cpu").type == "cpu"  # asked for explicitly: fine
    monkeypatch.setattr(D, "gpu_present", lambda: False)
    assert D.resolve_device(None).type == "cpu"  # no GPU at all: the CPU is the device
    with pytest.raises(MRADError, match="cannot use a CUDA device"):
        D.resolve_device("cuda")
    assert "torch " + torch.__version__ in D.torch_report()


def test_bf16_is_refused_on_gpus_without_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # T4
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    cuda = torch.device("cuda")
    for precision in ("bf16", "bf16-mlp"):
        with pytest.raises(MRADError, match="Tesla T4 has none: use fp16 or auto"):
            D.check_precision(precision, cuda)
    D.check_precision("fp16", cuda)
    D.check_precision("bf16", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))  # L4
    D.check_precision("bf16", cuda)
    assert D.fast_precision(cuda) == "fp16"


def test_fp32_on_cuda_turns_tf32_off(tiny_files, tiny_config, monkeypatch):
    from mrad_core import Backbone
    monkeypatch.setattr(D, "resolve_device", lambda device=None: torch.device("cuda"))
    monkeypatch.setattr(Backbone, "to", lambda self, device: self)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    D.Detector(Backbone.load(tiny_files["backbone"], tiny_config), precision="fp32")
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False


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

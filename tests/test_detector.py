"""Detector: encode once / score many, batches, variant availability and its messages, the score formula."""
import numpy as np
import pytest
import torch

from mrad_core import Detector, MemoryBank, MRADError
from mrad_core.backbone import Backbone
from mrad_core.heads import Heads


@pytest.fixture(scope="module")
def backbone(tiny_files, tiny_config):
    return Backbone.load(tiny_files["backbone"], tiny_config)


@pytest.fixture(scope="module")
def banks(tiny_files):
    return MemoryBank.load(tiny_files["image_bank"], "image"), MemoryBank.load(tiny_files["patch_bank"], "patch")


def test_encode_once_score_many_equals_predict(tiny_detector, tiny_files):
    enc = tiny_detector.encode(tiny_files["images"])
    predicted = tiny_detector.predict(tiny_files["images"])
    for v in ("tf", "ft", "clip"):
        r = tiny_detector.score(enc, v)
        assert r.variant == v and r.map.shape == (2, 518, 518) and r.patch_map.shape == (2, 37, 37)
        np.testing.assert_allclose(r.map, predicted[v].map, atol=1e-6)


def test_batch_equals_singles(tiny_files, backbone, banks):
    det = Detector(backbone, Heads.load(tiny_files["heads"]), *banks, device="cpu", batch_size=2)
    both = det.predict(tiny_files["images"])
    for i, path in enumerate(tiny_files["images"]):
        single = det.predict([path])
        for v in both:
            np.testing.assert_allclose(both[v].map[i], single[v].map[0], atol=1e-5)
            assert abs(both[v].score[i] - single[v].score[0]) < 1e-5
            assert both[v][i].score.shape == (1,)


def test_score_is_top_one_percent_plus_image_prob(tiny_detector, tiny_files):
    r = tiny_detector.predict(tiny_files["images"][:1], ("clip",))["clip"]
    flat = np.sort(r.map[0].ravel())[::-1]
    top = flat[: int(flat.size * 0.01)].mean()
    assert abs(r.score[0] - (0.3 * top + 0.7 * r.image_prob[0])) < 1e-6


def test_variants_follow_what_is_loaded(tiny_files, backbone, banks, tmp_path):
    assert Detector(backbone, device="cpu").variants == ()
    tf_only = Detector(backbone, None, *banks, device="cpu")
    assert tf_only.variants == ("tf",)
    with pytest.raises(MRADError, match="needs trained heads"):
        tf_only.require("ft")
    with pytest.raises(MRADError, match="needs the memory banks"):
        Detector(backbone, device="cpu").require("tf")
    heads = Heads.load(tiny_files["heads"])
    official = heads.official_state()
    torch.save({"image_proj": official["image_proj"], "patch_proj": official["patch_proj"]}, tmp_path / "ft.pth")
    ft_only = Detector(backbone, Heads.load(tmp_path / "ft.pth"), *banks, device="cpu")
    assert ft_only.variants == ("tf", "ft")
    with pytest.raises(MRADError, match="prompt_learner"):
        ft_only.require("clip")
    with pytest.raises(MRADError, match="unknown variant"):
        ft_only.require("xyz")


def test_mismatched_files_are_refused(backbone, banks):
    image_bank, patch_bank = banks
    with pytest.raises(MRADError, match="swapped"):
        Detector(backbone, None, patch_bank, image_bank, device="cpu")
    with pytest.raises(MRADError, match="both memory banks"):
        Detector(backbone, None, image_bank, None, device="cpu")
    with pytest.raises(MRADError, match="precision"):
        Detector(backbone, precision="int4", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
def test_cuda_without_a_gpu_is_a_clear_error(backbone):
    with pytest.raises(MRADError, match="cannot use a CUDA device; use cpu"):
        Detector(backbone, device="cuda")


def test_bf16_runs_and_stays_close(tiny_files, backbone, banks):
    heads = Heads.load(tiny_files["heads"])
    fp32 = Detector(backbone, heads, *banks, device="cpu").predict(tiny_files["images"][:1])
    bf16 = Detector(backbone, heads, *banks, device="cpu", precision="bf16").predict(tiny_files["images"][:1])
    for v in fp32:
        assert bf16[v].map.dtype == np.float32
        assert np.abs(bf16[v].map - fp32[v].map).max() < 0.1


def test_pytorch_auto_follows_native_bf16(monkeypatch):
    """Without recorded facts or OpenVINO, PyTorch's auto is bf16 MLPs where the CPU has native bf16, else fp32
    (checked both ways, whatever this machine is)."""
    from mrad_core import runtime
    for native, expected in ((True, "bf16-mlp"), (False, "fp32")):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert runtime.fast_precision(torch.device("cpu")) == expected
        monkeypatch.setattr(runtime, "cpu_class", lambda flags=None: "unrecorded")
        assert runtime.resolve_auto("cpu", "torch") == ("torch", expected)


def test_bf16_mlp_rounds_only_the_mlps(tiny_files, backbone, banks):
    pixels = torch.randn(1, 3, 518, 518)
    with torch.inference_mode():
        fp32 = backbone.encode_image(pixels)
        mixed = backbone.encode_image(pixels, mlp_dtype=torch.bfloat16)
        full = Detector(backbone, device="cpu", precision="bf16").encode(pixels)
    assert mixed.patch_tokens.dtype == torch.float32
    err_mixed = (mixed.patch_tokens - fp32.patch_tokens).abs().max()
    err_full = (full.patch_tokens - fp32.patch_tokens).abs().max()
    assert 0 < err_mixed < err_full  # reduced precision is really used, and costs less than full bf16
    det = Detector(backbone, Heads.load(tiny_files["heads"]), *banks, device="cpu", precision="bf16-mlp")
    assert det.predict(tiny_files["images"][:1])["clip"].map.dtype == np.float32

"""Full-size parity of the OpenVINO engine (issue 14): fp32 (INFERENCE_PRECISION_HINT=f32) reproduces the reference's
scores (1e-5) and maps (1e-4) on ../shared/parity for every query and variant, as the PyTorch path does."""
import numpy as np
import pytest

pytest.importorskip("openvino")
pytestmark = pytest.mark.parity

QUERIES = ("query_good", "query_bad", "query_bad_small")
VARIANTS = ("tf", "ft", "clip")


@pytest.fixture(scope="module")
def expected(parity_dir):
    return dict(np.load(parity_dir / "expected.npz"))


@pytest.fixture(scope="module")
def ov_outputs(parity_dir, parity_backbone):
    """The OpenVINO fp32 detector (its IR converted once into the MRAD cache, then re-used), every query scored."""
    from mrad_core.loading import load_detector
    det = load_detector(parity_backbone, parity_dir / "heads_official.pth", parity_dir / "cache_model_fixture.pt",
                        parity_dir / "cache_patch_model_fixture.pt", device="cpu", engine="openvino")
    assert det.run_info == {"engine": "openvino", "precision": "fp32", "device": "cpu"}
    assert not det.backbone.has_vision  # the engine holds the vision weights; PyTorch's copy is gone
    out = {}
    for q in QUERIES:
        enc = det.encode([parity_dir / "images" / f"{q}.png"])
        out[q] = (enc, {v: det.score(enc, v) for v in VARIANTS})
    return out


@pytest.mark.parametrize("query", QUERIES)
def test_openvino_fp32_matches_reference(ov_outputs, expected, query):
    for v in VARIANTS:
        r = ov_outputs[query][1][v]
        assert abs(r.score[0] - expected[f"{query}.{v}.score"][0]) <= 1e-5, v
        assert abs(r.image_prob[0] - expected[f"{query}.{v}.cls_prob"][0]) <= 1e-5, v
        assert r.map.shape == (1, 518, 518) and r.map.dtype == np.float32
        assert np.abs(r.map[0] - expected[f"{query}.{v}.map"]).max() <= 1e-4, v


def test_openvino_intermediates_match_reference(ov_outputs, expected):
    q = "query_bad"
    enc, results = ov_outputs[q]
    np.testing.assert_allclose(enc.image_feature.numpy(), expected[f"{q}.cls_feature"], atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(enc.patch_tokens.numpy(), expected[f"{q}.patch_tokens_24"], atol=1e-4)
    np.testing.assert_allclose(enc.proj_tokens.numpy(), expected[f"{q}.patch_proj_tokens_24"], atol=1e-4)
    for v in VARIANTS:
        np.testing.assert_allclose(results[v].extras["seg_probs"], expected[f"{q}.{v}.seg_logits"], atol=1e-5)

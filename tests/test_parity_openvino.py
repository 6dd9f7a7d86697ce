"""Full-size parity of the OpenVINO engine (issue 14): fp32 (INFERENCE_PRECISION_HINT=f32) reproduces the reference's
scores (1e-5) and maps (1e-4) on ../shared/parity for every query and variant, as the PyTorch path does."""
import pytest

import parity_checks

pytest.importorskip("openvino")
pytestmark = pytest.mark.parity



@pytest.fixture(scope="module")
def expected(parity_dir):
    return parity_checks.expected(parity_dir)


@pytest.fixture(scope="module")
def ov_outputs(parity_dir, parity_backbone):
    """The OpenVINO fp32 detector (its IR converted once into the MRAD cache, then re-used), every query scored."""
    from mrad_core.artefacts.resolve import load_detector
    det = load_detector(parity_backbone, parity_dir / "heads_official.pth", parity_dir / "cache_model_fixture.pt",
                        parity_dir / "cache_patch_model_fixture.pt", device="cpu", engine="openvino")
    assert det.run_info == {"engine": "openvino", "precision": "fp32", "device": "cpu"}
    assert not det.backbone.has_vision  # the engine holds the vision weights; PyTorch's copy is gone
    return parity_checks.score_queries(det, parity_dir)


@pytest.mark.parametrize("query", parity_checks.QUERIES)
def test_openvino_fp32_matches_reference(ov_outputs, expected, query):
    for v in parity_checks.VARIANTS:
        parity_checks.assert_matches_reference(ov_outputs[query][1][v], expected, query, v)


def test_openvino_intermediates_match_reference(ov_outputs, expected):
    parity_checks.assert_intermediates(ov_outputs, expected)

"""What the full-size parity tests assert for any engine: every parity query encoded once and scored by every
variant, compared with the reference's outputs (expected.npz) within the public tolerances."""
import numpy as np

from mrad_core.config import VARIANTS

QUERIES = ("query_good", "query_bad", "query_bad_small")


def expected(parity_dir) -> dict:
    return dict(np.load(parity_dir / "expected.npz"))


def score_queries(det, parity_dir) -> dict:
    """{query: (Encoding, {variant: Result})}: one encoding per query, scored by every variant."""
    out = {}
    for q in QUERIES:
        enc = det.encode([parity_dir / "images" / f"{q}.png"])
        out[q] = (enc, {v: det.score(enc, v) for v in VARIANTS})
    return out


def assert_matches_reference(result, expected: dict, query: str, variant: str):
    """Score and image probability within 1e-5, the 518x518 map within 1e-4."""
    assert abs(result.score[0] - expected[f"{query}.{variant}.score"][0]) <= 1e-5, variant
    assert abs(result.image_prob[0] - expected[f"{query}.{variant}.cls_prob"][0]) <= 1e-5, variant
    assert result.map.shape == (1, 518, 518) and result.map.dtype == np.float32
    assert np.abs(result.map[0] - expected[f"{query}.{variant}.map"]).max() <= 1e-4, variant


def assert_intermediates(scored: dict, expected: dict, q: str = "query_bad"):
    """The encoder's outputs, every variant's patch probabilities, MRAD-CLIP's prior and text features."""
    enc, results = scored[q]
    np.testing.assert_allclose(enc.image_feature.numpy(), expected[f"{q}.cls_feature"], atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(enc.patch_tokens.numpy(), expected[f"{q}.patch_tokens_24"], atol=1e-4)
    np.testing.assert_allclose(enc.proj_tokens.numpy(), expected[f"{q}.patch_proj_tokens_24"], atol=1e-4)
    for v in VARIANTS:
        np.testing.assert_allclose(results[v].extras["seg_probs"], expected[f"{q}.{v}.seg_logits"], atol=1e-5)
    np.testing.assert_allclose(results["clip"].extras["prior"], expected[f"{q}.clip.prior"], atol=1e-5)
    np.testing.assert_allclose(results["clip"].extras["text_features"], expected[f"{q}.clip.text_features"],
                               atol=1e-5)

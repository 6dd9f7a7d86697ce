"""Full-size parity: the shipped code path reproduces the reference's outputs on ../shared/parity (issue 3)."""
import json

import numpy as np
import pytest
import torch

from mrad_core import BankBuilder, MemoryBank, load_mask
from mrad_core.cli import main

QUERIES = ("query_good", "query_bad", "query_bad_small")
VARIANTS = ("tf", "ft", "clip")


@pytest.fixture(scope="module")
def expected(parity_dir):
    return dict(np.load(parity_dir / "expected.npz"))


@pytest.fixture(scope="module")
def outputs(parity_detector, parity_dir):
    """One encoding per query, scored by every variant."""
    out = {}
    for q in QUERIES:
        enc = parity_detector.encode([parity_dir / "images" / f"{q}.png"])
        out[q] = (enc, {v: parity_detector.score(enc, v) for v in VARIANTS})
    return out


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_scores_and_maps_match_reference(outputs, expected, query, variant):
    r = outputs[query][1][variant]
    assert abs(r.score[0] - expected[f"{query}.{variant}.score"][0]) <= 1e-5
    assert abs(r.image_prob[0] - expected[f"{query}.{variant}.cls_prob"][0]) <= 1e-5
    assert r.map.shape == (1, 518, 518) and r.map.dtype == np.float32
    assert np.abs(r.map[0] - expected[f"{query}.{variant}.map"]).max() <= 1e-4


def test_intermediates_match_reference(outputs, expected):
    enc, results = outputs["query_bad"]
    q = "query_bad"
    np.testing.assert_allclose(enc.image_feature.numpy(), expected[f"{q}.cls_feature"], atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(enc.patch_tokens.numpy(), expected[f"{q}.patch_tokens_24"], atol=1e-4)
    np.testing.assert_allclose(enc.proj_tokens.numpy(), expected[f"{q}.patch_proj_tokens_24"], atol=1e-4)
    for v in VARIANTS:
        np.testing.assert_allclose(results[v].extras["seg_probs"], expected[f"{q}.{v}.seg_logits"], atol=1e-5)
    np.testing.assert_allclose(results["clip"].extras["prior"], expected[f"{q}.clip.prior"], atol=1e-5)
    np.testing.assert_allclose(results["clip"].extras["text_features"], expected[f"{q}.clip.text_features"],
                               atol=1e-5)


def test_variants_really_differ(outputs):
    """The three variants are three different computations, not one result reported thrice."""
    r = outputs["query_bad"][1]
    assert np.abs(r["tf"].map - r["ft"].map).max() > 1e-2
    assert np.abs(r["ft"].map - r["clip"].map).max() > 1e-2


def _assert_same_entries(ours: MemoryBank, ref: MemoryBank):
    assert ours.keys.shape == ref.keys.shape
    # match every reference entry to its nearest own entry (order may differ)
    dist = torch.cdist(ref.keys, ours.keys)
    nearest = dist.argmin(1)
    assert sorted(nearest.tolist()) == list(range(len(ours))), "entries are not a one-to-one match"
    assert torch.abs(ours.keys[nearest] - ref.keys).max() <= 1e-5
    assert torch.equal(ours.values[nearest], ref.values)


def test_bank_builder_rebuilds_fixture_banks(parity_detector, parity_dir):
    names = [f"bank_good_{i}" for i in range(3)] + [f"bank_bad_{i}" for i in range(3)]
    enc = parity_detector.encode([parity_dir / "images" / f"{n}.png" for n in names])
    masks = torch.stack([load_mask(parity_dir / "masks" / f"{n}.png") for n in names])
    builder = BankBuilder(source="parity fixture")
    builder.add(enc, [int("bad" in n) for n in names], masks, names)
    image_bank, patch_bank = builder.build()
    _assert_same_entries(image_bank, MemoryBank.load(parity_dir / "cache_model_fixture.pt", "image"))
    _assert_same_entries(patch_bank, MemoryBank.load(parity_dir / "cache_patch_model_fixture.pt", "patch"))
    assert image_bank.meta["image_ids"] == names


def test_cli_predict_reproduces_reference(parity_dir, parity_backbone, expected, tmp_path):
    out = tmp_path / "out"
    code = main(["predict", str(parity_dir / "images" / "query_bad.png"), "--variant", "all", "--out", str(out),
                 "--backbone", str(parity_backbone), "--heads", str(parity_dir / "heads_official.pth"),
                 "--image-bank", str(parity_dir / "cache_model_fixture.pt"),
                 "--patch-bank", str(parity_dir / "cache_patch_model_fixture.pt"), "--device", "cpu"])
    assert code == 0
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores) == {"query_bad"} and set(scores["query_bad"]) == set(VARIANTS)
    for v in VARIANTS:
        assert abs(scores["query_bad"][v]["score"] - expected[f"query_bad.{v}.score"][0]) <= 1e-5
        assert abs(scores["query_bad"][v]["image_prob"] - expected[f"query_bad.{v}.cls_prob"][0]) <= 1e-5
        m = np.load(out / f"query_bad.{v}.npy")
        assert m.shape == (518, 518) and m.dtype == np.float32
        assert np.abs(m - expected[f"query_bad.{v}.map"]).max() <= 1e-4
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["run.json", "scores.json"] + [f"query_bad.{v}.npy" for v in VARIANTS])

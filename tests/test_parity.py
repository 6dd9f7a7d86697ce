"""Full-size parity: the shipped code path reproduces the reference's outputs on ../shared/parity (issue 3)."""
import json

import numpy as np
import pytest
import torch

from mrad_core import BankBuilder, MemoryBank, load_mask
from mrad_core.cli import main
from parity_checks import QUERIES, VARIANTS, assert_intermediates, assert_matches_reference, score_queries
from parity_checks import expected as load_expected


@pytest.fixture(scope="module")
def expected(parity_dir):
    return load_expected(parity_dir)


@pytest.fixture(scope="module")
def outputs(parity_detector, parity_dir):
    return score_queries(parity_detector, parity_dir)


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_scores_and_maps_match_reference(outputs, expected, query, variant):
    assert_matches_reference(outputs[query][1][variant], expected, query, variant)


def test_intermediates_match_reference(outputs, expected):
    assert_intermediates(outputs, expected)


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

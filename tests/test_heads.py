"""Heads: official checkpoint layout and our safetensors layout load to the same module; clear errors."""
import pytest
import torch

from mrad_core.heads import Heads, HeadsError, regional_prior, retrieve
from tiny_model import random_heads


def _same(a: Heads, b: Heads):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_official_layout_round_trip(tmp_path):
    heads = random_heads()
    official = heads.official_state()
    official["prompt_learner"]["compound_prompt_projections.0.weight"] = torch.zeros(3, 3)  # unused extras
    torch.save(official, tmp_path / "test_on_x.pth")
    loaded = Heads.load(tmp_path / "test_on_x.pth")
    assert loaded.has_clip and _same(loaded, heads)


def test_safetensors_round_trip_with_metadata(tmp_path):
    heads = random_heads()
    heads.save(tmp_path / "h.safetensors", training_source="visa")
    loaded = Heads.load(tmp_path / "h.safetensors")
    assert _same(loaded, heads)
    assert loaded.meta["training_source"] == "visa" and loaded.meta["variants"] == "ft,clip"


def test_ft_only_checkpoint(tmp_path):
    heads = random_heads()
    official = heads.official_state()
    torch.save({"image_proj": official["image_proj"], "patch_proj": official["patch_proj"]}, tmp_path / "ft.pth")
    loaded = Heads.load(tmp_path / "ft.pth")
    assert not loaded.has_clip


def test_errors_name_the_problem(tmp_path):
    torch.save({"prompt_learner": {}}, tmp_path / "partial.pth")
    with pytest.raises(HeadsError, match="lack image_proj, patch_proj"):
        Heads.load(tmp_path / "partial.pth")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(HeadsError, match="not an MRAD checkpoint"):
        Heads.load(tmp_path / "other.pth")
    official = random_heads().official_state()
    official["image_proj"]["mlp2.weight"] = torch.zeros(5, 5)
    torch.save(official, tmp_path / "shape.pth")
    with pytest.raises(HeadsError, match="do not match"):
        Heads.load(tmp_path / "shape.pth")
    with pytest.raises(HeadsError, match="no such file"):
        Heads.load(tmp_path / "none.pth")


def test_retrieve_is_a_softmax_weighted_vote():
    keys = torch.eye(3)
    values = torch.tensor([[1.0, 0], [0, 1], [0, 1]])
    p = retrieve(torch.tensor([[10.0, 0, 0]]), keys, values)
    assert torch.allclose(p.sum(-1), torch.ones(1))
    e = torch.exp(torch.tensor([10.0, 0, 0]))
    assert torch.allclose(p[0, 1], (e[1] + e[2]) / e.sum())


def test_regional_prior_means_and_empty_regions():
    tokens = torch.arange(12, dtype=torch.float32).view(1, 4, 3)
    prior = regional_prior(tokens, torch.tensor([[True, False, False, True]]))
    assert torch.allclose(prior[0, 0], tokens[0, 1:3].mean(0))
    assert torch.allclose(prior[0, 1], tokens[0, [0, 3]].mean(0))
    empty = regional_prior(tokens, torch.zeros(1, 4, dtype=torch.bool))
    assert torch.equal(empty[0, 1], torch.zeros(3))


def test_prompts_layout():
    heads = random_heads()
    pl = heads.prompt_learner
    bn, ba = torch.randn(2, 32), torch.randn(2, 32)
    prompts, eot = pl.prompts(bn, ba)
    assert prompts.shape == (4, 77, 32)
    assert torch.allclose(prompts[2, 1:13], pl.ctx_pos[0, 0] + bn[1])  # image 1, normal prompt
    assert torch.allclose(prompts[3, 1:13], pl.ctx_neg[0, 0] + ba[1])  # image 1, anomalous prompt
    assert torch.equal(prompts[1, 0], pl.token_prefix_neg[0, 0, 0])
    assert eot.tolist() == [15, 16, 15, 16]

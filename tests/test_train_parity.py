"""Training parity (issue 7): one FT step and one CLIP step on the six bank images as one batch reproduce the
reference's losses, intermediates and gradients (../shared/parity/expected_train.npz)."""
import numpy as np
import pytest
import torch

from mrad_core import Backbone, MemoryBank, load_image, load_mask, preprocess
from mrad_core.heads import Heads
from mrad_core.losses import Features, clip_losses, ft_losses, ft_probs

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4  # relative norm of the difference
GRAD_ATOL = 1e-6  # where the expected gradient is practically zero (key-side biases that softmax ignores)


@pytest.fixture(scope="module")
def expected(parity_dir):
    return dict(np.load(parity_dir / "expected_train.npz"))


@pytest.fixture(scope="module")
def setup(parity_dir, parity_backbone, expected):
    backbone = Backbone.load(parity_backbone)
    names = [str(n) for n in expected["batch_order"]]
    pixels = torch.stack([preprocess(load_image(parity_dir / "images" / f"{n}.png").image) for n in names])
    gt = torch.stack([load_mask(parity_dir / "masks" / f"{n}.png") for n in names])
    labels = torch.tensor([int(n.startswith("bank_bad")) for n in names])
    with torch.no_grad():
        feats = Features.from_encoding(backbone.encode_image(pixels))
    banks = (MemoryBank.load(parity_dir / "cache_model_fixture.pt", "image"),
             MemoryBank.load(parity_dir / "cache_patch_model_fixture.pt", "patch"))
    return backbone, feats, gt, labels, banks


def _heads(parity_dir):
    return Heads.load(parity_dir / "heads_official.pth")


def _check_grads(heads, expected, stage):
    keys = sorted(k for k in expected if k.startswith(f"{stage}.grad."))
    assert keys, f"no {stage} gradients in the expected file"
    params = dict(heads.named_parameters())
    for key in keys:
        name = key[len(f"{stage}.grad."):]
        want = expected[key].astype(np.float64)
        got = params[name].grad
        assert got is not None, f"{name}: no gradient"
        got = got.double().numpy()
        assert got.shape == want.shape, name
        diff, ref = np.linalg.norm(got - want), np.linalg.norm(want)
        if ref < GRAD_ATOL * 10:
            assert np.abs(got - want).max() <= GRAD_ATOL, f"{name}: |diff| {np.abs(got - want).max():.2e}"
        else:
            assert diff <= GRAD_RTOL * ref, f"{name}: relative norm error {diff / ref:.2e}"


def test_ft_step_matches_reference(setup, expected, parity_dir):
    backbone, feats, gt, labels, (image_bank, patch_bank) = setup
    heads = _heads(parity_dir)
    out = ft_losses(heads, feats, gt, labels, image_bank, patch_bank)
    assert out["seg_loss"].item() == pytest.approx(float(expected["ft.seg_loss"]), rel=LOSS_RTOL)
    assert out["image_loss"].item() == pytest.approx(float(expected["ft.image_loss"]), rel=LOSS_RTOL)
    np.testing.assert_allclose(out["seg_probs"].detach().numpy(), expected["ft.seg_logits"], atol=1e-5)
    np.testing.assert_allclose(out["image_probs"].detach().numpy(), expected["ft.image_logits"], atol=1e-5)
    out["loss"].backward()
    _check_grads(heads, expected, "ft")
    # dropout is part of the computation: without it the intermediates are far off
    _, undropped = ft_probs(heads, feats, image_bank, patch_bank, dropout=False)
    assert np.abs(undropped.detach().numpy() - expected["ft.seg_logits"]).max() > 1e-2


def test_clip_step_matches_reference(setup, expected, parity_dir):
    backbone, feats, gt, labels, (image_bank, patch_bank) = setup
    heads = _heads(parity_dir)
    heads.image_proj.requires_grad_(False)
    heads.patch_proj.requires_grad_(False)
    with torch.no_grad():
        _, seg = ft_probs(heads, feats, image_bank, patch_bank)
    out = clip_losses(heads, backbone, feats, gt, seg)
    assert out["clip_loss"].item() == pytest.approx(float(expected["clip.clip_loss"]), rel=LOSS_RTOL)
    np.testing.assert_allclose(out["prior"].numpy(), expected["clip.prior"], atol=1e-5)
    out["loss"].backward()
    _check_grads(heads, expected, "clip")
    assert heads.patch_proj.fc[0].weight.grad is None


def test_init_heads_reproduces_the_reference_prompt_buffers(setup, parity_dir):
    """The fixture's prompt buffers were made by the reference's prompt learner from this backbone."""
    from mrad_core.train import init_heads

    torch.manual_seed(111)
    fresh = init_heads(setup[0])
    ref = _heads(parity_dir)
    for name, buf in ref.prompt_learner.named_buffers():
        assert torch.equal(getattr(fresh.prompt_learner, name), buf), name
    assert len(fresh.prompt_learner.compound_prompts_text) == len(ref.prompt_learner.compound_prompts_text) == 8
    ctx = torch.cat([fresh.prompt_learner.ctx_pos.flatten(), fresh.prompt_learner.ctx_neg.flatten()])
    assert ctx.std().item() == pytest.approx(0.02, rel=0.05)

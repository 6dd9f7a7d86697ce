"""Loss functions and similarity dropout against hand-computed values and a literal transcription of the
reference's formulas."""
import math

import numpy as np
import pytest
import torch

from mrad_core.losses import dice_loss, dropout_mask, focal_loss, masked_retrieve
from mrad_core.maps import upsample_probs


def _reference_focal(probs, target, gamma=2.0, smooth=1e-5):
    """AnomalyCLIP's FocalLoss, written out: flatten to (pixels, C), clamp one-hot, pt = sum + smooth."""
    c = probs.shape[1]
    flat = probs.permute(0, 2, 3, 1).reshape(-1, c).double()
    idx = target.reshape(-1).long()
    onehot = torch.zeros(len(idx), c, dtype=torch.float64).scatter_(1, idx[:, None], 1)
    onehot = onehot.clamp(smooth / (c - 1), 1 - smooth)
    pt = (onehot * flat).sum(1) + smooth
    return float((-(1 - pt) ** gamma * pt.log()).mean())


def test_focal_hand_computed():
    # one image, 1x2 pixels: p(anomalous) = 0.9 on an anomalous pixel, 0.2 on a normal one
    probs = torch.tensor([[0.1, 0.8], [0.9, 0.2]]).view(1, 2, 1, 2)
    target = torch.tensor([[1.0, 0.0]]).view(1, 1, 2)
    pts = [0.1 * 1e-5 + 0.9 * (1 - 1e-5) + 1e-5, 0.8 * (1 - 1e-5) + 0.2 * 1e-5 + 1e-5]
    want = np.mean([-(1 - p) ** 2 * math.log(p) for p in pts])
    assert focal_loss(probs, target).item() == pytest.approx(want, rel=1e-6)


def test_focal_matches_reference_transcription():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 2, 7, 5, generator=g) * 3, dim=1)
    target = (torch.rand(3, 7, 5, generator=g) > 0.6).float()
    assert focal_loss(probs, target).item() == pytest.approx(_reference_focal(probs, target), rel=1e-6)
    # a perfect prediction costs (almost) nothing, a wrong one a lot
    perfect = torch.stack([1 - target, target], dim=1)
    assert focal_loss(perfect, target).item() < 1e-8
    assert focal_loss(1 - perfect, target).item() > 5


def test_dice_hand_computed():
    p = torch.tensor([[[0.5, 0.5], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    g = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    d0 = (2 * 1.5 + 1) / (2.0 + 2.0 + 1)  # image 0: sum pg = 1.5, sum p = 2, sum g = 2
    d1 = (0 + 1) / (0 + 0 + 1)  # image 1: empty prediction of an empty mask is perfect
    assert dice_loss(p, g).item() == pytest.approx(1 - (d0 + d1) / 2, rel=1e-6)


def test_dropout_mask_is_the_linear_quantile():
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(4, 9, 11, generator=g)
    for q in (0.8, 0.95):
        mask = dropout_mask(raw, q)
        s = raw.sort(-1).values
        pos = q * (raw.shape[-1] - 1)
        lo = int(math.floor(pos))
        th = s[..., lo] + (pos - lo) * (s[..., lo + 1] - s[..., lo])
        assert torch.equal(mask, raw > th[..., None])
        # the largest similarity is always dropped, at least one entry always stays
        assert mask.gather(-1, raw.argmax(-1, keepdim=True)).all()
        assert (~mask).sum(-1).min() >= 1
    # with 9 entries, the 0.8 quantile drops exactly the top two of every row (as with the fixture's patch bank)
    assert torch.all(dropout_mask(raw[..., :9], 0.8).sum(-1) == 2)


def test_dropout_mask_chunks_large_inputs(monkeypatch):
    import mrad_core.losses as losses
    raw = torch.randn(50, 13)
    whole = dropout_mask(raw, 0.8)
    monkeypatch.setattr(losses, "_QUANTILE_CHUNK", 40)  # 3 rows per chunk
    assert torch.equal(losses.dropout_mask(raw, 0.8), whole)


def test_masked_retrieve():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mask = torch.tensor([[True, False, False]])
    out = masked_retrieve(logits, values, mask)
    assert torch.allclose(out, torch.tensor([[0.0, 1.0]]))  # the masked entry has no weight at all
    full = masked_retrieve(logits, values, None)
    assert full[0, 0] == pytest.approx(math.exp(2) / (math.exp(2) + math.exp(1) + 1))


def test_upsample_probs_layout():
    probs = torch.zeros(1, 4, 2)
    probs[0, 1, 1] = 1.0  # patch (row 0, col 1), channel 1
    up = upsample_probs(probs, 8)
    assert up.shape == (1, 2, 8, 8) and up[0, 0].abs().max() == 0
    assert up[0, 1, :4, 4:].mean() > up[0, 1, 4:, :4].mean()  # top right, not bottom left

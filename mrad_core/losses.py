"""MRAD's training objective: focal and dice losses, similarity dropout, and the differentiable FT / CLIP stage
losses (the Detector scores under inference_mode; these re-run the same heads with autograd and dropout).

Shapes: B images, N = 1369 patches, S = 518 pixels, E = 768 embedding, W = 1024 vision width, M bank entries.

    FT stage    seg_loss   = focal(seg_map, gt) + dice(seg_map[:, 1], gt)       seg_map (B, 2, S, S) retrieval probs
                image_loss = cross_entropy(image_probs / 0.07, labels)   probabilities, not logits (as the reference)
    CLIP stage  clip_loss  = focal(sim_map, gt) + dice(sim_map[:, 1], gt) + dice(sim_map[:, 0], 1 - gt)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .heads import Heads, clip_patch_probs, regional_prior
from .maps import upsample_probs

IMAGE_QUANTILE = 0.95  # similarity dropout: image logits above this per-query quantile of the raw similarity -> -inf
PATCH_QUANTILE = 0.8  # ... and patch logits above this one
CE_TEMPERATURE = 0.07  # image_loss = cross_entropy(image_probs / 0.07, labels)
_QUANTILE_CHUNK = 1 << 24  # torch.quantile refuses (older versions) or copies huge inputs: go row-chunk by chunk


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on probabilities (AnomalyCLIP's FocalLoss, alpha = 1): probs (B, C, H, W), target (B, H, W) class
    indices. The one-hot target is clamped to [smooth / (C - 1), 1 - smooth], pt = sum(onehot * p) + smooth,
    loss = mean over pixels of -(1 - pt)^gamma * log(pt)."""
    c = probs.shape[1]
    onehot = F.one_hot(target.long(), c).movedim(-1, 1).to(probs.dtype)
    onehot = onehot.clamp(smooth / (c - 1), 1.0 - smooth)
    pt = (onehot * probs).sum(1) + smooth
    return (-torch.pow(1 - pt, gamma) * pt.log()).mean()


def dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Binary dice loss: probs, target (B, H, W) -> 1 - mean_b (2 sum(p g) + 1) / (sum p + sum g + 1)."""
    p, g = probs.flatten(1), target.flatten(1).to(probs.dtype)
    return 1 - ((2 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)).mean()


def dropout_mask(raw: torch.Tensor, q: float) -> torch.Tensor:
    """Similarity dropout mask: raw (..., M) unprojected similarities -> bool (..., M), True where a value exceeds
    its row's q-quantile (torch.quantile, linear interpolation). Depends on nothing random."""
    rows = raw.reshape(-1, raw.shape[-1])
    step = max(1, _QUANTILE_CHUNK // rows.shape[1])
    th = torch.cat([torch.quantile(rows[i:i + step], q, dim=-1, keepdim=True) for i in range(0, len(rows), step)])
    return (rows > th).view(raw.shape)


def masked_retrieve(logits: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(logits with masked entries at -inf) @ values: logits (..., M), values (M, 2) -> (..., 2)."""
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return torch.softmax(logits, dim=-1) @ values


@dataclass
class Features:
    """What training reads of one batch's encoding (the backbone is frozen, so these can be computed once)."""

    image: torch.Tensor  # (B, E)     normalised image features
    patches: torch.Tensor  # (B, N, W)  neighbour-averaged, normalised patch tokens
    tokens: torch.Tensor  # (B, N, E)   neighbour-averaged, normalised projected patch tokens

    @classmethod
    def from_encoding(cls, enc) -> "Features":
        return cls(F.normalize(enc.image_feature, dim=-1), F.normalize(enc.patch_avg, dim=-1),
                   F.normalize(enc.proj_avg, dim=-1))

    def to(self, device):
        return Features(self.image.to(device), self.patches.to(device), self.tokens.to(device))


def ft_probs(heads: Heads, feats: Features, image_bank, patch_bank, dropout: bool = True):
    """FT retrieval with autograd -> (image_probs (B, 2), seg_probs (B, N, 2)). With dropout, the logits whose raw
    (unprojected) similarity is above the per-query 0.95 (image) / 0.8 (patch) quantile are dropped."""
    ip, pp = heads.image_proj, heads.patch_proj
    logits = ip.mlp1(feats.image) @ ip.mlp2(image_bank.keys).T
    mask = dropout_mask(feats.image @ image_bank.keys.T, IMAGE_QUANTILE) if dropout else None
    image_probs = masked_retrieve(logits, image_bank.values, mask)
    logits = pp.fc[0](feats.patches) @ pp.fc[1](patch_bank.keys).T
    mask = dropout_mask(feats.patches @ patch_bank.keys.T, PATCH_QUANTILE) if dropout else None
    return image_probs, masked_retrieve(logits, patch_bank.values, mask)


def segmentation_loss(probs_map: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """FT stage: focal(map, gt) + dice(map[:, 1], gt). probs_map (B, 2, S, S), gt (B, S, S) 0/1."""
    return focal_loss(probs_map, gt) + dice_loss(probs_map[:, 1], gt)


def ft_losses(heads: Heads, feats: Features, gt: torch.Tensor, labels: torch.Tensor, image_bank, patch_bank,
              dropout: bool = True) -> dict:
    """FT stage of one batch: gt (B, S, S) 0/1 masks, labels (B,) 0/1 ->
    {seg_loss, image_loss, loss = their sum, seg_probs (B, N, 2), image_probs (B, 2)}."""
    image_probs, seg_probs = ft_probs(heads, feats, image_bank, patch_bank, dropout)
    seg_loss = segmentation_loss(upsample_probs(seg_probs, gt.shape[-1]), gt)
    image_loss = F.cross_entropy(image_probs / CE_TEMPERATURE, labels.long())
    return dict(seg_loss=seg_loss, image_loss=image_loss, loss=seg_loss + image_loss, seg_probs=seg_probs,
                image_probs=image_probs)


def clip_losses(heads: Heads, backbone, feats: Features, gt: torch.Tensor, seg_probs: torch.Tensor,
                region_threshold: float = 0.5, text_temperature: float = 0.07) -> dict:
    """CLIP stage of one batch. seg_probs (B, N, 2): the (dropout-masked) FT patch probabilities that split each
    image into normal / anomalous regions -> {clip_loss, loss, prior (B, 2, E), probs (B, N, 2)}."""
    prior = regional_prior(feats.tokens, seg_probs[..., 1].detach() > region_threshold)
    probs, _ = clip_patch_probs(heads, backbone, feats.tokens, prior, text_temperature)
    sim_map = upsample_probs(probs, gt.shape[-1])
    loss = focal_loss(sim_map, gt) + dice_loss(sim_map[:, 1], gt) + dice_loss(sim_map[:, 0], 1 - gt)
    return dict(clip_loss=loss, loss=loss, prior=prior, probs=probs)

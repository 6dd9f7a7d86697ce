"""From patch probabilities to maps and scores: upsampling, Gaussian smoothing, score fusion."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter


def upsample_probs(probs: torch.Tensor, size: int) -> torch.Tensor:
    """(B, N, C) per-patch values on a square grid -> (B, C, size, size), bilinear, align_corners=False."""
    b, n, c = probs.shape
    g = int(round(n ** 0.5))
    grid = probs.reshape(b, g, g, c).permute(0, 3, 1, 2)
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)


def upsample(patch_map: torch.Tensor, size: int) -> torch.Tensor:
    """(B, N) patch values on a square grid -> (B, size, size)."""
    return upsample_probs(patch_map[..., None], size)[:, 0]


def smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """(B, H, W) -> Gaussian-filtered per image (scipy defaults: reflect, truncate 4)."""
    return np.stack([gaussian_filter(m, sigma=sigma) for m in maps]).astype(np.float32)


def top_mean(maps: np.ndarray, fraction: float) -> np.ndarray:
    """(B, H, W) -> (B,) mean of the largest `fraction` of each map's pixels."""
    flat = maps.reshape(maps.shape[0], -1)
    k = max(1, int(flat.shape[1] * fraction))
    return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


def image_score(map_top: np.ndarray, image_prob: np.ndarray, image_weight: float) -> np.ndarray:
    """score = (1 - w) * map_top + w * image probability; map_top = top_mean(map, fraction), shapes (B,)."""
    return ((1 - image_weight) * map_top + image_weight * image_prob).astype(np.float32)

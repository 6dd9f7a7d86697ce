"""Rendering anomaly maps for people: normalisation, colormaps, overlays, thresholded masks, contours, area %.

Everything here works on numpy arrays and is cheap (OpenCV and lookup tables, no model): the app re-renders
from cached maps on every slider move. Shapes: `base` (H, W, 3) uint8 RGB, `anomaly_map` (H, W) float
(float16 or float32), results (H, W, 3) uint8 RGB.

Normalisation modes (what a colour means):
  raw        the map as MRAD computes it: a probability of "anomalous" in [0, 1]
             (0.5 = as close to the bank's anomalous memories as to its normal ones)
  minmax     stretched per image to [0, 1]: shows where, hides how much (every image gets a hot spot)
  calibrated fixed per variant from normal reference images: 0 = a typical normal pixel, 0.5 = the highest
             value any normal reference reached, 1 = twice that far (so > 0.5 is beyond every normal reference);
             without reference levels it falls back to raw
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

NORMALISATIONS = ("raw", "minmax", "calibrated")
COLORMAPS = {"turbo": cv2.COLORMAP_TURBO, "jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO,
             "viridis": cv2.COLORMAP_VIRIDIS, "magma": cv2.COLORMAP_MAGMA, "hot": cv2.COLORMAP_HOT,
             "gray": None}
_LUTS: dict = {}
MASK_COLOUR = (255, 40, 40)  # thresholded region in binary-mask view
CONTOUR_COLOUR = (255, 255, 255)


@dataclass(frozen=True)
class Calibration:
    """Per-variant reference levels from normal images: `low` = median normal pixel, `high` = max normal pixel."""

    low: float
    high: float

    @classmethod
    def from_maps(cls, maps: np.ndarray) -> "Calibration":
        """(B, H, W) maps of normal reference images -> Calibration."""
        maps = np.asarray(maps, dtype=np.float32)
        low, high = float(np.median(maps)), float(maps.max())
        return cls(low, max(high, low + 1e-6))


def lut(name: str) -> np.ndarray:
    """(256, 3) uint8 RGB lookup table of a colormap name (see COLORMAPS)."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose from {', '.join(COLORMAPS)}")
    if name not in _LUTS:
        ramp = np.arange(256, dtype=np.uint8)[:, None]
        code = COLORMAPS[name]
        table = np.repeat(ramp, 3, axis=1) if code is None else cv2.applyColorMap(ramp, code)[:, 0, ::-1]
        _LUTS[name] = np.ascontiguousarray(table)
    return _LUTS[name]


def normalise(anomaly_map: np.ndarray, mode: str = "raw", calibration: Calibration | None = None) -> np.ndarray:
    """(H, W) map -> (H, W) float32 in [0, 1] according to `mode` (see module docstring)."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    if mode == "raw":
        out = m
    elif mode == "minmax":
        lo, hi = float(m.min()), float(m.max())
        out = (m - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(m)
    elif mode == "calibrated":
        if calibration is None:  # no reference levels (calibration disabled or unavailable): raw
            return np.clip(m, 0.0, 1.0)
        out = (m - calibration.low) * (0.5 / (calibration.high - calibration.low))
    else:
        raise ValueError(f"unknown normalisation {mode!r}; choose from {', '.join(NORMALISATIONS)}")
    return np.clip(out, 0.0, 1.0)


def colorize(norm: np.ndarray, colormap: str = "turbo") -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 RGB through the colormap's lookup table."""
    idx = cv2.convertScaleAbs(np.clip(np.asarray(norm, dtype=np.float32), 0, 1), alpha=255)  # rounds, saturates
    return cv2.LUT(cv2.merge([idx, idx, idx]), lut(colormap).reshape(256, 1, 3))


def blend(base: np.ndarray, layer: np.ndarray, opacity: float) -> np.ndarray:
    """Alpha-blend two (H, W, 3) uint8 images: (1 - opacity) * base + opacity * layer."""
    a = float(np.clip(opacity, 0.0, 1.0))
    return cv2.addWeighted(base, 1.0 - a, layer, a, 0.0)


def threshold_mask(norm: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) normalised map -> (H, W) bool, True where the value reaches the pixel threshold."""
    return np.asarray(norm) >= threshold


def area_percent(mask: np.ndarray) -> float:
    """Percentage of True pixels of a (H, W) bool mask."""
    return 100.0 * float(np.count_nonzero(mask)) / max(1, mask.size)


def find_contours(mask: np.ndarray) -> list:
    """Outer contours of a (H, W) bool mask (OpenCV point arrays)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return list(contours)


def draw_contours(image: np.ndarray, mask: np.ndarray, colour=CONTOUR_COLOUR, thickness: int | None = None):
    """Draw the outlines of `mask` on a copy of `image` (thickness scales with the image size)."""
    thickness = thickness or max(1, round(max(image.shape[:2]) / 260))
    out = image.copy()
    cv2.drawContours(out, find_contours(mask), -1, colour, thickness, lineType=cv2.LINE_AA)
    return out


def mask_view(base: np.ndarray, mask: np.ndarray, opacity: float, colour=MASK_COLOUR) -> np.ndarray:
    """Binary-mask view: pixels in `mask` tinted with `colour` at `opacity`, the rest left as they are."""
    out = base.copy()
    if mask.any():
        cv2.copyTo(blend(base, np.full_like(base, colour), opacity), mask.astype(np.uint8), out)
    return out


@dataclass(frozen=True)
class View:
    """Display settings of the live controls."""

    pixel_threshold: float = 0.5
    opacity: float = 0.5
    colormap: str = "turbo"
    normalisation: str = "raw"
    contours: bool = True
    binary: bool = False


def render(base: np.ndarray, anomaly_map: np.ndarray, view: View = View(),
           calibration: Calibration | None = None) -> tuple:
    """One variant's view: (H, W, 3) uint8 RGB image and defect area % at the pixel threshold.
    `base` (H, W, 3) uint8 and `anomaly_map` (H, W) must have the same size."""
    if base.shape[:2] != anomaly_map.shape:
        raise ValueError(f"image {base.shape[:2]} and map {anomaly_map.shape} differ in size")
    norm = normalise(anomaly_map, view.normalisation, calibration)
    mask = threshold_mask(norm, view.pixel_threshold)
    if view.binary:
        out = mask_view(base, mask, view.opacity)
    else:
        out = blend(base, colorize(norm, view.colormap), view.opacity)
    if view.contours and mask.any():
        out = draw_contours(out, mask)
    return out, area_percent(mask)


MARK_COLOUR, MARK_OUTLINE = (255, 0, 255), (0, 0, 0)  # magenta on black: seen on every colormap and image


def mark_point(image: np.ndarray, x: int, y: int) -> np.ndarray:
    """A copy of (H, W, 3) uint8 `image` with the point (x, y) marked: a ring and a cross (magenta outlined in
    black), sized to the image. A point outside the image is clipped onto its border."""
    h, w = image.shape[:2]
    x, y = int(np.clip(x, 0, w - 1)), int(np.clip(y, 0, h - 1))
    radius = max(6, round(max(h, w) / 40))
    thin = max(2, round(max(h, w) / 250))
    out = np.ascontiguousarray(image).copy()
    for colour, width in ((MARK_OUTLINE, thin + 2), (MARK_COLOUR, thin)):
        cv2.circle(out, (x, y), radius, colour, width, lineType=cv2.LINE_AA)
        for dx, dy in ((1, 0), (0, 1)):  # the cross's arms, from the ring outwards to twice its radius
            for sign in (-1, 1):
                a = (x + sign * dx * radius, y + sign * dy * radius)
                b = (x + sign * dx * 2 * radius, y + sign * dy * 2 * radius)
                cv2.line(out, a, b, colour, width, lineType=cv2.LINE_AA)
    return out


def fit(image: np.ndarray, max_side: int = 518) -> np.ndarray:
    """(H, W, 3) uint8 -> resized (area interpolation) so that the longer side is at most `max_side`."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(image)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


MAX_ASPECT = 3.0  # a display image longer than this (either way) is folded into strips by `fold`
FOLD_GAP, FOLD_FILL = 6, 255  # white gaps between the strips


def folds(shape: tuple, max_aspect: float = MAX_ASPECT) -> int:
    """How many strips `fold` cuts an image of `shape` (H, W, …) into: 1 (as it is) up to `max_aspect`, else about
    sqrt(aspect) (the folded picture then is about square)."""
    h, w = shape[:2]
    aspect = max(h, w) / max(1, min(h, w))
    return 1 if aspect <= max_aspect else max(2, round(aspect ** 0.5))


def fold(image: np.ndarray, parts: int | None = None) -> np.ndarray:
    """A very wide (H, W, 3) uint8 picture cut into `parts` (default `folds`) equal strips left to right, stacked
    top to bottom with white gaps (a very tall one: cut top to bottom, placed side by side), so that a column
    shows it at a readable size. Display only: every pixel kept once, unscaled; 1 part = the image itself."""
    parts = folds(image.shape) if parts is None else int(parts)
    if parts <= 1:
        return image
    h, w = image.shape[:2]
    tall = h > w
    if tall:
        image = image.transpose(1, 0, 2)
        h, w = w, h
    step = -(-w // parts)
    strips = [image[:, i * step:(i + 1) * step] for i in range(parts)]
    strips = [np.pad(s, ((0, 0), (0, step - s.shape[1]), (0, 0)), constant_values=FOLD_FILL) for s in strips]
    gap = np.full((FOLD_GAP, step, image.shape[2]), FOLD_FILL, image.dtype)
    out = np.vstack([x for s in strips for x in (s, gap)][:-1])
    return np.ascontiguousarray(out.transpose(1, 0, 2) if tall else out)


def resize_map(anomaly_map: np.ndarray, shape: tuple, dtype=np.float16) -> np.ndarray:
    """(S, S) model-space map -> (H, W) display map (bilinear), stored as `dtype` (float16 halves the cache)."""
    h, w = shape[:2]
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    return m.astype(dtype)


def tile_grid(tiles: list, labels: list, size: int = 224, columns: int = 2) -> np.ndarray:
    """Tiles (H_i, W_i, 3) uint8, each fitted into size x size (white padding) and labelled at its top-left,
    on a grid of `columns` -> (rows * size + gaps, columns * size + gaps, 3) uint8."""
    cells = []
    for tile, label in zip(tiles, labels):
        h, w = tile.shape[:2]
        scale = size / max(h, w)
        t = cv2.resize(tile, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        cell = np.full((size, size, 3), 255, np.uint8)
        y, x = (size - t.shape[0]) // 2, (size - t.shape[1]) // 2
        cell[y:y + t.shape[0], x:x + t.shape[1]] = t
        cv2.rectangle(cell, (0, 0), (8 + 8 * len(label), 18), (0, 0, 0), -1)
        cv2.putText(cell, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
        cells.append(cell)
    columns = min(columns, len(cells))
    cells += [np.full((size, size, 3), 255, np.uint8)] * (-len(cells) % columns)
    gap_v, gap_h = np.full((size, 4, 3), 255, np.uint8), np.full((4, columns * size + 4 * (columns - 1), 3), 255, np.uint8)
    rows = [np.hstack([x for c in cells[i:i + columns] for x in (c, gap_v)][:-1]) for i in range(0, len(cells), columns)]
    return np.vstack([x for r in rows for x in (r, gap_h)][:-1])

"""Generate the app's example images: procedural, synthetic textures and objects, with and without defects.

Nothing here comes from a dataset: every image is drawn from numpy noise and OpenCV primitives with fixed seeds,
so `python assets/make_examples.py` reproduces the committed files bit for bit. Four kinds of surface, each with
a defect type:

    fabric  woven threads         defect: hole          metal  brushed steel    defect: scratch
    wood    growth-ring grain     defect: crack         pill   tablet on a tray defect: chipped edge + stain

Written files (20 images and 4 masks of 224 x 224 px, about 500 KB in all):
    assets/examples/<kind>_good.png, <kind>_<defect>.png        clickable examples (queries)
    assets/bank/<kind>_normal_<i>.png, <kind>_<defect>.png      images of the built-in "examples" memory bank
    assets/bank/<kind>_<defect>_mask.png                        its defect masks (255 = defect)
The bank images use other seeds than the examples, so the examples are never in the bank.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

SIZE = 224
HERE = Path(__file__).resolve().parent
DEFECTS = {"fabric": "hole", "metal": "scratch", "wood": "crack", "pill": "chip"}


def _noise(rng, scale, size=SIZE):
    """Smooth value noise in [-1, 1]: random grid upsampled bicubically."""
    n = max(2, size // scale)
    return np.clip(cv2.resize(rng.uniform(-1, 1, (n, n)).astype(np.float32), (size, size),
                              interpolation=cv2.INTER_CUBIC), -1, 1)


def fabric(rng):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    period = rng.uniform(7, 9)
    warp = np.sin(2 * np.pi * xx / period) ** 2
    weft = np.sin(2 * np.pi * yy / period) ** 2
    checker = (np.floor(xx / period) + np.floor(yy / period)) % 2
    v = 0.55 + 0.25 * np.where(checker > 0, warp, weft) + 0.05 * _noise(rng, 16)
    colour = np.array(rng.choice([[0.35, 0.45, 0.75], [0.7, 0.35, 0.3], [0.45, 0.6, 0.4]]))
    return v[..., None] * colour


def metal(rng):
    streaks = cv2.resize(rng.normal(0, 1, (SIZE, 6)).astype(np.float32), (SIZE, SIZE))
    v = 0.6 + 0.05 * streaks + 0.08 * _noise(rng, 56)
    return np.repeat(v[..., None], 3, axis=2) * np.array([0.95, 0.97, 1.0])


def wood(rng):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cx, cy = rng.uniform(-SIZE, 0), rng.uniform(0, SIZE)
    r = np.hypot((xx - cx) * 0.35, yy - cy) + 6 * _noise(rng, 28)
    rings = 0.5 + 0.5 * np.sin(r / rng.uniform(3, 5))
    v = 0.55 + 0.15 * rings + 0.03 * _noise(rng, 8)
    return v[..., None] * np.array([0.85, 0.6, 0.35])


def pill(rng):
    img = np.ones((SIZE, SIZE, 3), np.float32) * np.array([0.25, 0.3, 0.33]) + 0.02 * _noise(rng, 8)[..., None]
    centre = (SIZE // 2 + int(rng.integers(-8, 9)), SIZE // 2 + int(rng.integers(-8, 9)))
    axes = (int(rng.integers(62, 72)), int(rng.integers(40, 48)))
    angle = float(rng.uniform(-25, 25))
    cv2.ellipse(img, centre, axes, angle, 0, 360, (0.92, 0.9, 0.85), -1, cv2.LINE_AA)
    cv2.ellipse(img, centre, (axes[0] - 6, axes[1] - 6), angle, 0, 360, (0.97, 0.96, 0.92), -1, cv2.LINE_AA)
    cv2.line(img, (centre[0] - 30, centre[1]), (centre[0] + 30, centre[1]), (0.8, 0.78, 0.74), 2, cv2.LINE_AA)
    return img, centre, axes, angle


def add_defect(kind, img, rng, pill_geometry=None):
    """Draw `kind`'s defect on img (H, W, 3 float) in place; returns the (H, W) bool mask."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if kind == "fabric":  # an irregular hole showing a dark backing
        c = rng.uniform(60, 164, 2)
        pts = [c + rng.uniform(10, 20) * np.array([np.cos(t), np.sin(t)]) for t in np.linspace(0, 2 * np.pi, 9)[:-1]]
        cv2.fillPoly(mask, [np.int32(pts)], 1)
        img[mask > 0] = img[mask > 0] * 0.15 + 0.05
    elif kind == "metal":  # a bright thin diagonal scratch
        p0, p1 = rng.uniform(20, 80, 2), rng.uniform(140, 204, 2)
        cv2.line(mask, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1, 3, cv2.LINE_AA)
        img[mask > 0] = np.clip(img[mask > 0] + 0.3, 0, 1)
    elif kind == "wood":  # a dark jagged crack
        x = np.linspace(30, 194, 12)
        y = rng.uniform(90, 134) + np.cumsum(rng.normal(0, 6, 12))
        cv2.polylines(mask, [np.int32(np.stack([x, y], 1))], False, 1, 4)
        img[mask > 0] *= 0.25
    else:  # pill: a chipped edge (tray colour shows) and a brown stain
        centre, axes, angle = pill_geometry
        t = np.deg2rad(angle + rng.uniform(20, 70))
        edge = np.array(centre) + np.array([axes[0] * np.cos(t), axes[1] * np.sin(t)]) * 0.95
        cv2.circle(mask, tuple(int(v) for v in edge), 14, 1, -1)
        img[mask > 0] = np.array([0.25, 0.3, 0.33])
        stain = np.zeros_like(mask)
        cv2.circle(stain, (centre[0] - 20, centre[1] + 10), 9, 1, -1)
        img[stain > 0] = img[stain > 0] * 0.5 + np.array([0.35, 0.22, 0.1])
        mask |= stain
    return mask > 0


def make(kind: str, seed: int, defect: bool):
    """(uint8 RGB image (SIZE, SIZE, 3), bool mask (SIZE, SIZE)) of one kind of surface."""
    rng = np.random.default_rng(seed)
    geometry = None
    if kind == "pill":
        img, *geometry = pill(rng)
    else:
        img = {"fabric": fabric, "metal": metal, "wood": wood}[kind](rng)
    img = np.ascontiguousarray(img, dtype=np.float32)
    mask = add_defect(kind, img, rng, geometry) if defect else np.zeros((SIZE, SIZE), bool)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mask


def _save(path: Path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb,
                [cv2.IMWRITE_PNG_COMPRESSION, 9])


def main(out: Path = HERE):
    (out / "examples").mkdir(parents=True, exist_ok=True)
    (out / "bank").mkdir(parents=True, exist_ok=True)
    for k, (kind, defect) in enumerate(DEFECTS.items()):
        _save(out / "examples" / f"{kind}_good.png", make(kind, 10 * k + 1, False)[0])
        _save(out / "examples" / f"{kind}_{defect}.png", make(kind, 10 * k + 2, True)[0])
        for i in range(2):
            _save(out / "bank" / f"{kind}_normal_{i}.png", make(kind, 10 * k + 3 + i, False)[0])
        img, mask = make(kind, 10 * k + 5, True)
        _save(out / "bank" / f"{kind}_{defect}.png", img)
        _save(out / "bank" / f"{kind}_{defect}_mask.png", mask.astype(np.uint8) * 255)
    total = sum(p.stat().st_size for p in out.rglob("*.png"))
    print(f"wrote {len(list(out.rglob('*.png')))} PNGs, {total / 1024:.0f} KB, under {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write examples/ and bank/ into")
    main(parser.parse_args().out)

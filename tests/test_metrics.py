"""Metric functions against hand-computed cases and against a naive re-statement of the reference's AUPRO."""
import math

import numpy as np
import pytest
from skimage.measure import label
from sklearn.metrics import auc

from mrad_core import metrics


def naive_pro_curve(masks, maps, max_step=200, expect_fpr=0.3):
    """The reference's PRO curve, spelled out the slow way: threshold the whole stack at every step."""
    masks, maps = np.asarray(masks).astype(bool), np.asarray(maps)
    lo, hi = maps.min(), maps.max()
    fprs, pros = [], []
    for th in np.arange(lo, hi, (hi - lo) / max_step):
        binary = maps > th
        overlaps = []
        for b, m in zip(binary, masks):
            lab = label(m)
            for k in range(1, lab.max() + 1):
                overlaps.append(b[lab == k].mean())
        fprs.append((binary & ~masks).sum() / (~masks).sum())
        pros.append(np.mean(overlaps))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < expect_fpr
    return fprs[keep], pros[keep]


def naive_aupro(masks, maps, max_step=200, expect_fpr=0.3):
    x, pros = naive_pro_curve(masks, maps, max_step, expect_fpr)
    return auc((x - x.min()) / (x.max() - x.min()), pros)


def test_image_auroc_and_ap_by_hand():
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > both) -> 3 of 4
    assert metrics.image_auroc(labels, scores) == pytest.approx(0.75)
    # ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): precision 1 at recall 1/2, 2/3 at recall 1
    assert metrics.image_ap(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert metrics.image_auroc([0, 1, 1], [0.2, 0.9, 0.5]) == 1.0
    assert math.isnan(metrics.image_auroc([1, 1], [0.2, 0.3]))  # one class only: undefined
    assert math.isnan(metrics.image_ap([0, 0], [0.2, 0.3]))


def test_pixel_auroc_by_hand():
    masks = np.array([[[0, 1], [0, 1]]])
    maps = np.array([[[0.1, 0.9], [0.6, 0.5]]])
    # positives 0.9, 0.5; negatives 0.1, 0.6: 0.9 beats both, 0.5 beats 0.1 only -> 3/4
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(0.75)
    assert math.isnan(metrics.pixel_auroc(np.zeros((1, 2, 2)), maps))


def _ramp_normals(h=20, w=20):
    """A map whose normal pixels spread over [0, 0.5): every FPR from ~1 down to 0 is reached."""
    return np.tile(np.linspace(0, 0.49, w, dtype=np.float32), (h, 1))


def test_aupro_perfect_soft_prediction_is_one():
    mask = np.zeros((20, 20), np.uint8)
    mask[5:9, 5:9] = 1
    amap = _ramp_normals()
    amap[mask == 1] = 0.9
    assert metrics.aupro([mask], [amap]) == pytest.approx(1.0)


def test_aupro_uninformative_ramp_is_015():
    # columns valued 0, 0.1, ..., 0.9; the defect is a full-width band of rows, so at any threshold the band's
    # PRO equals the FPR. Thresholds below 0.9 leave FPRs 0.9 ... 0.1; those < 0.3 are 0.2 and 0.1, rescaled
    # to x = 1 and 0 with PRO 0.2 and 0.1: area = (0.1 + 0.2) / 2 = 0.15.
    amap = np.tile(np.arange(10, dtype=np.float32) / 10, (10, 1))
    mask = np.zeros((10, 10), np.uint8)
    mask[3:5] = 1
    assert metrics.aupro([mask], [amap]) == pytest.approx(0.15)


def test_aupro_averages_regions_not_pixels():
    # region A (small, 2x2) fully found at every threshold; region B (large, 4x8) half found (top half 0.9,
    # bottom half at the map minimum). PRO = (1 + 0.5) / 2 = 0.75 at every threshold -> AUPRO 0.75, whereas
    # pixel-weighted overlap would be (4 + 16) / 36 = 0.56.
    mask = np.zeros((20, 20), np.uint8)
    mask[1:3, 1:3] = 1
    mask[10:14, 6:14] = 1
    amap = _ramp_normals()
    amap[1:3, 1:3] = 0.9
    amap[10:12, 6:14] = 0.9
    amap[12:14, 6:14] = 0.0
    assert metrics.aupro([mask], [amap]) == pytest.approx(0.75)
    # the same two regions in two different images: still the mean over regions
    m1, m2 = np.zeros_like(mask), np.zeros_like(mask)
    m1[1:3, 1:3], m2[10:14, 6:14] = 1, 1
    a1, a2 = amap.copy(), amap.copy()
    a1[10:14, 6:14] = _ramp_normals()[10:14, 6:14]
    a2[1:3, 1:3] = _ramp_normals()[1:3, 1:3]
    assert metrics.aupro([m1, m2], [a1, a2]) == pytest.approx(0.75)


def test_aupro_undefined_cases_are_nan():
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 1
    assert math.isnan(metrics.aupro([mask], [np.full((8, 8), 0.3, np.float32)]))  # constant map
    assert math.isnan(metrics.aupro([np.zeros((8, 8))], [np.random.rand(8, 8)]))  # no defect at all
    binary = mask.astype(np.float32)  # hard 0/1 prediction: every FPR is 0, the rescaling divides by zero
    assert math.isnan(metrics.aupro([mask], [binary]))
    assert metrics.pro_curve([np.zeros((8, 8))], [np.random.rand(8, 8)]) is None and \
        math.isnan(metrics.integrate_pro(None))


@pytest.mark.parametrize("seed", [0, 1])
def test_aupro_matches_naive_reference_definition(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 24, 24), np.uint8)
    masks[0, 3:9, 4:10] = 1
    masks[0, 15:20, 15:22] = 1
    masks[2, 10:14, 2:6] = 1
    masks[2, 12:18, 5:7] = 1  # touches the previous block: one region
    maps = (rng.random((3, 24, 24)) * 0.6 + masks * rng.random((3, 24, 24)) * 0.5).astype(np.float32)
    assert metrics.aupro(masks, maps) == pytest.approx(naive_aupro(masks, maps), abs=1e-12)
    # the curve the plots draw is that curve: FPRs (not rescaled) below 0.3 and the PRO at each threshold
    fprs, pros = metrics.pro_curve(masks, maps)
    want_fprs, want_pros = naive_pro_curve(masks, maps)
    np.testing.assert_allclose(fprs, want_fprs, atol=1e-12)
    np.testing.assert_allclose(pros, want_pros, atol=1e-12)
    assert fprs.max() < 0.3 and metrics.integrate_pro((fprs, pros)) == metrics.aupro(masks, maps)


def test_class_and_mean_metrics():
    rng = np.random.default_rng(3)
    masks = np.zeros((4, 16, 16), np.uint8)
    masks[2:, 4:9, 4:9] = 1
    maps = (rng.random((4, 16, 16)) * 0.5 + masks * 0.4).astype(np.float32)
    got = metrics.class_metrics([0, 0, 1, 1], [0.2, 0.1, 0.9, 0.3], masks, maps)
    assert set(got) == set(metrics.METRICS)
    assert got["image_auroc"] == 1.0
    assert got["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(masks, maps))
    mean = metrics.mean_metrics({"a": {**got}, "b": {**got, "image_auroc": 0.5, "pixel_aupro": math.nan}})
    assert mean["image_auroc"] == pytest.approx(0.75)
    assert mean["pixel_aupro"] == pytest.approx(got["pixel_aupro"])  # NaN classes are skipped

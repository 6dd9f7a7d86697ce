"""Rendering functions: colormaps, normalisation, overlay, masks, area %, contours (re-render speed: bench/bench.py)."""

import cv2
import numpy as np
import pytest

from mrad_core import viz


def disk(shape=(100, 120), centre=(50, 60), radius=20):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


@pytest.fixture
def base():
    rng = np.random.default_rng(0)
    return (rng.random((100, 120, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(viz.COLORMAPS))
def test_luts_are_256_rgb_ramps(name):
    table = viz.lut(name)
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert not np.array_equal(table[0], table[255])
    if name == "gray":
        np.testing.assert_array_equal(table[:, 0], np.arange(256))


def test_lut_is_rgb_not_bgr():
    jet = viz.lut("jet")  # JET goes from blue (low) to red (high)
    assert jet[0, 2] > jet[0, 0] and jet[255, 0] > jet[255, 2]
    with pytest.raises(ValueError, match="unknown colormap"):
        viz.lut("rainbow-unicorn")


def test_colorize_maps_values_through_the_lut():
    values = np.array([[0.0, 0.5, 1.0, 2.0, -1.0]], np.float32)
    out = viz.colorize(values, "inferno")
    table = viz.lut("inferno")
    for i, idx in enumerate([0, 128, 255, 255, 0]):
        np.testing.assert_array_equal(out[0, i], table[idx])


def test_normalise_modes():
    m = np.array([[0.2, 0.4], [0.6, 1.3]], np.float16)
    np.testing.assert_allclose(viz.normalise(m, "raw"), [[0.2, 0.4], [0.6, 1.0]], atol=1e-3)
    mm = viz.normalise(m, "minmax")
    assert mm.min() == 0 and mm.max() == 1 and mm.dtype == np.float32
    np.testing.assert_array_equal(viz.normalise(np.full((3, 3), 0.7), "minmax"), 0)
    cal = viz.Calibration(low=0.2, high=0.4)  # low -> 0, high -> 0.5, twice as far -> 1
    np.testing.assert_allclose(viz.normalise(m, "calibrated", cal), [[0, 0.5], [1, 1]], atol=2e-3)
    np.testing.assert_allclose(viz.normalise(m, "calibrated", None), viz.normalise(m, "raw"))
    with pytest.raises(ValueError, match="unknown normalisation"):
        viz.normalise(m, "zscore")


def test_calibration_from_normal_maps():
    maps = np.stack([np.full((4, 4), 0.1), np.full((4, 4), 0.1)]).astype(np.float32)
    maps[1, 0, 0] = 0.35
    cal = viz.Calibration.from_maps(maps)
    assert cal.low == pytest.approx(0.1) and cal.high == pytest.approx(0.35)
    flat = viz.Calibration.from_maps(np.zeros((1, 4, 4)))
    assert flat.high > flat.low  # never a division by zero


def test_blend_opacity(base):
    layer = np.full_like(base, 200)
    np.testing.assert_array_equal(viz.blend(base, layer, 0), base)
    np.testing.assert_array_equal(viz.blend(base, layer, 1), layer)
    mid = viz.blend(base, layer, 0.5).astype(int)
    assert np.abs(mid - (base.astype(int) + 200) / 2).max() <= 1


def test_threshold_mask_and_area():
    m = disk().astype(np.float32) * 0.9 + 0.05
    mask = viz.threshold_mask(m, 0.5)
    assert mask.dtype == bool and np.array_equal(mask, disk())
    assert viz.area_percent(mask) == pytest.approx(100 * disk().sum() / disk().size)
    assert viz.area_percent(viz.threshold_mask(m, 0.99)) == 0
    assert viz.area_percent(viz.threshold_mask(m, 0.0)) == 100


def test_contours_count_regions_and_touch_only_boundaries(base):
    two = np.zeros((100, 120), bool)
    two[10:30, 10:30] = two[60:90, 70:110] = True
    assert len(viz.find_contours(two)) == 2
    assert len(viz.find_contours(np.zeros((5, 5), bool))) == 0
    out = viz.draw_contours(base, disk(), thickness=1)
    changed = np.any(out != base, axis=2)
    inner = cv2.erode(disk().astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    outer = ~cv2.dilate(disk().astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert changed.any() and not changed[inner].any() and not changed[outer].any()


def test_mask_view_tints_only_the_mask(base):
    mask = disk()
    out = viz.mask_view(base, mask, 1.0)
    np.testing.assert_array_equal(out[~mask], base[~mask])
    assert (out[mask] == viz.MASK_COLOUR).all()
    np.testing.assert_array_equal(viz.mask_view(base, np.zeros_like(mask), 1.0), base)


def test_render_views(base):
    m = (disk() * 0.8 + 0.1).astype(np.float16)
    heat, area = viz.render(base, m, viz.View(pixel_threshold=0.5, contours=False))
    assert heat.shape == base.shape and heat.dtype == np.uint8
    assert area == pytest.approx(viz.area_percent(disk()))
    with_contours, _ = viz.render(base, m, viz.View(pixel_threshold=0.5, contours=True))
    assert (with_contours != heat).any()
    binary, _ = viz.render(base, m, viz.View(binary=True, contours=False))
    np.testing.assert_array_equal(binary[~disk()], base[~disk()])
    lower, lower_area = viz.render(base, m, viz.View(pixel_threshold=0.05))
    assert lower_area == 100 and (lower != with_contours).any()
    other_cmap, _ = viz.render(base, m, viz.View(colormap="gray", contours=False))
    assert (other_cmap != heat).any()
    with pytest.raises(ValueError, match="differ in size"):
        viz.render(base, np.zeros((10, 10)), viz.View())


def test_fit_resize_map_and_strip():
    big = np.zeros((1000, 2000, 3), np.uint8)
    assert viz.fit(big).shape == (259, 518, 3)
    small = np.zeros((50, 80, 3), np.uint8)
    assert viz.fit(small).shape == (50, 80, 3)
    m = viz.resize_map(np.random.default_rng(0).random((518, 518)), (259, 518))
    assert m.shape == (259, 518) and m.dtype == np.float16
    tiles = [np.zeros((100, 200, 3), np.uint8), np.zeros((50, 50, 3), np.uint8), np.zeros((60, 30, 3), np.uint8)]
    grid = viz.tile_grid(tiles, ["input", "a", "b"], size=64, columns=2)
    assert grid.shape == (64 * 2 + 4, 64 * 2 + 4, 3)
    assert (grid[-64:, -64:] == 255).all()  # the fourth cell is empty
    assert (grid[20:40, 4:60] == 0).any() and (grid[0:10, 60:64] == 255).all()
    assert viz.tile_grid(tiles[:2], ["input", "a"], size=64).shape == (64, 132, 3)


def test_mark_point_draws_a_ring_and_cross_around_the_point_only(base):
    marked = viz.mark_point(base, 60, 40)
    assert marked.shape == base.shape and marked.dtype == np.uint8 and marked is not base
    changed = (marked != base).any(axis=2)
    ys, xs = np.nonzero(changed)
    radius = max(6, round(120 / 40))
    assert abs(xs.mean() - 60) < 2 and abs(ys.mean() - 40) < 2  # centred on the point
    assert xs.max() - xs.min() <= 4 * radius + 8 and ys.max() - ys.min() <= 4 * radius + 8
    assert (marked[40, 60] == base[40, 60]).all()  # the point itself stays visible
    assert (marked[40, 60 + radius] == viz.MARK_COLOUR).all()  # the ring, in the marker's colour
    assert (marked[40 - 2 * radius + 1, 60] == viz.MARK_COLOUR).all()  # the cross's upper arm
    edge = (viz.mark_point(base, 500, -3) != base).any(axis=2)  # a point outside: clipped onto the border
    assert edge[0, :].any() and edge[:, -1].any()


def test_fold_cuts_a_panorama_into_stacked_strips_keeping_every_pixel():
    rng = np.random.default_rng(1)
    wide = (rng.random((39, 518, 3)) * 255).astype(np.uint8)  # a 4000 x 300 panorama at display size
    assert viz.folds(wide.shape) == 4 and viz.folds((300, 400)) == 1 and viz.folds((100, 300)) == 1
    folded = viz.fold(wide)
    step = -(-518 // 4)
    assert folded.shape == (4 * 39 + 3 * viz.FOLD_GAP, step, 3)
    aspect = folded.shape[1] / folded.shape[0]
    assert 1 / viz.MAX_ASPECT <= aspect <= viz.MAX_ASPECT
    for i in range(4):  # strip i holds columns i*step … of the image, unscaled; the rest of the last is white
        strip = folded[i * (39 + viz.FOLD_GAP):i * (39 + viz.FOLD_GAP) + 39]
        part = wide[:, i * step:(i + 1) * step]
        np.testing.assert_array_equal(strip[:, :part.shape[1]], part)
        assert (strip[:, part.shape[1]:] == viz.FOLD_FILL).all()
    tall = wide.transpose(1, 0, 2)  # a tall one: strips side by side
    np.testing.assert_array_equal(viz.fold(tall), folded.transpose(1, 0, 2))
    square = wide[:, :60]
    assert viz.fold(square) is square

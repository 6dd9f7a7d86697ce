"""Image loading: every odd input is either fixed (with a note) or refused with a message naming the problem."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from mrad_core.config import OPENAI_MEAN, OPENAI_STD
from mrad_core.images import ImageError, load_image, load_mask, preprocess


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_grayscale_becomes_rgb(tmp_path):
    p = _save(Image.new("L", (40, 30), 77), tmp_path / "g.png")
    out = load_image(p)
    assert out.image.mode == "RGB" and out.image.size == (40, 30)
    assert out.image.getpixel((3, 3)) == (77, 77, 77)


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((20, 20, 4), np.uint8)
    arr[..., 0] = 255
    arr[:10, :, 3] = 255  # top half opaque red, bottom half fully transparent
    out = load_image(_save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png"))
    assert out.image.getpixel((5, 2)) == (255, 0, 0)
    assert out.image.getpixel((5, 15)) == (255, 255, 255)
    assert any("transparent" in n for n in out.notes)


def test_16bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((20, 20), 32768, np.uint16)
    out = load_image(_save(Image.fromarray(arr), tmp_path / "d.png"))
    assert abs(out.image.getpixel((1, 1))[0] - 128) <= 1
    assert any("16-bit" in n for n in out.notes)


def test_cmyk_jpeg(tmp_path):
    out = load_image(_save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), tmp_path / "c.jpg"))
    r, g, b = out.image.getpixel((10, 10))
    assert r > 200 and g < 60 and b < 60
    assert any("CMYK" in n for n in out.notes)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 20), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = load_image(_save(img, tmp_path / "r.jpg", exif=exif.tobytes()))
    assert out.image.size == (20, 60)
    assert any("EXIF" in n for n in out.notes)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    out = load_image(p)
    r, g, b = out.image.getpixel((5, 5))
    assert r > 200 and b < 50
    assert any("2 frames" in n for n in out.notes)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"this is not an image at all", "not an image"),
])
def test_bad_files_are_refused(tmp_path, content, message):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(p)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
    p = tmp_path / "trunc.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(p)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")


def test_tiny_and_huge_images_are_refused(tmp_path):
    with pytest.raises(ImageError, match="too small"):
        load_image(_save(Image.new("RGB", (1, 1)), tmp_path / "one.png"))
    with pytest.raises(ImageError, match="larger than"):
        load_image(_save(Image.new("RGB", (300, 300)), tmp_path / "big.png"), max_pixels=50_000)
    # beyond PIL's own decompression-bomb limit it refuses at open: still our message, and PIL's limit untouched
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="larger than"):
        load_image(_save(Image.new("1", (20000, 20000)), tmp_path / "huge.png"))
    assert Image.MAX_IMAGE_PIXELS == limit


def test_arrays_and_bytes_are_accepted(tmp_path):
    arr = np.zeros((30, 40, 3), np.uint8)
    assert load_image(arr).image.size == (40, 30)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    assert load_image(buf.getvalue()).image.size == (40, 30)
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((3, 30, 40, 2), np.uint8))


def test_preprocess_stretches_and_normalises():
    img = Image.new("RGB", (100, 50), (255, 255, 255))
    x = preprocess(img, 518)
    assert x.shape == (3, 518, 518)  # aspect ratio not kept
    expected = (1 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    assert torch.allclose(x[:, 100, 300], expected, atol=1e-6)


def test_load_mask_binarises(tmp_path):
    assert torch.equal(load_mask(None, 37), torch.zeros(37, 37))
    m = np.zeros((100, 100), np.uint8)
    m[:, 50:] = 255
    mask = load_mask(_save(Image.fromarray(m), tmp_path / "m.png"), 50)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask[:, :24].sum() == 0 and mask[:, 26:].min() == 1

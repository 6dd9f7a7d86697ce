"""Loading and validating user images, and turning them into model input.

Every problem with an image becomes an `ImageError` whose message names the file and the problem;
harmless surprises (EXIF rotation, transparency, 16-bit depth, animation, CMYK) are fixed and
reported as notes so the UI can show them.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import OPENAI_MEAN, OPENAI_STD
from .errors import MRADError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})  # lower case
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; the app takes MRAD_MAX_PIXELS (settings.py)
MIN_SIDE = 14  # one ViT patch


class ImageError(MRADError):
    """An image that cannot be used, with a message meant for the user."""


@dataclass
class LoadedImage:
    image: Image.Image  # RGB, orientation applied
    name: str
    notes: list = field(default_factory=list)


def _open(source):
    """Open `source` (path, bytes, PIL image or array) lazily; returns (PIL image, display name)."""
    if isinstance(source, Image.Image):
        return source, getattr(source, "filename", "") or "image"
    if isinstance(source, np.ndarray):
        return _from_array(source), "array"
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("image: the data is empty")
        return Image.open(io.BytesIO(source)), "image"
    path = Path(source)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path.name}: the file is empty")
    return Image.open(path), path.name


def _from_array(arr):
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageError(f"array of shape {arr.shape} is not an image (need HxW, HxWx3 or HxWx4)")
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype.kind == "f":
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageError(f"array of dtype {arr.dtype} is not supported (uint8, uint16 or float in [0, 1])")
    return Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def load_image(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode and validate an image and return it as RGB with notes on what was adjusted."""
    try:
        with warnings.catch_warnings():  # our own, clearer limit below replaces PIL's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img, name = _open(source)
        notes = []
        w, h = img.size
        if w * h > max_pixels:
            raise ImageError(f"{name}: {w}x{h} px ({w * h / 1e6:.0f} MP) is larger than the "
                             f"{max_pixels / 1e6:.0f} MP limit; downscale it first (MRAD works at 518x518)")
        if min(w, h) < MIN_SIDE:
            raise ImageError(f"{name}: {w}x{h} px is too small; MRAD needs at least {MIN_SIDE} px a side")
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            img.seek(0)
            notes.append(f"animated image: using the first of its {frames} frames")
        img.load()
        if img.getexif().get(0x0112, 1) not in (0, 1):  # EXIF Orientation tag
            img = ImageOps.exif_transpose(img)
            notes.append("rotated as its EXIF orientation says")
        return LoadedImage(to_rgb(img, notes), name, notes)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # PIL's own hard limit, checked when the file is opened
        raise ImageError(f"{_name(source)}: larger than the {max_pixels / 1e6:.0f} MP limit ({e}); downscale it "
                         "first (MRAD works at 518x518)")
    except UnidentifiedImageError:
        raise ImageError(f"{_name(source)}: not an image format that can be read (PNG, JPEG, BMP, TIFF, WebP, GIF …)")
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{_name(source)}: the image data is truncated or corrupt ({e})")


def _name(source):
    return Path(source).name if isinstance(source, (str, os.PathLike)) else "image"


def to_rgb(img: Image.Image, notes: list) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: 16-bit scaled down, transparency composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray((np.clip(arr / top, 0, 1) * 255 + 0.5).astype(np.uint8))
        notes.append("16-bit image scaled to 8 bits")
    elif img.mode == "F":
        arr = np.asarray(img)
        img = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("transparent areas composited on white")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    return img.convert("RGB")


def preprocess(img: Image.Image, size: int = 518) -> torch.Tensor:
    """RGB PIL image -> normalised (3, size, size) float tensor. Stretches: the aspect ratio is NOT kept."""
    resized = img.resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    return (x - mean) / std


def load_mask(source, size: int = 518) -> torch.Tensor:
    """Ground-truth mask -> (size, size) float tensor of 0/1: bilinear resize, binarised at 0.5.
    `None` means a normal image: all zeros."""
    if source is None:
        return torch.zeros(size, size)
    try:
        img = source if isinstance(source, Image.Image) else Image.open(source)
        binary = Image.fromarray((np.asarray(img.convert("L")) > 0).astype(np.uint8) * 255)
    except (OSError, UnidentifiedImageError) as e:
        raise ImageError(f"{_name(source)}: cannot read mask ({e})")
    resized = np.asarray(binary.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy((resized > 0.5).astype(np.float32))


THUMBNAIL_SIZE = 64


def thumbnail(source, size: int = THUMBNAIL_SIZE) -> torch.Tensor:
    """An image source -> (size, size, 3) uint8 RGB, stretched as the model input is (for bank entries)."""
    img = load_image(source).image.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(img, dtype=np.uint8))


def thumbnails_from_pixels(pixels: torch.Tensor, size: int = THUMBNAIL_SIZE) -> torch.Tensor:
    """Model input (B, 3, S, S), normalised -> (B, size, size, 3) uint8 RGB."""
    mean = torch.tensor(OPENAI_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=pixels.device).view(1, 3, 1, 1)
    rgb = (pixels.float() * std + mean).clamp(0, 1)
    small = torch.nn.functional.interpolate(rgb, size=(size, size), mode="area")
    return (small * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

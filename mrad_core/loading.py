"""From "what the user configured" to a ready Detector: explicit paths, else the MRAD_* environment variables."""
from __future__ import annotations

import os
from dataclasses import replace

from .config import DEFAULT

ENV = {"backbone": "MRAD_BACKBONE", "heads": "MRAD_HEADS", "image_bank": "MRAD_IMAGE_BANK",
       "patch_bank": "MRAD_PATCH_BANK"}


def resolve_paths(backbone=None, heads=None, image_bank=None, patch_bank=None) -> dict:
    """Explicit path > environment variable > None (None for the backbone means open_clip's OpenAI weights)."""
    given = {"backbone": backbone, "heads": heads, "image_bank": image_bank, "patch_bank": patch_bank}
    return {k: (v or os.environ.get(ENV[k]) or None) for k, v in given.items()}


def load_detector(backbone=None, heads=None, image_bank=None, patch_bank=None, model=None, device=None,
                  precision="fp32", batch_size=8):
    """Build a Detector from paths (or the environment). Raises MRADError subclasses with readable messages."""
    from .detector import Detector

    paths = resolve_paths(backbone, heads, image_bank, patch_bank)
    config = replace(DEFAULT, model_name=model or DEFAULT.model_name)
    return Detector.from_files(**paths, config=config, device=device, precision=precision, batch_size=batch_size)

"""The artefacts layer's error (its own module so that digest, hub and drive can all raise it without a cycle)."""
from __future__ import annotations

from ..errors import MRADError

FLAGS = {"heads": "--heads / MRAD_HEADS", "image_bank": "--image-bank / MRAD_IMAGE_BANK",
         "patch_bank": "--patch-bank / MRAD_PATCH_BANK", "backbone": "--backbone / MRAD_BACKBONE"}


class HubError(MRADError):
    """An artefact that cannot be found, downloaded or verified; the message says how to fix it.
    `why` is the bare reason (e.g. "the Hub could not be reached"), when there is one."""

    def __init__(self, message: str, why: str | None = None):
        super().__init__(message)
        self.why = why

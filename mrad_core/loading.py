"""Transitional: moved to mrad_core.artefacts.resolve, which takes its settings as `options=` (an ArtefactOptions,
`Settings.artefacts`) and reads no environment. These wrappers keep today's callers (cli/common.py,
catalogue.py, bench/, some tests) working with the environment's settings until they pass their own; then this
module goes."""
from __future__ import annotations

from .artefacts.resolve import ENV, NEEDS, ArtefactStatus, Resolution  # noqa: F401
from .artefacts import resolve as _resolve


def _options(options):
    if options is not None:
        return options
    from .settings import Settings
    return Settings.from_env().artefacts


def resolve_paths(backbone=None, heads=None, image_bank=None, patch_bank=None, *, files=None) -> dict:
    return _resolve.resolve_paths(backbone, heads, image_bank, patch_bank,
                                  files=files if files is not None else _options(None).files)


def resolve_artefacts(*args, options=None, **kw):
    return _resolve.resolve_artefacts(*args, options=_options(options), **kw)


def load_detector(*args, options=None, **kw):
    return _resolve.load_detector(*args, options=_options(options), **kw)


def delivery_status(*args, options=None, **kw):
    return _resolve.delivery_status(*args, options=_options(options), **kw)

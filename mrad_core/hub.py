"""Transitional: moved to mrad_core.artefacts.hub and mrad_core.artefacts.digest. The two functions below keep
today's callers (service.py, engines.py, profile.py) working with the environment's MRAD_CACHE_DIR until they
pass their Settings' cache_dir themselves; then this module goes."""
from __future__ import annotations

from .artefacts.errors import FLAGS, HubError  # noqa: F401
from .artefacts.hub import NO_DOWNLOAD, download, not_found, reason, resolve, unreachable  # noqa: F401


def _cache_dir():
    from .settings import Settings
    return Settings.from_env().cache_dir


def file_sha256(path) -> str:
    """mrad_core.artefacts.digest.file_sha256 with MRAD_CACHE_DIR (port: file_sha256(path, settings.cache_dir))."""
    from .artefacts.digest import file_sha256 as sha
    return sha(path, _cache_dir())


def backbone_weights(model_name: str, pretrained: str = "openai", allow_download: bool = True):
    """mrad_core.artefacts.hub.backbone_weights with MRAD_CACHE_DIR (port: pass cache_dir=settings.cache_dir)."""
    from .artefacts.hub import backbone_weights as weights
    return weights(model_name, pretrained, allow_download, cache_dir=_cache_dir())

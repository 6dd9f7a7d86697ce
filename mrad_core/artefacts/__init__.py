"""The artefacts layer: which files exist (registry.py, pure data), their digests (digest.py), the Hub (hub.py),
the authors' Google Drive (drive.py), converting the authors' files (convert.py), and the one resolver
(resolve.py: explicit > environment-given path > project > HF cache > Drive cache > Hub mirror > Drive).

Nothing here reads the environment, imports mrad_core.cli or gradio: configuration arrives as an
ArtefactOptions (options.py), built from mrad_core.settings.Settings at an entry point and passed down.
"""
from .options import DEFAULT_CACHE_DIR, ArtefactOptions, cache_path

__all__ = ["ArtefactOptions", "DEFAULT_CACHE_DIR", "cache_path"]

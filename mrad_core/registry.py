"""Transitional: moved to mrad_core.artefacts.registry (pure data). Import from there; this module goes once the
last importers (cli/common.py, catalogue.py) are ported."""
from .artefacts.registry import *  # noqa: F401,F403
from .artefacts.registry import _entry  # noqa: F401

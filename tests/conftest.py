"""Shared fixtures: a tiny open_clip model with heads and banks (fast), and the full-size parity fixture."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
SHARED = Path(os.environ.get("MRAD_SHARED", ROOT.parent / "shared"))
PARITY = SHARED / "parity"
# the generated 1.7 GB backbone lives outside the repository
FIXTURE_CACHE = Path(os.environ.get("MRAD_FIXTURE_CACHE", Path.home() / ".cache" / "mrad" / "parity-fixture"))
BACKBONE_NAME = "backbone_openai_vitl14_336.safetensors"


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """Paths of the tiny model files: model (config json), backbone, heads, image_bank, patch_bank, images."""
    from tiny_model import make_tiny_files
    return make_tiny_files(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_config(tiny_files):
    from mrad_core import MRADConfig
    return MRADConfig(model_name=tiny_files["model"])


@pytest.fixture(scope="session")
def tiny_detector(tiny_files, tiny_config):
    from mrad_core import Detector
    f = tiny_files
    return Detector.from_files(f["backbone"], f["heads"], f["image_bank"], f["patch_bank"], config=tiny_config,
                               device="cpu")


@pytest.fixture(scope="session")
def parity_dir():
    """../shared/parity; missing it fails under CI (the parity test must run there) and skips elsewhere."""
    if not (PARITY / "expected.npz").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"parity fixture not found at {PARITY} (set MRAD_SHARED)")
        pytest.skip(f"parity fixture not found at {PARITY}")
    return PARITY


@pytest.fixture(scope="session")
def parity_backbone(parity_dir):
    """The deterministic full-size backbone, generated once by make_fixture.py into FIXTURE_CACHE."""
    path = FIXTURE_CACHE / BACKBONE_NAME
    if not path.is_file():  # generate next to the cache, then move into place: never a half-written file
        FIXTURE_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = FIXTURE_CACHE / "generating"
        subprocess.run([sys.executable, str(parity_dir / "make_fixture.py"), "--out", str(tmp)], check=True)
        (tmp / BACKBONE_NAME).replace(path)
        shutil.rmtree(tmp, ignore_errors=True)
    return path


@pytest.fixture(scope="session")
def parity_detector(parity_dir, parity_backbone):
    from mrad_core.artefacts.resolve import load_detector
    return load_detector(parity_backbone, parity_dir / "heads_official.pth", parity_dir / "cache_model_fixture.pt",
                         parity_dir / "cache_patch_model_fixture.pt", device="cpu")

"""`mrad convert` (official .pth/.pt -> safetensors: the same tensors, the same results within float tolerance);
`mrad fetch-official` is in test_drive.py."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mrad_core import Detector, Heads, MemoryBank
from mrad_core.cli import main
from mrad_core.artefacts import ArtefactOptions
from mrad_core.artefacts.resolve import load_detector


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def official_tiny(tiny_files, tmp_path_factory):
    """The tiny heads and banks written in the authors' layouts and file names (torch.save of plain tensors)."""
    d = tmp_path_factory.mktemp("official")
    torch.save(Heads.load(tiny_files["heads"]).official_state(), d / "test_on_mvtec.pth")
    for kind, name in (("image", "cache_model_visa.pt"), ("patch", "cache_patch_model_visa.pt")):
        bank = MemoryBank.load(tiny_files[f"{kind}_bank"], kind)
        torch.save({"keys": bank.keys, "values": bank.values}, d / name)
    return d


# Converted files hold exactly the original tensors (asserted with torch.equal); the outputs computed from them may
# differ in the last bits where GEMM kernels pick another blocking for another memory layout (CPUs without AMX do).
TOL = 1e-6


def assert_same_tensors(a: Detector, b: Detector):
    """The exact invariant of a conversion: the same heads and bank tensors, bit for bit."""
    sa, sb = a.heads.state_dict(), b.heads.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for kind in ("image_bank", "patch_bank"):
        ba, bb = getattr(a, kind), getattr(b, kind)
        assert torch.equal(ba.keys, bb.keys) and torch.equal(ba.values, bb.values), kind


def assert_same_results(a: Detector, b: Detector, images):
    assert_same_tensors(a, b)
    ra, rb = a.predict(images, a.variants), b.predict(images, b.variants)
    assert a.variants == b.variants == ("tf", "ft", "clip")
    for v in ra:
        np.testing.assert_allclose(ra[v].score, rb[v].score, rtol=0, atol=TOL, err_msg=v)
        np.testing.assert_allclose(ra[v].map, rb[v].map, rtol=0, atol=TOL, err_msg=v)
        np.testing.assert_allclose(ra[v].patch_map, rb[v].patch_map, rtol=0, atol=TOL, err_msg=v)


def test_convert_tiny_official_files(official_tiny, tiny_files, tiny_config, tmp_path, capsys):
    inputs = [official_tiny / n for n in ("test_on_mvtec.pth", "cache_model_visa.pt", "cache_patch_model_visa.pt")]
    assert main(["convert", *map(str, inputs), "--out", str(tmp_path)]) == 0
    out = {p.name for p in tmp_path.iterdir()}
    assert out == {f"mrad_{k}_visa.safetensors" for k in ("heads", "image_bank", "patch_bank")}
    assert sha(tmp_path / "mrad_heads_visa.safetensors") in capsys.readouterr().out

    heads = Heads.load(tmp_path / "mrad_heads_visa.safetensors")
    assert heads.meta["training_source"] == "visa" and heads.meta["variants"] == "ft,clip"
    assert heads.meta["provenance"]["sha256"] == sha(inputs[0]) and heads.meta["provenance"]["file"] == inputs[0].name
    assert heads.meta["image_dim"] == "32" and heads.meta["patch_dim"] == "64"
    bank = MemoryBank.load(tmp_path / "mrad_patch_bank_visa.safetensors", "patch")
    assert bank.source == "visa" and json.loads(bank.meta["provenance"])["sha256"] == sha(inputs[2])
    assert bank.meta["dim"] == str(bank.dim) and "CC BY 4.0" in bank.meta["licence"]

    def det(h, i, p):
        return Detector.from_files(tiny_files["backbone"], h, i, p, config=tiny_config, device="cpu")
    assert_same_results(det(*inputs), det(*(tmp_path / n for n in ("mrad_heads_visa.safetensors",
                                                                    "mrad_image_bank_visa.safetensors",
                                                                    "mrad_patch_bank_visa.safetensors"))),
                        tiny_files["images"])


def test_convert_refuses_what_it_cannot_name(official_tiny, tmp_path, capsys):
    unnamed = tmp_path / "bank.pt"
    shutil.copy(official_tiny / "cache_model_visa.pt", unnamed)
    assert main(["convert", str(unnamed), "--source", "visa", "--out", str(tmp_path)]) == 2
    assert "give --kind" in capsys.readouterr().err
    heads = tmp_path / "my_heads.pth"
    shutil.copy(official_tiny / "test_on_mvtec.pth", heads)
    assert main(["convert", str(heads), "--out", str(tmp_path)]) == 2
    assert "give --source" in capsys.readouterr().err
    assert main(["convert", str(heads), "--source", "mvtec", "--out", str(tmp_path)]) == 0
    assert Heads.load(tmp_path / "mrad_heads_mvtec.safetensors").meta["training_source"] == "mvtec"
    assert main(["convert", str(heads), "--source", "mvtec", "--out", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err  # nothing overwritten silently
    junk = tmp_path / "test_on_visa.pth"
    torch.save({"something": torch.zeros(2)}, junk)
    assert main(["convert", str(junk), "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "mrad_heads_mvtec.safetensors.tmp").exists()


def test_converted_files_in_project_dirs_are_resolved(official_tiny, tiny_files, tmp_path, monkeypatch):
    """After `mrad convert` with default output (the project directory: MRAD_PROJECT_DIR, read by the command),
    load_detector finds the files without any path (the same project directory in its settings)."""
    monkeypatch.setenv("MRAD_PROJECT_DIR", str(tmp_path))
    for name in ("test_on_mvtec.pth", "cache_model_visa.pt", "cache_patch_model_visa.pt"):
        assert main(["convert", str(official_tiny / name)]) == 0
    assert (tmp_path / "checkpoints" / "mrad_heads_visa.safetensors").is_file()
    options = ArtefactOptions(project_dir=tmp_path, cache_dir=tmp_path / "mrad", drive_url="off")
    det = load_detector(tiny_files["backbone"], model=tiny_files["model"], device="cpu", download=False,
                        options=options)
    assert det.variants == ("tf", "ft", "clip")
    assert [s.origin for s in det.delivery.statuses] == ["explicit", "project", "project", "project"]
    assert det.delivery.paths["image_bank"] == str(tmp_path / "cache" / "mrad_image_bank_visa.safetensors")


@pytest.mark.parity
def test_convert_parity_fixture_gives_the_same_results(parity_dir, parity_backbone, parity_detector, tmp_path):
    """Full size: converted heads and banks are the official tensors, and give the official files' maps and scores
    for query_bad within float tolerance."""
    assert main(["convert", str(parity_dir / "heads_official.pth"), str(parity_dir / "cache_model_fixture.pt"),
                 str(parity_dir / "cache_patch_model_fixture.pt"), "--source", "visa", "--out", str(tmp_path)]) == 0
    converted = load_detector(parity_backbone, tmp_path / "mrad_heads_visa.safetensors",
                              tmp_path / "mrad_image_bank_visa.safetensors",
                              tmp_path / "mrad_patch_bank_visa.safetensors", device="cpu")
    query = [parity_dir / "images" / "query_bad.png"]
    assert_same_tensors(parity_detector, converted)
    encoding = parity_detector.encode(query)  # one encoding, both heads/banks: the comparison is of those alone
    for v in ("tf", "ft", "clip"):
        a, b = parity_detector.score(encoding, v), converted.score(encoding, v)
        np.testing.assert_allclose(a.score, b.score, rtol=0, atol=TOL, err_msg=v)
        np.testing.assert_allclose(a.map, b.map, rtol=0, atol=TOL, err_msg=v)
    expected = np.load(parity_dir / "expected.npz")
    b = converted.score(encoding, "ft")
    assert np.allclose(np.asarray(b.map), expected["query_bad.ft.map"].reshape(b.map.shape), atol=1e-4)

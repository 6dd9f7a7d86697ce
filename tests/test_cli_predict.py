"""`mrad predict` on the tiny model: the output contract and one-line errors with nothing half-written."""
import json
import subprocess
import sys

import numpy as np
import pytest

from mrad_core.cli import main


@pytest.fixture
def args(tiny_files):
    f = tiny_files
    return ["--model", f["model"], "--backbone", f["backbone"], "--heads", f["heads"], "--image-bank",
            f["image_bank"], "--patch-bank", f["patch_bank"], "--device", "cpu"]


def test_writes_the_contract_files(tiny_files, args, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", *tiny_files["images"], "--variant", "all", "--out", str(out), *args]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores) == {"query_0", "query_1"}
    for stem, per in scores.items():
        assert set(per) == {"tf", "ft", "clip"}
        for v, s in per.items():
            assert 0 <= s["score"] <= 1 and 0 <= s["image_prob"] <= 1
            m = np.load(out / f"{stem}.{v}.npy")
            assert m.shape == (518, 518) and m.dtype == np.float32
    assert "wrote 2 image(s) x 3 variant(s)" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["precision"] == "fp32" and run["engine"] in ("torch", "openvino") and run["device"] == "cpu"
    assert run["variants"] == ["tf", "ft", "clip"]


def test_single_variant_and_env_paths(tiny_files, tmp_path, monkeypatch):
    for key, env in (("backbone", "MRAD_BACKBONE"), ("heads", "MRAD_HEADS"), ("image_bank", "MRAD_IMAGE_BANK"),
                     ("patch_bank", "MRAD_PATCH_BANK")):
        monkeypatch.setenv(env, tiny_files[key])
    out = tmp_path / "o"
    assert main(["predict", tiny_files["images"][0], "--variant", "tf", "--out", str(out), "--model",
                 tiny_files["model"]]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["query_0.tf.npy", "run.json", "scores.json"]


def _fails(argv, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_errors_are_one_line_and_write_nothing(tiny_files, args, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    _fails(["predict", tiny_files["images"][0], str(bad), "--out", str(out), *args], capsys, "broken.png")
    assert not out.exists() or not any(out.iterdir())
    tf_only = [a for a in args]
    i = tf_only.index("--heads")
    del tf_only[i:i + 2]
    # without --heads the resolver looks in checkpoints/, the HF cache and the Hub, then says how to provide them
    _fails(["predict", tiny_files["images"][0], "--variant", "ft", "--out", str(out), *tf_only], capsys,
           "--heads / MRAD_HEADS")
    assert not out.exists() or not any(out.iterdir())
    _fails(["predict", tiny_files["images"][0], "--out", str(out), *args, "--image-bank", str(tmp_path / "no.pt")],
           capsys, "no such file")
    swapped = [*args, "--image-bank", tiny_files["patch_bank"]]
    _fails(["predict", tiny_files["images"][0], "--out", str(out), *swapped], capsys, "patch bank")
    _fails(["predict", tiny_files["images"][0], tiny_files["images"][0], "--out", str(out), *args], capsys,
           "share the name")


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "mrad_core", "predict", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--variant" in r.stdout and "MRAD_HEADS" in r.stdout

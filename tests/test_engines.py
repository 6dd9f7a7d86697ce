"""Encoder engines on the tiny model (issue 14): OpenVINO matches PyTorch, converts once per backbone and re-uses
its cache, frees PyTorch's vision weights, says clearly when OpenVINO is missing; `mrad export` writes files that
load and compute the same encoder."""
import json
import sys

import numpy as np
import pytest
import torch

from mrad_core import Detector, engines, runtime
from mrad_core.artefacts.options import ArtefactOptions
from mrad_core.artefacts.resolve import load_detector
from mrad_core.backbone import Backbone
from mrad_core.cli import main
from mrad_core.errors import MRADError

ov = pytest.importorskip("openvino")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MRAD_CACHE_DIR", str(tmp_path / "cache"))  # for the CLI runs (read by Settings)
    return tmp_path / "cache" / "openvino"


def _detector(files, config, engine="torch", precision="fp32", cache=None):
    f = files
    return load_detector(f["backbone"], f["heads"], f["image_bank"], f["patch_bank"], model=config.model_name,
                         runtime=runtime.resolve("library", "cpu", engine, precision),
                         options=ArtefactOptions(cache_dir=cache.parent if cache else "/nonexistent-cache"))


def test_openvino_matches_torch(tiny_files, tiny_config, tiny_detector, cache):
    det = _detector(tiny_files, tiny_config, "openvino", cache=cache)
    assert det.run_info == {"engine": "openvino", "precision": "fp32", "device": "cpu"}
    assert tiny_detector.run_info["engine"] == "torch"  # the library default stays PyTorch
    pixels = det.pixels(tiny_files["images"])  # a batch of 2: the IR has a dynamic batch dimension
    a, b = tiny_detector.encode(pixels), det.encode(pixels)
    for name in ("image_feature", "patch_tokens", "proj_tokens", "patch_avg", "proj_avg"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and y.dtype == torch.float32
        assert (x - y).abs().max() <= 1e-4 * max(1.0, float(x.abs().max())), name
    ra, rb = tiny_detector.predict(tiny_files["images"]), det.predict(tiny_files["images"])
    for v in ("tf", "ft", "clip"):
        np.testing.assert_allclose(rb[v].score, ra[v].score, atol=1e-5)
        assert np.abs(rb[v].map - ra[v].map).max() <= 1e-4


def test_converted_once_then_loaded_from_cache(tiny_files, tiny_config, cache, monkeypatch):
    first = _detector(tiny_files, tiny_config, "openvino", cache=cache)
    assert first.engine.info["converted"] and first.engine.xml.parent.parent == cache
    assert first.engine.xml.with_suffix(".bin").is_file()
    meta = json.loads((first.engine.xml.parent / "meta.json").read_text())
    assert meta["openvino"] == ov.__version__

    def no_conversion(*a, **k):
        raise AssertionError("converted again although the IR is cached")
    monkeypatch.setattr(engines, "convert_openvino", no_conversion)
    second = _detector(tiny_files, tiny_config, "openvino", cache=cache)
    assert not second.engine.info["converted"] and second.engine.xml == first.engine.xml
    px = first.pixels(tiny_files["images"][:1])
    assert (first.encode(px).patch_tokens - second.encode(px).patch_tokens).abs().max() <= 1e-6


def test_other_weights_get_their_own_cache_entry(tiny_files, tiny_config, cache):
    a = Backbone.load(tiny_files["backbone"], tiny_config)
    b = Backbone.load(tiny_files["backbone"], tiny_config)
    b.weights_path = None  # no file: keyed by the tensors themselves
    with torch.no_grad():
        b.clip.visual.proj.add_(1.0)
    assert engines.backbone_key(a) != engines.backbone_key(b)


def test_vision_weights_are_released(tiny_files, tiny_config, cache):
    det = _detector(tiny_files, tiny_config, "openvino", cache=cache)
    assert not det.backbone.has_vision and det.backbone.image_dim == 32 and det.backbone.patch_dim == 64
    with pytest.raises(MRADError, match="released"):
        det.backbone.encode_image(torch.zeros(1, 3, 518, 518))
    assert set(det.predict(tiny_files["images"][:1])) == {"tf", "ft", "clip"}  # the text tower still works
    encoder = engines.make_engine("openvino", det.backbone, "cpu", cache_dir=cache.parent)
    other = Detector(det.backbone, device="cpu", engine=encoder)  # a second detector on the same backbone
    assert other.engine is det.engine
    assert other.encode(tiny_files["images"][:1]).image_feature.shape == (1, 32)


def test_compiled_engine_lets_go_of_the_ir(tiny_files, tiny_config, cache, tmp_path):
    """The IR read for compiling is not kept as an openvino.Model (the compiled model holds what it needs), and
    another precision reads it again."""
    det = _detector(tiny_files, tiny_config, "openvino", cache=cache)
    binary = det.engine.xml.with_suffix(".bin")
    assert not [v for v in vars(det.engine).values() if type(v).__name__ == "Model"]  # no openvino.Model kept
    assert binary.is_file()
    before = det.predict(tiny_files["images"][:1])
    det.engine.compiled("bf16")  # read again from the file for another precision
    np.testing.assert_array_equal(before["clip"].map, det.predict(tiny_files["images"][:1])["clip"].map)


def test_openvino_precisions(tiny_files, tiny_config, tiny_detector, cache):
    det = _detector(tiny_files, tiny_config, "openvino", "bf16", cache)
    assert det.run_info["precision"] == "bf16"
    assert set(det.engine._compiled) == {"bf16"}  # only the precision in use is compiled (each holds the weights)
    ref = tiny_detector.predict(tiny_files["images"][:1])["tf"].map
    assert np.corrcoef(det.predict(tiny_files["images"][:1])["tf"].map.ravel(), ref.ravel())[0, 1] > 0.99
    with pytest.raises(MRADError, match="bf16-mlp and fp16 are PyTorch recipes"):
        _detector(tiny_files, tiny_config, "openvino", "bf16-mlp", cache)


def test_missing_openvino_is_a_clear_error(tiny_files, tiny_config, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    assert not engines.openvino_available()
    assert runtime.resolve("predict", "cpu").engine == "torch"
    with pytest.raises(MRADError, match="pip install openvino"):
        _detector(tiny_files, tiny_config, "openvino", cache=tmp_path / "openvino")
    f = tiny_files
    args = ["predict", f["images"][0], "--out", str(tmp_path / "out"), "--model", f["model"], "--backbone",
            f["backbone"], "--heads", f["heads"], "--image-bank", f["image_bank"], "--patch-bank", f["patch_bank"],
            "--device", "cpu"]
    assert main([*args, "--engine", "openvino"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install openvino" in err
    assert main(args) == 0  # without openvino the default engine is PyTorch
    assert json.loads((tmp_path / "out" / "run.json").read_text())["engine"] == "torch"


def test_cli_engine_env(tiny_files, tmp_path, monkeypatch, cache):
    f = tiny_files
    monkeypatch.setenv("MRAD_ENGINE", "openvino")
    out = tmp_path / "out"
    assert main(["predict", f["images"][0], "--variant", "tf", "--out", str(out), "--model", f["model"],
                 "--backbone", f["backbone"], "--image-bank", f["image_bank"], "--patch-bank", f["patch_bank"],
                 "--device", "cpu"]) == 0
    assert json.loads((out / "run.json").read_text()) == {"engine": "openvino", "precision": "fp32", "device": "cpu",
                                                          "variants": ["tf"]}


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_export_writes_loadable_encoder(fmt, tiny_files, tiny_config, tiny_detector, tmp_path, cache):
    if fmt == "onnx":
        pytest.importorskip("onnx")
    out = tmp_path / "export"
    assert main(["export", "--format", fmt, "--out", str(out), "--backbone", tiny_files["backbone"],
                 "--model", tiny_files["model"]]) == 0
    meta = json.loads((out / "mrad_encoder.json").read_text())
    assert meta["format"] == fmt and list(meta["outputs"]) == ["image_feature", "patch_tokens", "proj_tokens"]
    assert meta["inputs"]["pixels"]["shape"] == ["B", 3, 518, 518]
    assert meta["outputs"]["patch_tokens"]["shape"] == ["B", 1369, 64]
    model_file = out / ("mrad_encoder.xml" if fmt == "openvino" else "mrad_encoder.onnx")
    assert sorted(meta["files"]) == sorted(p.name for p in out.iterdir() if p.suffix != ".json")
    compiled = ov.Core().compile_model(ov.Core().read_model(model_file), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    pixels = tiny_detector.pixels(tiny_files["images"])
    result = compiled(pixels.numpy())
    ref = tiny_detector.encode(pixels)
    for name in ("image_feature", "patch_tokens", "proj_tokens"):
        got = torch.from_numpy(result[compiled.output(name)])
        assert got.shape == getattr(ref, name).shape
        assert (got - getattr(ref, name)).abs().max() <= 1e-4 * max(1.0, float(getattr(ref, name).abs().max()))


def test_export_rejects_unknown_format(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "--format", "tflite", "--out", str(tmp_path)])



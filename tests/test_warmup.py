"""A first result without waiting for the OpenVINO conversion (issue 23): on a cold start PyTorch answers while
the encoder converts in the background, then OpenVINO serves; both within the fp32 parity tolerance; the PyTorch
weights are released only once no PyTorch encode is in flight. Synchronised with events, never sleeps."""
import threading

import numpy as np
import pytest

from mrad_core import Detector, engines, warmup

pytest.importorskip("openvino")
WAIT = 120  # seconds: an upper bound for the tiny model's conversion, not a timing assertion


@pytest.fixture
def ir_dir(tmp_path):
    """The cache directory (Settings.cache_dir): the IR goes to <it>/openvino/<key>."""
    return tmp_path / "cache"


@pytest.fixture
def torch_detector(tiny_files, tiny_config):
    f = tiny_files
    return Detector.from_files(f["backbone"], f["heads"], f["image_bank"], f["patch_bank"], config=tiny_config,
                               device="cpu", engine="torch")


def test_cold_start_serves_torch_while_converting_then_switches(torch_detector, tiny_files, ir_dir, monkeypatch):
    det = torch_detector
    reference = det.predict(tiny_files["images"])  # PyTorch fp32, before anything
    in_conversion, may_finish = threading.Event(), threading.Event()
    real_convert = engines.convert_openvino

    def held_convert(backbone):
        in_conversion.set()
        assert may_finish.wait(WAIT)
        return real_convert(backbone)
    monkeypatch.setattr(engines, "convert_openvino", held_convert)
    assert not warmup.ir_cached(det.backbone, ir_dir)
    directory = engines.ir_dir(det.backbone, ir_dir)  # keyed by the weights: known before they are released
    switched = []
    engine = warmup.engine_for(det.backbone, "cpu", "fp32", ir_dir, on_switch=switched.append)
    assert isinstance(engine, warmup.WarmEngine)
    det.engine = engine  # what the runtime does with it (Detector.encode calls engine.encode)
    assert in_conversion.wait(WAIT)
    assert engine.status()["state"] == "converting" and engine.name == "torch"
    assert warmup.engine_for(det.backbone, "cpu", "fp32", ir_dir) is engine  # one conversion per backbone
    before = det.predict(tiny_files["images"])  # answered now, while the conversion runs
    assert engine.served() == {"engine": "torch", "precision": "fp32"}
    may_finish.set()
    assert engine.wait(WAIT) and engine.error is None and engine.join(WAIT)
    assert engine.status()["state"] == "ready" and engine.name == "openvino" and switched == [engine.openvino]
    after = det.predict(tiny_files["images"])
    assert engine.served() == {"engine": "openvino", "precision": "fp32"}
    assert engines.is_converted(directory) and engine.openvino.xml == directory / "encoder.xml"
    assert not det.backbone.has_vision  # released after the switch
    assert det.backbone.openvino_engine is engine.openvino  # shared with other detectors on this backbone
    for v in ("tf", "ft", "clip"):  # the fp32 parity tolerance of tests/test_engines.py
        np.testing.assert_allclose(before[v].score, reference[v].score, atol=1e-6)
        np.testing.assert_allclose(after[v].score, before[v].score, atol=1e-5)
        assert np.abs(after[v].map - before[v].map).max() <= 1e-4


def test_release_waits_for_the_pytorch_encode_in_flight(torch_detector, tiny_files, ir_dir):
    det = torch_detector
    pixels = det.pixels(tiny_files["images"][:1])
    built, may_build = threading.Event(), threading.Event()

    def build():  # the real conversion and compile, then held until the test lets the switch happen
        eng = engines.OpenVINOEngine(det.backbone, cache_dir=ir_dir, release=False)
        built.set()
        assert may_build.wait(WAIT)
        return eng
    engine = warmup.WarmEngine(det.backbone, "cpu", "fp32", ir_dir, build=build)
    inside, may_return = threading.Event(), threading.Event()
    real_encode = engine.torch.encode

    def slow_encode(px, precision):
        inside.set()
        assert may_return.wait(WAIT)
        return real_encode(px, precision)  # reads the vision weights: they must still be there
    engine.torch.encode = slow_encode
    out = {}
    worker = threading.Thread(target=lambda: out.update(enc=engine.encode(pixels, "fp32"),
                                                        served=engine.served()))
    worker.start()
    assert inside.wait(WAIT) and built.wait(WAIT)
    may_build.set()
    assert engine.switch_pending.wait(WAIT)  # OpenVINO takes new encodes; the release waits for the one in flight
    assert det.backbone.has_vision and not engine.ready.is_set()
    assert engine.status()["state"] == "switching"
    new = engine.encode(pixels, "fp32")
    assert engine.served() == {"engine": "openvino", "precision": "fp32"}
    may_return.set()
    worker.join(WAIT)
    assert out["served"] == {"engine": "torch", "precision": "fp32"}
    assert engine.wait(WAIT) and engine.join(WAIT) and not det.backbone.has_vision
    assert (out["enc"].patch_tokens - new.patch_tokens).abs().max() <= 1e-4


def test_a_failed_conversion_keeps_pytorch_serving(torch_detector, tiny_files, ir_dir):
    det = torch_detector

    def build():
        raise engines.EngineError("the conversion ran out of memory")
    engine = warmup.WarmEngine(det.backbone, "cpu", "fp32", ir_dir, build=build)
    assert not engine.wait(WAIT) and engine.join(WAIT)
    assert engine.status()["state"] == "failed" and "out of memory" in engine.status()["error"]
    enc = engine.encode(det.pixels(tiny_files["images"][:1]), "fp32")
    assert engine.served()["engine"] == "torch" and det.backbone.has_vision and enc.image_feature.shape == (1, 32)


def test_cached_ir_or_no_background_means_openvino_at_once(torch_detector, tiny_files, tiny_config, ir_dir):
    det = torch_detector
    with pytest.raises(engines.EngineError, match="bf16-mlp"):
        warmup.WarmEngine(det.backbone, "cpu", "bf16-mlp", ir_dir, start=False)
    with pytest.raises(engines.EngineError, match="cache directory"):
        warmup.WarmEngine(det.backbone, "cpu", "fp32", None, start=False)
    engine = warmup.engine_for(det.backbone, "cpu", "fp32", ir_dir, background=False)  # ZeroGPU: no background
    assert isinstance(engine, engines.OpenVINOEngine) and engine.info["converted"]
    f = tiny_files
    from mrad_core.backbone import Backbone
    again = Backbone.load(f["backbone"], tiny_config)
    assert warmup.ir_cached(again, ir_dir)
    warm = warmup.engine_for(again, "cpu", "fp32", ir_dir)  # cached: compiled in seconds, no PyTorch phase
    assert isinstance(warm, engines.OpenVINOEngine) and not warm.info["converted"]


def test_build_time_conversion_only_with_a_local_backbone(tiny_files, tiny_config, tmp_path, monkeypatch):
    """The Docker build's step (python -m mrad_core.warmup): converts when the backbone file is here, else says the
    first start will, without downloading."""
    from mrad_core.artefacts import hub
    line = warmup.convert_if_local(tiny_files["backbone"], tiny_files["model"], tmp_path / "ov")
    assert line.startswith("OpenVINO IR of the encoder converted")
    assert len(list((tmp_path / "ov" / "openvino").glob("*/encoder.xml"))) == 1
    assert "already cached" in warmup.convert_if_local(tiny_files["backbone"], tiny_files["model"], tmp_path / "ov")

    def missing(*a, allow_download=True, **k):
        assert not allow_download  # never downloads at build time
        raise hub.HubError("not in the Hugging Face cache")
    monkeypatch.setattr(hub, "backbone_weights", missing)
    assert "not on this machine" in warmup.convert_if_local(None, None, tmp_path / "ov2")
    assert not (tmp_path / "ov2").exists()


# ---------------------------------------------------------------- in the app's Service
def warm_service(tiny_files, cache_dir, **kw):
    from mrad_core.service import Service
    return Service(files={k: tiny_files[k] for k in ("backbone", "heads", "image_bank", "patch_bank")},
                   model=tiny_files["model"], device="cpu", engine="openvino", precision="fp32",
                   cache_dir=cache_dir, calibration=False, **kw)


def test_the_app_answers_on_pytorch_while_converting_and_says_who_served(tiny_files, ir_dir, monkeypatch):
    """A cold start of the app's Service with OpenVINO chosen: the first result is PyTorch fp32's (the /predict
    JSON and the card say so, and the status line says the conversion runs), the next after the switch
    OpenVINO's, both within the fp32 parity tolerance."""
    from mrad_core import viz
    from mrad_core.ui.text import Thresholds, summary_md
    in_conversion, may_finish = threading.Event(), threading.Event()
    real_convert = engines.convert_openvino

    def held_convert(backbone):
        in_conversion.set()
        assert may_finish.wait(WAIT)
        return real_convert(backbone)
    monkeypatch.setattr(engines, "convert_openvino", held_convert)
    service = warm_service(tiny_files, ir_dir)
    image = tiny_files["images"][0]
    try:
        first = service.analyze(image, source="env")
        warm = service.warm_engine()
        assert isinstance(warm, warmup.WarmEngine) and in_conversion.wait(WAIT)
        assert first.summary()["engine"] == "torch" and first.summary()["precision"] == "fp32"
        assert "(torch, fp32)" in summary_md(first, Thresholds(0.5), viz.View())
        assert "converting the image encoder in the background" in service.status()
        assert service.analyze(image, source="env").setup["engine"] == "torch"  # re-used encoding: who made it
    finally:
        may_finish.set()
        assert warm.wait(WAIT) and service.join_background(WAIT)  # no thread outlives the test
    assert warm.error is None and "converting" not in service.status()
    service.encodings = type(service.encodings)(8)  # encode the same image again, now on OpenVINO
    after = service.analyze(image, source="env")
    assert (after.setup["engine"], after.setup["precision"]) == ("openvino", "fp32") and not after.reused
    assert service.detector("env").backbone.openvino_engine is warm.openvino
    for v, out in first.outputs.items():  # the fp32 parity tolerance; the app's display maps are float16, so
        assert abs(after.outputs[v].score - out.score) <= 1e-5  # 1e-4 plus one float16 step at their values
        step = np.spacing(np.abs(out.map).astype(np.float16)).astype(np.float32)
        assert (np.abs(after.outputs[v].map.astype(np.float32) - out.map.astype(np.float32)) <= 1e-4 + step).all()


def test_the_app_converts_in_place_on_zerogpu_or_when_cached(tiny_files, ir_dir):
    """No background work on ZeroGPU: the conversion runs in the call (today's behaviour); with the IR cached,
    OpenVINO serves at once."""
    assert not warm_service(tiny_files, ir_dir, emulate_zero_gpu=True)._background_conversion()  # it forks
    zero = warm_service(tiny_files, ir_dir, zero_gpu=True)
    det = zero.detector("env")
    assert isinstance(det.engine, engines.OpenVINOEngine) and det.engine.info["converted"]
    assert zero.warm_engine() is None
    assert zero.analyze(tiny_files["images"][0], source="env").setup["engine"] == "openvino"
    again = warm_service(tiny_files, ir_dir)  # a new process's Service: the IR is cached
    det = again.detector("env")
    assert isinstance(det.engine, engines.OpenVINOEngine) and not det.engine.info["converted"]
    assert again.warm_engine() is None


def test_the_app_auto_uses_this_machines_measurement(tiny_files, tmp_path, monkeypatch):
    """`auto` in the app: this machine's cached measurement (mrad doctor's, same key) decides, and the status says
    the runtime; without one, runtime.resolve's usual answer."""
    from mrad_core import autotune, runtime
    from mrad_core.artefacts.digest import file_sha256
    from mrad_core.service import Service

    def service():
        return Service(files={"backbone": tiny_files["backbone"]}, model=tiny_files["model"], device="cpu",
                       cache_dir=tmp_path)
    unmeasured = service().runtime
    backbone_id = autotune.backbone_identity(file_sha256(tiny_files["backbone"], tmp_path), tiny_files["model"],
                                             service().config.image_size)
    rows = [{"engine": "torch", "precision": "fp32", "s_per_image": 3.0, "max_abs": 0.0, "min_corr": 1.0,
             "within_bounds": True},
            {"engine": "torch", "precision": "bf16-mlp", "s_per_image": 1.0, "max_abs": 1e-3, "min_corr": 0.9999,
             "within_bounds": True}]
    key = autotune.cache_key(runtime.cpu_flags(), autotune.library_versions(), backbone_id)
    autotune.save_decision(tmp_path, {"format": autotune.FORMAT, "key": key, "cpu_class": "x",
                                      "choice": {"engine": "torch", "precision": "bf16-mlp"}, "candidates": rows})
    measured = service()
    assert (measured.engine, measured.precision) == ("torch", "bf16-mlp") and "measured" in measured.runtime.why
    assert "engine torch · precision bf16-mlp (auto: measured on this machine)" in measured.status()
    assert "measured" not in unmeasured.why

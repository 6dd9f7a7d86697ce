"""The app's model calls run the way a ZeroGPU Space runs them: each call in a fresh fork of the main process, plain
data pickled in and out, nothing kept in worker memory (MRAD_ZEROGPU_EMULATE=1 does exactly this on a CPU). A
prediction, a custom bank built in one call and used in the next, the calibrated view after a prediction, a user
error whose message arrives intact, and no background thread left touching the model."""
import sys
import threading
import types
from pathlib import Path

import gradio as gr
import pytest

from mrad_core.errors import MRADError
from mrad_core.settings import Settings
from mrad_core.zerogpu import gpu_call

ASSETS = Path(__file__).resolve().parents[1] / "assets"
FILES = ("backbone", "heads", "image_bank", "patch_bank")
CONTROLS = (0.5, 0.5, 0.5, "turbo", True, False)  # image/pixel threshold, opacity, colormap, contours, binary


def no_progress(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def forked(tiny_files):
    """The app around a service whose every model call runs in a fresh fork; the model is loaded in the parent
    first, as app.py does on ZeroGPU."""
    import app
    from mrad_core.service import Service
    service = Service(files={k: tiny_files[k] for k in FILES}, model=tiny_files["model"], device="cpu",
                      precision="fp32", emulate_zero_gpu=True)
    service.preload("env")
    return service, app.build_demo(service).mrad


def test_prediction_runs_in_a_fresh_worker(forked, tiny_files, tiny_detector):
    service, ui = forked
    before = dict(service.calls)
    result = ui.detect.predict({"path": tiny_files["images"][1]})
    expected = tiny_detector.predict([tiny_files["images"][1]])
    for v, r in expected.items():
        assert result["variants"][v]["score"] == pytest.approx(float(r.score[0]), abs=1e-4)
    assert dict(service.calls) == before  # the work happened in the child, not here
    assert len(service.encodings) == 0  # and nothing the worker cached came back


def test_custom_bank_built_in_one_call_is_used_in_the_next(forked):
    service, ui = forked
    normal = [str(ASSETS / "examples" / n) for n in ("metal_good.png", "wood_good.png")]
    report, files, bank_id, _, source = ui.bank.build_bank_files(normal, [], "line 4", progress=no_progress)
    assert "Bank ready" in report and source == "custom" and all(Path(f).is_file() for f in files)
    result = ui.detect.predict({"path": str(ASSETS / "examples" / "metal_scratch.png")}, ["tf"], "custom",
                        bank_id=bank_id)  # another fresh worker: it loads the bank from its files
    assert "My bank" in result["source"] and 0 <= result["variants"]["tf"]["score"] <= 1


def test_calibrated_view_after_a_prediction(forked, tiny_files):
    service, ui = forked
    d = ui.detect
    out = ui.detect.detect_image(tiny_files["images"][0], ["tf", "ft"], "env", None, {}, *CONTROLS, "calibrated",
                          progress=no_progress)
    a, levels = out[ui.analysis], out[ui.levels]
    assert a.calibrated and set(levels["env"]) == {"tf", "ft"}  # levels came back with the result
    rendered = ui.detect.render(a, *CONTROLS, "calibrated")  # in the main process, from the session's state
    assert "calibrated" in rendered[d.cards["tf"]] and "not calibrated" not in rendered[d.cards["tf"]]
    # the levels the session carries reach later results: with them a raw result is calibrated at once
    carried = ui.detect.detect_image(tiny_files["images"][1], ["tf"], "env", None, levels, *CONTROLS, "raw",
                              progress=no_progress)[ui.analysis]
    assert carried.outputs["tf"].calibration == levels["env"]["tf"]
    raw = ui.detect.detect_image(tiny_files["images"][1], ["tf"], "env", None, {}, *CONTROLS, "raw",
                          progress=no_progress)[ui.analysis]
    assert not raw.calibrated  # a fresh worker knows nothing the session did not give it
    again = ui.detect.calibrate(raw, None, levels, *CONTROLS, "calibrated")[ui.analysis]
    assert again.outputs["tf"].calibration == levels["env"]["tf"]


def test_user_error_arrives_intact(forked, tmp_path):
    service, ui = forked
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(gr.Error) as err:
        ui.detect.predict({"path": str(bad)})
    assert "not an image format" in err.value.message and "broken.png" in err.value.message
    with pytest.raises(gr.Error, match="unknown: xl"):
        ui.detect.predict({"path": str(ASSETS / "examples" / "pill_good.png")}, ["xl"])


def test_no_background_thread_touches_the_model(forked, tiny_files):
    service, ui = forked
    ui.detect.detect_image(tiny_files["images"][0], ["tf"], "env", None, {}, *CONTROLS, "calibrated", progress=no_progress)
    assert not [t for t in threading.enumerate() if t.name.startswith("mrad")]


def test_on_zero_gpu_the_spaces_decorator_wraps_the_user_errors(monkeypatch):
    """On a ZeroGPU Space: spaces.GPU with a duration from the call's arguments, and user errors converted inside
    it (a worker's MRADError would otherwise reach the user as 'ZeroGPU worker error: MRADError')."""
    seen = {}

    def GPU(duration=None):
        seen["duration"] = duration
        return lambda fn: (seen.setdefault("inner", fn), fn)[1]

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=GPU))
    settings = Settings.from_env({"SPACES_ZERO_GPU": "true"})

    @gpu_call(settings, duration=lambda images: 10 + 2 * len(images))
    def work(images):
        import torch
        seen["threads"] = torch.get_num_threads()
        raise MRADError(f"{len(images)} images are too many")

    threads = __import__("torch").get_num_threads()
    try:
        with pytest.raises(gr.Error, match="3 images are too many"):
            work([1, 2, 3])
        assert seen["duration"]([1, 2, 3]) == 16 and seen["threads"] == 1  # first statement in the worker
    finally:
        __import__("torch").set_num_threads(threads)

"""The app's model calls run the way a ZeroGPU Space runs them: each call in a fresh fork of the main process, plain
data pickled in and out, nothing kept in worker memory (MRAD_ZEROGPU_EMULATE=1 does exactly this on a CPU). A
prediction, a custom bank built in one call and used in the next, the calibrated view after a prediction, a user
error whose message arrives intact, and no background thread left touching the model. The GPU durations of every model
call come from one table (mrad_core/ui/gpu.py), and on a Space the app factory loads the model before serving."""
import sys
import threading
import types
from pathlib import Path

import gradio as gr
import pytest

from mrad_core.errors import MRADError
from mrad_core.settings import Settings
from mrad_core.ui import gpu
from mrad_core.ui.gpu import gpu_call

ASSETS = Path(__file__).resolve().parents[1] / "assets"
FILES = ("backbone", "heads", "image_bank", "patch_bank")
CONTROLS = (0.5, 0.5, 0.5, "turbo", True, False)  # image/pixel threshold, opacity, colormap, contours, binary


def no_progress(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def forked(tiny_files):
    """The app around a service whose every model call runs in a fresh fork; the model is loaded in the parent
    first, as app.py does on ZeroGPU."""
    from mrad_core.ui import create_app
    settings = Settings.from_env(files={k: tiny_files[k] for k in FILES}, model=tiny_files["model"], device="cpu",
                                 precision="fp32", emulate_zero_gpu=True)
    page = create_app(settings).mrad
    page.service.preload("env")
    return page.service, page


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


class FakeSpaces:
    """A stand-in `spaces` module: records each spaces.GPU decoration's duration; the function runs as it is."""

    def __init__(self):
        self.durations = {}

    def GPU(self, duration=None):
        def decorate(fn):
            self.durations[fn] = duration
            return fn
        return decorate


def test_every_model_call_takes_its_duration_from_the_table(monkeypatch, tiny_files):
    """On a ZeroGPU Space each model call of the page is a spaces.GPU call whose duration is base + per image × the
    images the table says it encodes; and create_app loads the model before the page exists (every worker forks
    from this process)."""
    from mrad_core.service import Service
    from mrad_core.ui import create_app
    spaces = FakeSpaces()
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    settings = Settings.from_env({"SPACES_ZERO_GPU": "1", "MRAD_GPU_SECONDS": "3", "MRAD_GPU_SECONDS_BASE": "7"},
                                 files={k: tiny_files[k] for k in FILES}, model=tiny_files["model"], device="cpu",
                                 precision="fp32", calibration=False)
    preloaded = []
    monkeypatch.setattr(Service, "preload", lambda self, source=None: preloaded.append(source))
    page = create_app(settings).mrad
    assert preloaded == [None]  # the default source's model, loaded once, before the page was built
    duration = {name: spaces.durations[fn] for name, fn in (
        ("analyze", page.gpu_analyze), ("calibrate", page.gpu_calibrate), ("score_chunk", page.gpu_chunk),
        ("build_bank", page.gpu_build_bank), ("teach", page.teach.gpu_add), ("profile", page.teach.gpu_calibrate),
        ("explain", page.teach.gpu_explain))}
    assert duration["analyze"]("image.png", ["tf"], "env", None) == 7 + 3 * 1
    assert duration["analyze"]("image.png", ["tf"], "env", None, calibrate=True) == 7 + 3 * 5  # + the references
    assert duration["calibrate"](None, None) == 7 + 3 * 4
    assert duration["score_chunk"]([0] * 8, ["tf"]) == 7 + 3 * 8
    assert duration["build_bank"](["a", "b"], ["c"], "bank") == duration["build_bank"](["a", "b", "c"]) == 7 + 3 * 3
    assert duration["teach"](None, None, "x.png", calibrate=False) == 7 + 3 * 2
    assert duration["teach"](None, None, "x.png", calibrate=True) == 7 + 3 * 6
    assert duration["profile"](["a"] * 5, ["tf"]) == 7 + 3 * 5
    assert duration["explain"]("x.png", ["tf"], "env") == 7 + 3


def test_the_reference_images_of_the_table_are_those_the_calibrated_scale_uses():
    assert gpu.REFERENCE_IMAGES == len(list((ASSETS / "examples").glob("*_good.png")))


def test_the_app_factory_has_no_side_effects_on_import():
    """Importing the UI package (or its factory) reads no settings (the only reader of the environment) and builds
    no Service (nor, so, a model)."""
    import subprocess
    code = ("import sys, mrad_core.service as s, mrad_core.settings as t\n"
            "t.Settings.from_env = lambda *a, **k: sys.exit('the settings were read on import')\n"
            "s.Service.__init__ = lambda *a, **k: sys.exit('a Service was built on import')\n"
            "import mrad_core.ui, mrad_core.ui.app, mrad_core.ui.sessions, mrad_core.ui.gpu\n"
            "from mrad_core.ui import create_app\n"
            "print('clean')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0 and run.stdout.strip() == "clean", run.stderr

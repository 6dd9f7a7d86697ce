"""Progress per image for the app's long model calls on a CPU (issue 20, item 5): the calibrated scale, Batch,
Evaluate and the Bank tab report after each image, not after each block of 8, through the handlers' progress; the
model calls stay the same (each image encoded once)."""
import re

import pytest

from tiny_model import synthetic_image

FILES = ("backbone", "heads", "image_bank", "patch_bank")
VARIANTS = ["tf", "ft", "clip"]


@pytest.fixture(scope="module")
def ui(tiny_files):
    from mrad_core.service import Service
    from mrad_core.ui import create_app
    service = Service(files={k: tiny_files[k] for k in FILES}, model=tiny_files["model"], device="cpu",
                      precision="fp32", batch_size=8)
    return service, create_app(service.settings, service).mrad


class Recorder:
    """A gr.Progress stand-in that keeps what the handler reported: [(fraction, text)]."""

    def __init__(self):
        self.seen = []

    def __call__(self, fraction, desc=None, **kwargs):
        self.seen.append((fraction, desc))

    def counts(self, pattern) -> list:
        """The image counts of the reports whose text matches `pattern` (one group: the count)."""
        return [int(m.group(1)) for _, text in self.seen if text and (m := re.search(pattern, text))]


def images(tmp_path, n, seed=0, defect=False):
    paths = []
    for i in range(n):
        img, mask = synthetic_image(seed + i, defect=defect)
        paths.append(tmp_path / f"{'bad' if defect else 'good'}_{seed + i}.png")
        img.save(paths[-1])
        if defect:
            mask.save(tmp_path / f"{'bad'}_{seed + i}_mask.png")
    return [str(p) for p in paths]


def test_the_calibrated_scale_reports_each_reference_image(ui, tiny_files):
    service, page = ui
    n = len(service.calibrator.references)
    assert n > 1
    a = service.analyze(tiny_files["images"][0], VARIANTS, "env")
    before = service.calls["encode"]
    progress = Recorder()
    out = page.detect.calibrate(a, None, {}, 0.5, 0.5, 0.5, "turbo", True, False, "calibrated", progress=progress)
    assert out[page.analysis].calibrated
    assert progress.counts(r"reference image (\d+) of") == list(range(1, n + 1))
    assert service.calls["encode"] - before == n  # each reference encoded once
    fractions = [f for f, _ in progress.seen]
    assert fractions == sorted(fractions) and all(0 <= f <= 1 for f in fractions)


def test_batch_reports_each_image(ui, tmp_path):
    service, page = ui
    paths = images(tmp_path, 11)
    before = service.calls["encode"]
    progress = Recorder()
    page.batch.predict_batch(paths, None, VARIANTS, "env", 0.5, 0.5, "raw", None, progress=progress)
    assert progress.counts(r"encoded image (\d+) of 11") == list(range(1, 12))  # 11 images, chunks of 8
    assert service.calls["encode"] - before == 11


def test_evaluate_reports_each_image(ui, tmp_path):
    service, page = ui
    good, bad = images(tmp_path, 5, seed=10), images(tmp_path, 5, seed=30, defect=True)
    before = service.calls["encode"]
    progress = Recorder()
    page.evaluate.evaluate(None, good, bad, None, VARIANTS, "env", None, 0.05, 0, progress=progress)
    assert progress.counts(r"encoded image (\d+) of 10") == list(range(1, 11))
    assert service.calls["encode"] - before == 10


def test_the_bank_tab_reports_each_image(ui, tmp_path):
    service, page = ui
    normal = images(tmp_path, 10, seed=50)
    before = service.calls["encode"]
    progress = Recorder()
    report = page.bank.build_bank_files(normal, None, "line 9", progress=progress)[0]
    assert "Bank ready" in report
    counts = progress.counts(r"encoded bank image (\d+) of (?:\d+)")
    assert counts == list(range(1, len(counts) + 1)) and len(counts) >= 10  # the synthetic defects count too
    assert service.calls["encode"] - before == len(counts)


def test_calibrate_in_the_make_it_yours_panel_reports_each_image(ui, tmp_path, monkeypatch):
    """Calibrate with 7 known-good images (blocks of 8): a report after each image, each image encoded once."""
    service, page = ui
    paths = images(tmp_path, 7, seed=70)
    det = service.scorer("env", None).detector
    encoded, encode = [], det.encode
    monkeypatch.setattr(det, "encode", lambda batch, *a, **k: encoded.append(len(batch)) or encode(batch, *a, **k))
    progress = Recorder()
    controls = dict(image_threshold=0.5, pixel_threshold=0.5, opacity=0.5, colormap="turbo", contours=True,
                    binary=False, normalisation="raw")
    out = page.teach.calibrate(paths, 10, "line 7", "tf", VARIANTS, "env", None, None, progress=progress,
                               **controls)
    assert out[page.teach.profile].images == [p.rsplit("/", 1)[-1] for p in paths]
    assert progress.counts(r"known-good image (\d+) of 7") == [1] + list(range(1, 8))  # 'scoring 1', then each
    assert sum(encoded) == 7  # each image encoded once
    fractions = [f for f, _ in progress.seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1

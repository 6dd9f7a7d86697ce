"""`mrad eval` end to end on the tiny model: metrics equal an independent per-image computation, outputs, errors."""
import csv
import json
import math

import numpy as np
import pytest

from mrad_core import Detector

from mrad_core import load_mask
from mrad_core.cli import main
from mrad_core.datasets import read_dataset
from mrad_core.evaluate import evaluate, format_table
from mrad_core.metrics import METRICS, class_metrics
from synthetic_datasets import make_dataset


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    make_dataset("mvtec", root, n_normal=2, n_bad=1)  # bottle and cable, 4 test images each
    return root


def _args(tiny_files, root, out, *extra, dataset="mvtec", heads=True):
    f = tiny_files
    model = ["--model", f["model"], "--backbone", f["backbone"], "--image-bank", f["image_bank"],
             "--patch-bank", f["patch_bank"], "--device", "cpu", "--workers", "0"]
    if heads:
        model += ["--heads", f["heads"]]
    return ["eval", "--dataset", dataset, "--data-path", str(root), "--out", str(out), *model, *extra]


def test_eval_matches_per_image_predictions(mvtec, tiny_files, tiny_detector, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(_args(tiny_files, mvtec, out, "--batch-size", "1", "--dump-overlays", "1")) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    assert report["dataset"] == "mvtec" and report["variants"] == ["tf", "ft", "clip"] and report["n_images"] == 8

    # independently: predict each image on its own, then the metric functions per class
    records = read_dataset("mvtec", mvtec)
    for v in ("tf", "ft", "clip"):
        for cls in ("bottle", "cable"):
            recs = [r for r in records if r.cls_name == cls]
            res = [tiny_detector.predict([r.image], [v])[v] for r in recs]
            want = class_metrics([r.anomaly for r in recs], [x.score[0] for x in res],
                                 np.stack([load_mask(r.mask).numpy() for r in recs]), np.stack([x.map[0] for x in res]))
            got = report["metrics"][v]["classes"][cls]
            for k in METRICS:
                assert got[k] == pytest.approx(want[k], abs=1e-9), (v, cls, k)
            assert got["n_images"] == 4 and got["n_anomalous"] == 2
        mean = report["metrics"][v]["mean"]
        for k in METRICS:
            cls_vals = [report["metrics"][v]["classes"][c][k] for c in ("bottle", "cable")]
            assert mean[k] == pytest.approx(np.mean(cls_vals))
        assert f"MRAD-{v.upper()} on mvtec" in printed

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [(r["variant"], r["class"]) for r in rows] == [(v, c) for v in ("tf", "ft", "clip")
                                                          for c in ("bottle", "cable", "mean")]
    assert float(rows[0]["image_auroc"]) == pytest.approx(report["metrics"]["tf"]["classes"]["bottle"]["image_auroc"])
    scores = list(csv.DictReader(open(out / "scores.csv")))
    assert [s["path"] for s in scores] == [r.image for r in records]
    first = tiny_detector.predict([records[0].image], ["ft"])["ft"].score[0]
    assert float(scores[0]["score_ft"]) == pytest.approx(first, abs=1e-6)
    overlays = sorted(p.relative_to(out / "overlays").as_posix() for p in (out / "overlays").rglob("*.png"))
    assert overlays == sorted(f"{v}/{c}/0000_000.png" for v in ("tf", "ft", "clip") for c in ("bottle", "cable"))
    assert (out / "table.md").read_text().count("| mean") == 3


def test_encodes_each_image_once_for_all_variants(mvtec, tiny_detector):
    class Counting:
        calls = 0

        def encode(self, pixels):
            Counting.calls += len(pixels)
            return tiny_detector.encode(pixels)

        def score_batch(self, pixels, variants):  # the Detector's own, through this encode
            return Detector.score_batch(self, pixels, variants)

        def __getattr__(self, name):
            return getattr(tiny_detector, name)

    records = read_dataset("mvtec", mvtec)
    report = evaluate(Counting(), records, ("tf", "ft", "clip"), batch_size=3, progress=False)
    assert Counting.calls == len(records)
    assert set(report["metrics"]) == {"tf", "ft", "clip"} and len(report["images"]) == len(records)


def test_selection_and_banks_only(mvtec, tiny_files, tmp_path, capsys):
    out = tmp_path / "ev"
    args = _args(tiny_files, mvtec, out, "--variant", "tf", "--classes", "cable", "--limit", "3", heads=False)
    assert main(args) == 0  # MRAD-TF needs the banks only
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["metrics"]) == ["tf"] and list(report["metrics"]["tf"]["classes"]) == ["cable"]
    assert report["metrics"]["tf"]["classes"]["cable"]["n_images"] == 3
    assert main(_args(tiny_files, mvtec, out, "--classes", "bottle,wheel")) == 2
    assert "unknown class(es) wheel" in capsys.readouterr().err


def test_undefined_metrics_show_as_dashes(tiny_files, tmp_path, capsys):
    """HeadCT has no masks: pixel metrics are undefined (null in JSON, "-" in the table)."""
    root = tmp_path / "headct"
    make_dataset("headct", root)
    assert main(_args(tiny_files, root, tmp_path / "ev", "--variant", "tf", dataset="headct")) == 0
    m = json.loads((tmp_path / "ev/metrics.json").read_text())["metrics"]["tf"]
    assert m["classes"]["brain"]["pixel_auroc"] is None and m["mean"]["pixel_aupro"] is None
    assert 0 <= m["classes"]["brain"]["image_auroc"] <= 1
    table = format_table({"classes": {"brain": {k: math.nan for k in METRICS}},
                          "mean": {k: (0.5 if k == "image_ap" else math.nan) for k in METRICS}}, "t")
    assert [c.strip() for c in table.splitlines()[-1].split("|")[1:-1]] == ["mean", "-", "-", "-", "50.0"]
    assert "| brain |" in capsys.readouterr().out

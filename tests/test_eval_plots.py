"""Thresholds from labels, the plot figures (checked as Figure objects) and `mrad eval --plots` on the tiny model."""
import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from mrad_core import plots
from mrad_core.cli import main
from mrad_core.evaluate import format_table
from mrad_core.metrics import METRICS
from mrad_core.thresholds import f1_threshold, fpr_threshold, thresholds
from synthetic_datasets import make_dataset

LABELS = [0, 0, 0, 1, 1, 1]
SCORES = [0.1, 0.2, 0.6, 0.4, 0.7, 0.9]


def test_f1_optimal_threshold_on_a_hand_made_list():
    # flag >= 0.4: 0.4, 0.6, 0.7, 0.9 -> tp 3, fp 1: precision 3/4, recall 1, F1 6/7 (0.7: 0.8; 0.6: 2/3; 0.2: 0.75)
    t = f1_threshold(LABELS, SCORES)
    assert t["threshold"] == pytest.approx(0.4)
    assert t["f1"] == pytest.approx(6 / 7) and t["precision"] == pytest.approx(0.75) and t["recall"] == 1.0
    assert (t["tp"], t["fp"], t["fn"], t["tn"]) == (3, 1, 0, 2) and t["fpr"] == pytest.approx(1 / 3)
    # ties: flagging >= 0.5 gives F1 0.8, >= 0.9 gives 2/3
    assert f1_threshold([0, 1, 1], [0.5, 0.5, 0.9])["threshold"] == pytest.approx(0.5)
    assert f1_threshold([1, 1], [0.2, 0.3]) is None


def test_false_alarm_threshold():
    strict = fpr_threshold(LABELS, SCORES, 0.0)  # no good image flagged: 0.7 (catches 0.7 and 0.9)
    assert strict["threshold"] == pytest.approx(0.7) and strict["fpr"] == 0 and strict["recall"] == pytest.approx(2 / 3)
    loose = fpr_threshold(LABELS, SCORES, 0.34)  # one good image of three may be flagged: 0.4 catches all
    assert loose["threshold"] == pytest.approx(0.4) and loose["recall"] == 1.0 and loose["max_fpr"] == 0.34
    never = fpr_threshold([0, 1], [0.9, 0.1], 0.0)  # the good image scores highest: nothing can be flagged
    assert never["threshold"] > 0.9 and never["tp"] == never["fp"] == 0
    one = thresholds([0, 0], [0.1, 0.2])
    assert one["f1"] is None and one["fpr"] is None and "only good images" in one["reason"]
    with pytest.raises(ValueError):
        fpr_threshold(LABELS, SCORES, 1.5)


def test_negative_zero_shows_as_zero():
    vm = {"classes": {"a": {k: -1e-6 for k in METRICS}}, "mean": {k: -1e-6 for k in METRICS}}
    last = format_table(vm, "t").splitlines()[-1]
    assert "-0.0" not in last and last.count(" 0.0 ") == 4
    assert plots.pct(-1e-6) == "0.0%" and plots.pct(math.nan) == "–"


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_roc_pr_figure_panels():
    labels = np.array([0, 0, 0, 1, 1])
    scores = {"tf": np.array([0.1, 0.5, 0.3, 0.6, 0.4]), "ft": np.array([0.1, 0.2, 0.3, 0.6, 0.7])}
    fig = plots.roc_pr_figure(labels, scores, "bottle")
    roc, pr = fig.axes
    assert roc.get_title() == "ROC curve" and pr.get_title() == "Precision-recall curve"
    assert "false positive rate" in roc.get_xlabel() and "recall" in pr.get_xlabel()
    assert "bottle" in fig.get_suptitle() and "3 good, 2 defective" in fig.get_suptitle()
    for v in scores:
        auroc, ap = plots.pct(roc_auc_score(labels, scores[v])), plots.pct(average_precision_score(labels, scores[v]))
        assert f"{plots.name(v)} (AUROC {auroc})" in _legend(roc)
        assert f"{plots.name(v)} (AP {ap})" in _legend(pr)
    assert len(roc.get_lines()) == 3  # chance + two variants
    pooled = plots.roc_pr_figure(labels, scores, "all", {"tf": {"image_auroc": 0.9, "image_ap": 0.8}})
    assert any(t.endswith("class mean 90.0%)") for t in _legend(pooled.axes[0]))
    assert any(t.endswith("class mean 80.0%)") for t in _legend(pooled.axes[1]))
    one = plots.roc_pr_figure([0, 0], {"tf": [0.1, 0.2]}, "c")
    assert any("undefined: only good images" in t.get_text() for t in one.axes[0].texts)


def test_histogram_pro_and_gallery_figures(tmp_path):
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = {"tf": np.array(SCORES), "clip": np.array(SCORES)[::-1]}
    th = {v: thresholds(labels, s, 0.0) for v, s in scores.items()}
    fig = plots.histogram_figure(labels, scores, th, "bottle")
    assert [ax.get_title() for ax in fig.axes] == ["MRAD-TF", "MRAD-CLIP"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "image anomaly score" and len(ax.patches) == 40  # two histograms of 20 bins
    vlines = {round(float(line.get_xdata()[0]), 6) for line in ax.get_lines()}
    assert vlines == {round(th["tf"]["f1"]["threshold"], 6), round(th["tf"]["fpr"]["threshold"], 6)}
    assert any(t.startswith("F1-optimal 0.400") for t in _legend(ax)) and "good (3)" in _legend(ax)

    fprs, pros = np.linspace(0.29, 0, 30), np.linspace(1, 0, 30)
    pro = plots.pro_figure({"tf": (fprs, pros, 0.75), "ft": (None, None, "no defect masks given")}, "bottle")
    (ax,) = pro.axes
    assert "PRO curve" in ax.get_title() and ax.get_xlim() == (0, 0.3)
    assert _legend(ax) == ["MRAD-TF (AUPRO 75.0%)", "MRAD-FT: undefined (no defect masks given)"]
    grid = plots.pro_grid_figure({"tf": {"a": (fprs, pros, 0.5), "b": (fprs, pros, 0.7)}}, "all", {"tf": 0.6})
    assert grid.axes[0].get_title() == "MRAD-TF: mean AUPRO 60.0%" and len(grid.axes[0].get_lines()) == 2

    img = np.zeros((20, 30, 3), np.uint8)
    rows = [dict(image=img, overlay=img, mask=np.zeros((20, 30), bool), caption=f"row {i}") for i in range(2)]
    gal = plots.gallery_figure(rows, "MRAD-TF on bottle")
    assert len(gal.axes) == 6 and all(len(a.images) == 1 for a in gal.axes)
    assert [sub.get_suptitle() for sub in gal.subfigs] == ["row 0", "row 1"]  # each row's caption
    assert [a.get_title() for a in gal.axes[:3]] == ["image", "anomaly map", "ground truth (empty)"]
    path = plots.save_png(gal, tmp_path / "g" / "gallery.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (900, round(100 * (3.0 * 2 + 0.5)))
    assert not list((tmp_path / "g").glob(".*"))  # no temporary file left


@pytest.fixture(scope="module")
def plotted(tmp_path_factory, tiny_files):
    root = tmp_path_factory.mktemp("mvtec")
    make_dataset("mvtec", root, n_normal=2, n_bad=2)  # bottle and cable, 6 test images each
    out = tmp_path_factory.mktemp("ev")
    f = tiny_files
    assert main(["eval", "--dataset", "mvtec", "--data-path", str(root), "--out", str(out), "--plots",
                 "--gallery", "1", "--false-alarm-rate", "0.5", "--model", f["model"], "--backbone", f["backbone"],
                 "--image-bank", f["image_bank"], "--patch-bank", f["patch_bank"], "--heads", f["heads"],
                 "--device", "cpu", "--workers", "0"]) == 0
    return root, out


def test_eval_plots_writes_figures_and_thresholds(plotted):
    root, out = plotted
    analysis = json.loads((out / "analysis.json").read_text())
    want = {f"plots/{c}/{n}.png" for c in ("bottle", "cable")
            for n in ("roc_pr", "pro", "histograms", "gallery_tf", "gallery_ft", "gallery_clip")}
    want |= {f"plots/all_classes/{n}.png" for n in ("roc_pr", "histograms", "pro")}
    assert set(analysis["plots"]) == want
    for rel in want:
        with Image.open(out / rel) as im:
            im.verify()
            assert im.format == "PNG"
    # thresholds are those of the scores in scores.csv, per class and pooled
    rows = list(csv.DictReader(open(out / "scores.csv")))
    for v in ("tf", "ft", "clip"):
        for cls in ("bottle", "cable", None):
            sel = [r for r in rows if cls is None or r["class"] == cls]
            labels, scores = [int(r["label"]) for r in sel], [float(r[f"score_{v}"]) for r in sel]
            got = analysis["thresholds"][v][cls or "all_classes"]
            assert got["f1"]["threshold"] == pytest.approx(f1_threshold(labels, scores)["threshold"], abs=1e-5)
            assert got["fpr"]["threshold"] == pytest.approx(fpr_threshold(labels, scores, 0.5)["threshold"], abs=1e-5)
            assert got["fpr"]["fpr"] <= 0.5
    # mistakes are the gallery images on the wrong side of the class's F1-optimal threshold
    for m in analysis["mistakes"]:
        t = analysis["thresholds"][m["variant"]][m["class"]]["f1"]["threshold"]
        assert (m["score"] >= t) != bool(m["label"]) and (out / m["overlay"]).is_file()
    assert sorted(p.parent.name for p in (out / "overlays" / "tf").glob("*/*.png")) == ["bottle"] * 2 + ["cable"] * 2


def test_analysis_explains_undefined_metrics(tmp_path):
    """A class with only good images and one without masks: no thresholds, reasons instead of numbers."""
    from mrad_core.eval_analysis import EvalAnalysis
    from mrad_core.datasets import Record
    from tiny_model import synthetic_image

    records = []
    for i in range(3):
        synthetic_image(i, (40, 52))[0].save(tmp_path / f"{i}.png")
        records.append(Record(str(tmp_path / f"{i}.png"), None, "c", int(i == 2)))
    rng = np.random.default_rng(0)
    maps, masks = rng.random((3, 2, 16, 16)).astype(np.float32), np.zeros((3, 16, 16), np.uint8)
    a = EvalAnalysis(tmp_path / "out", ("tf", "ft"), gallery=2)
    a("good_only", records[:2], np.array([0, 0]), np.array([[0.1, 0.2], [0.3, 0.4]]), masks[:2], maps[:2])
    a("no_masks", records, np.array([0, 0, 1]), np.array([[0.1, 0.2], [0.3, 0.1], [0.9, 0.3]]), masks, maps)
    assert a.thresholds["tf"]["good_only"]["f1"] is None
    assert a.thresholds["tf"]["good_only"]["reason"].startswith("only good images")
    assert a.reasons["tf"]["good_only"] == {"pixel_auroc": "no defective images", "pixel_aupro": "no defective images",
                                            "image_auroc": "only good images", "image_ap": "only good images"}
    assert a.reasons["ft"]["no_masks"] == {"pixel_auroc": "no defect masks given",
                                           "pixel_aupro": "no defect masks given"}
    assert a.thresholds["tf"]["no_masks"]["f1"]["threshold"] == pytest.approx(0.9)
    assert a.mistakes == []  # both variants rank the defective image first; good_only has no threshold
    nan = float("nan")
    report = {"images": [{"label": int(r.anomaly), "scores": {"tf": 0.5, "ft": 0.5}} for r in records],
              "metrics": {v: {"mean": {k: (0.5 if k.startswith("image") else nan) for k in METRICS}}
                          for v in ("tf", "ft")}}
    content = a.finish(report)
    assert content["undefined"]["tf"]["mean"] == {"pixel_auroc": "undefined in every class",
                                                  "pixel_aupro": "undefined in every class"}
    assert "plots/good_only/gallery_tf.png" in content["plots"] and "plots/all_classes/pro.png" in content["plots"]
    assert json.loads((tmp_path / "out" / "analysis.json").read_text())["thresholds"]["ft"]["all_classes"]["f1"]


def test_gallery_captions_do_not_overlap_the_panel_headings(tmp_path):
    """Issue 20 item 6: "score 0.488 ≥ 0.4a6n0omaly map": a row's caption printed over the "anomaly map" heading."""
    img = np.zeros((518, 518, 3), np.uint8)
    captions = ["FALSE ALARM · a_rather_long_file_name_of_a_good_part_0003.png · score 0.488 ≥ 0.460 (F1-optimal)",
                "MISSED · bad_0001.png · score 0.301 < 0.460 (F1-optimal)"]
    rows = [dict(image=img, overlay=img, mask=np.ones((518, 518), bool), caption=c) for c in captions]
    fig = plots.gallery_figure(rows, "MRAD-TF on bottle: hardest good and defective images (F1-optimal)")
    plots.save_png(fig, tmp_path / "gallery.png")  # lays the figure out
    renderer = fig.canvas.get_renderer()
    headings = [t for ax in fig.axes for t in (ax.title,) if t.get_text()]
    assert len(headings) == 6
    for sub in fig.subfigs:
        caption = sub._suptitle.get_window_extent(renderer)
        assert caption.width > 0
        for t in headings:
            assert not caption.overlaps(t.get_window_extent(renderer)), (sub.get_suptitle(), t.get_text())
    whole = fig.bbox
    for t in [fig._suptitle, *headings, *(sub._suptitle for sub in fig.subfigs)]:  # nothing cut at the edges
        box = t.get_window_extent(renderer)
        assert box.x0 >= whole.x0 - 1 and box.x1 <= whole.x1 + 1, t.get_text()

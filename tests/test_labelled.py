"""Labelled sets for the app's evaluation: ZIP layouts, clear errors for bad ZIPs, and evaluate_samples giving the
metrics `mrad eval` gives on the same files."""
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from mrad_core import MRADError
from mrad_core import labelled as lab
from mrad_core.eval_report import ZIP_NAME, evaluate_samples
from mrad_core.labelled import read_labelled, read_labelled_list
from mrad_core.metrics import METRICS
from synthetic_datasets import evaluated_mvtec_zip
from tiny_model import synthetic_image

TOL = 1e-9  # same images, same code path: equal up to float summation order


def _png(seed=1, defect=False, mask=False):
    img, m = synthetic_image(seed, (40, 52), defect)
    buf = io.BytesIO()
    (m if mask else img).save(buf, "PNG")
    return buf.getvalue()


def _zip(path, members: dict):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _good_bad(n_good=2, n_bad=2, masks=True, prefix=""):
    m = {f"{prefix}good/g{i}.png": _png(i) for i in range(n_good)}
    m |= {f"{prefix}bad/b{i}.png": _png(10 + i, True) for i in range(n_bad)}
    if masks:
        m |= {f"{prefix}masks/b{i}_mask.png": _png(10 + i, True, mask=True) for i in range(n_bad)}
    return m


def test_good_bad_zip_with_masks(tmp_path):
    s = read_labelled(_zip(tmp_path / "parts.zip", _good_bad(prefix="widget/")), tmp_path)
    assert s.layout == "goodbad" and (s.n_good, s.n_bad, s.n_masks) == (2, 2, 2) and s.errors == []
    assert {r.cls_name for r in s.records} == {"widget"}
    by_name = {s.names[r.image]: r for r in s.records}
    assert by_name["widget/bad/b1.png"].anomaly == 1 and by_name["widget/good/g0.png"].anomaly == 0
    mask = Image.open(by_name["widget/bad/b1.png"].mask)
    assert mask.tobytes() == Image.open(io.BytesIO(_png(11, True, mask=True))).tobytes()
    assert all(Path(r.image).resolve().is_relative_to(s.root.resolve()) for r in s.records)
    flat = read_labelled(_zip(tmp_path / "flat.zip", _good_bad(masks=False)), tmp_path)
    assert {r.cls_name for r in flat.records} == {"flat"} and flat.n_masks == 0  # class: the ZIP's name


def test_bad_zips_give_clear_messages(tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"this is not a zip")
    with pytest.raises(MRADError, match="junk.zip: not a readable ZIP archive"):
        read_labelled(tmp_path / "junk.zip")
    with pytest.raises(MRADError, match="no labels found: .*good/<image> and bad/<image>"):
        read_labelled(_zip(tmp_path / "nolabels.zip", {"a.png": _png(1), "x/b.png": _png(2)}))
    with pytest.raises(MRADError, match=r"only good images \(2\): image AUROC, AP and pixel AUROC are undefined"):
        read_labelled(_zip(tmp_path / "good.zip", {"good/a.png": _png(1), "good/b.png": _png(2)}))
    with pytest.raises(MRADError, match=r"only defective images \(1\) and no masks"):
        read_labelled(_zip(tmp_path / "bad.zip", {"bad/a.png": _png(1, True)}))
    with pytest.raises(MRADError, match="no images found"):
        read_labelled(_zip(tmp_path / "text.zip", {"readme.txt": b"hi"}))
    with pytest.raises(MRADError, match="no usable labelled images; good/a.png: .*truncated or corrupt"):
        read_labelled(_zip(tmp_path / "corrupt_all.zip", {"good/a.png": _png(1)[:60]}))
    with pytest.raises(MRADError, match="no such file"):
        read_labelled(tmp_path / "missing.zip")


def test_bad_entries_become_per_entry_errors(tmp_path, monkeypatch):
    members = _good_bad(n_good=3)
    members["good/g1.png"] = b"\x89PNG\r\n\x1a\n garbage"  # corrupt image
    members["masks/b1_mask.png"] = b"not a mask"  # corrupt mask: its image is skipped with it
    members["masks/orphan.png"] = _png(5, mask=True)  # a mask without an image
    members["notes.txt"] = b"hello"
    members["bad/../../../evil.png"] = _png(7, True)  # never written outside the extraction folder
    monkeypatch.setattr(lab, "MAX_ENTRY_BYTES", max(len(v) for v in members.values()))
    members["good/huge.png"] = _png(8) + b"\0" * lab.MAX_ENTRY_BYTES  # one entry over the size limit
    s = read_labelled(_zip(tmp_path / "mixed.zip", members), tmp_path)
    errors = dict(s.errors)
    assert errors["good/g1.png"].startswith("the image data is truncated or corrupt")
    assert errors["masks/b1_mask.png"].startswith("cannot read mask")
    assert errors["masks/b1_mask.png"].endswith("; bad/b1.png skipped with it")
    assert errors["masks/orphan.png"].startswith("skipped: a mask without an image (no image named orphan")
    assert errors["notes.txt"] == "skipped: not an image file"
    assert errors["good/huge.png"] == "skipped: too large when uncompressed"
    assert errors["bad/../../../evil.png"] == "skipped: an absolute path or '..' in the archive"
    assert sorted(s.names.values()) == ["bad/b0.png", "good/g0.png", "good/g2.png"]
    assert all(Path(r.image).resolve().is_relative_to(s.root.resolve()) for r in s.records)
    assert not list(tmp_path.parent.rglob("evil.png"))  # (other tests leave their own evil.* files)


def test_list_input(tmp_path):
    paths = []
    for i, label in enumerate(["good", "bad", "ok", 1]):
        p = tmp_path / f"{i}.png"
        p.write_bytes(_png(i, defect=label in ("bad", 1)))
        paths.append((str(p), label))
    (tmp_path / "broken.png").write_bytes(b"")
    s = read_labelled_list([*paths, (str(tmp_path / "broken.png"), "bad"), (paths[0][0], "maybe")])
    assert [r.anomaly for r in s.records] == [0, 1, 0, 1] and s.n_masks == 0
    assert dict(s.errors) == {"broken.png": "the file is empty",
                              "0.png": "skipped: label 'maybe' is neither good nor bad"}
    with pytest.raises(MRADError, match="only good images"):
        read_labelled_list([paths[0]])
    capped = read_labelled_list(paths, max_images=2)
    assert len(capped.records) == 2 and capped.errors == [("2 more", "skipped: an evaluation takes at most 2 images")]
    with pytest.raises(MRADError, match=r"\(image, label\) or \(image, label, mask\)"):
        read_labelled_list(["a.png"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_files):
    """A synthetic MVTec folder, `mrad eval` on it, and the same folder as a ZIP."""
    return evaluated_mvtec_zip(tmp_path_factory, tiny_files)


def test_evaluate_samples_matches_mrad_eval(dataset, tiny_detector, tmp_path):
    root, cli, cli_scores, zpath = dataset
    calls = []
    report = evaluate_samples(tiny_detector, zpath, progress=lambda f, t: calls.append((f, t)), out_dir=tmp_path / "r",
                              workdir=tmp_path, gallery=1)
    assert report.variants == ["tf", "ft", "clip"] and report.has_masks
    for v in report.variants:
        for cls, m in report.metrics[v]["classes"].items():
            assert set(report.undefined[v][cls]) == {k for k in METRICS if m[k] is None}
    assert any("not used" in m for _, m in report.errors)  # the train/ images
    for v in report.variants:
        for cls in ("bottle", "cable"):
            for k in METRICS:
                assert report.metrics[v]["classes"][cls][k] == pytest.approx(cli["metrics"][v]["classes"][cls][k],
                                                                             abs=TOL), (v, cls, k)
            assert report.metrics[v]["classes"][cls]["n_images"] == 6
        for k in METRICS:
            assert report.metrics[v]["mean"][k] == pytest.approx(cli["metrics"][v]["mean"][k], abs=TOL)
    mine = {im["name"]: im["scores"] for im in report.images}
    for row in cli_scores:
        name = "mvtec/" + Path(row["path"]).relative_to(root).as_posix()
        for v in report.variants:
            assert mine[name][v] == pytest.approx(float(row[f"score_{v}"]), abs=1e-6)
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and any("scored 12 of 12" in t for _, t in calls)

    with zipfile.ZipFile(report.zip) as z:
        names = set(z.namelist())
    assert {"metrics.json", "metrics.csv", "scores.csv", "table.md", "analysis.json"} <= names
    assert {"plots/bottle/roc_pr.png", "plots/all_classes/pro.png", "plots/cable/gallery_clip.png"} <= names
    assert any(n.startswith("overlays/ft/cable/") for n in names)
    assert report.zip == tmp_path / "r" / ZIP_NAME
    assert not list(tmp_path.glob("mrad-labelled-*"))  # the copies from the ZIP are removed afterwards
    headers, rows = report.table()
    assert headers == ["class", "metric", "MRAD-TF", "MRAD-FT", "MRAD-CLIP", "note"] and len(rows) == 3 * 4
    bottle_auroc = next(r for r in rows if r[:2] == ["bottle", "image AUROC"])
    assert float(bottle_auroc[2]) == pytest.approx(100 * cli["metrics"]["tf"]["classes"]["bottle"]["image_auroc"],
                                                   abs=0.051)
    th_headers, th_rows = report.threshold_table()
    assert [r[0] for r in th_rows] == ["MRAD-TF", "MRAD-FT", "MRAD-CLIP"] and len(th_rows[0]) == len(th_headers)
    assert json.loads(json.dumps(report.to_dict()))["n_images"] == 12
    analysis = json.loads((tmp_path / "r" / "analysis.json").read_text())
    assert report.threshold("fpr") == {v: analysis["thresholds"][v]["all_classes"]["fpr"]["threshold"]
                                       for v in report.variants}
    assert report.threshold("f1", "cable")["tf"] == analysis["thresholds"]["tf"]["cable"]["f1"]["threshold"]
    with pytest.raises(MRADError, match="no class 'wheel'"):
        report.threshold("f1", "wheel")


def test_good_bad_zip_without_masks_matches_mrad_eval(dataset, tiny_detector, tmp_path):
    """bottle as good/ + bad/ without masks: image metrics equal mrad eval's bottle; pixel metrics undefined."""
    root, cli, _, _ = dataset
    members = {}
    for p in sorted((root / "bottle" / "test").rglob("*.png")):
        members[f"{'good' if p.parent.name == 'good' else 'bad'}/{p.parent.name}_{p.name}"] = p.read_bytes()
    report = evaluate_samples(tiny_detector, _zip(tmp_path / "bottle.zip", members), ("tf",), workdir=tmp_path)
    got = report.metrics["tf"]["classes"]["bottle"]
    for k in ("image_auroc", "image_ap"):
        assert got[k] == pytest.approx(cli["metrics"]["tf"]["classes"]["bottle"][k], abs=TOL)
    assert got["pixel_auroc"] is None and report.undefined["tf"]["bottle"]["pixel_auroc"] == "no defect masks given"
    assert set(report.undefined["tf"]["bottle"]) == {k for k in METRICS if got[k] is None}  # a reason for each
    assert set(report.undefined["tf"]["mean"]) == {k for k in METRICS if report.metrics["tf"]["mean"][k] is None}
    headers, rows = report.table()
    assert [r[:2] for r in rows] == [["bottle", "image AUROC"], ["bottle", "image AP"]]  # no pixel rows, no mean


def test_a_batch_scorer_runs_the_model_once_per_batch(dataset, tiny_detector, tmp_path):
    """evaluate_samples takes anything with the batch protocol (the app's scorer.Scorer, whose batches go through
    GPU calls): same metrics, one model call per batch for all variants."""
    _, _, _, zpath = dataset
    calls = []

    class Counted:  # the protocol: config.image_size, require(variant), score_batch(pixels, variants)
        config = tiny_detector.config

        def require(self, variant):
            tiny_detector.require(variant)

        def score_batch(self, pixels, variants):
            calls.append((len(pixels), tuple(variants)))
            return tiny_detector.score_batch(pixels, variants)

    got = evaluate_samples(Counted(), zpath, ("tf", "ft"), workdir=tmp_path, gallery=0, batch_size=4)
    want = evaluate_samples(tiny_detector, zpath, ("tf", "ft"), workdir=tmp_path, gallery=0, batch_size=4)
    assert calls == [(4, ("tf", "ft")), (2, ("tf", "ft"))] * 2  # two classes of 6 images, batches of 4
    assert not [p for p in got.plots if p.name.startswith("gallery")] and got.mistakes == []  # gallery=0
    assert (got.out_dir / "table.md").read_text().startswith("MRAD-TF on labelled images")
    for v in ("tf", "ft"):
        for k in METRICS:
            assert got.metrics[v]["mean"][k] == pytest.approx(want.metrics[v]["mean"][k], abs=TOL)


def test_entry_with_a_bad_checksum_is_skipped(tmp_path):
    path = _zip(tmp_path / "crc.zip", _good_bad(n_good=2))  # stored, not compressed: bytes can be flipped
    data = bytearray(path.read_bytes())
    png = _png(1)  # good/g1.png
    at = data.find(png)
    data[at + len(png) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    s = read_labelled(path, tmp_path)
    assert dict(s.errors)["good/g1.png"].startswith("unreadable entry (BadZipFile: Bad CRC-32")
    assert sorted(s.names.values()) == ["bad/b0.png", "bad/b1.png", "good/g0.png"]

"""The Evaluate tab and the /evaluate API, in-process with the tiny model: the same metrics as `mrad eval` on the
same files, separate uploads with masks, bad ZIPs with their messages (the server keeps serving), and the
"apply threshold" button setting the Detect tab's slider."""
import io
import json
import re
import zipfile
from pathlib import Path

import pytest

from mrad_core.metrics import METRICS, TITLES
from served_app import CHROMIUM, CHROMIUM_ARGS, served_tiny
from sse import complete_data
from synthetic_datasets import evaluated_mvtec_zip
from tiny_model import synthetic_image

TOL = 1e-9  # metrics: same images, same code path (as tests/test_labelled.py)
SCORE_TOL = 1e-6  # image scores: another batch split may sum in another order


@pytest.fixture(scope="module")
def served(tiny_files):
    with served_tiny(tiny_files, precision="fp32") as (service, demo, url):
        yield service, url, demo


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client
    return Client(served[1], verbose=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_files):
    """A synthetic MVTec folder, `mrad eval` on it, and the same folder as a ZIP."""
    return evaluated_mvtec_zip(tmp_path_factory, tiny_files)


def _png(seed, defect=False, mask=False) -> bytes:
    img, m = synthetic_image(seed, (40, 52), defect)
    buf = io.BytesIO()
    (m if mask else img).save(buf, "PNG")
    return buf.getvalue()


def _zip(path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def evaluate_api(client, zpath=None, **kw):
    from gradio_client import handle_file
    return client.predict(labelled_zip=handle_file(str(zpath)) if zpath else None, api_name="/evaluate", **kw)


def assert_same_metrics(metrics, cli, variants=("tf", "ft", "clip"), classes=("bottle", "cable")):
    for v in variants:
        for cls in classes:
            for k in METRICS:
                want = cli["metrics"][v]["classes"][cls][k]
                assert metrics[v]["classes"][cls][k] == pytest.approx(want, abs=TOL), (v, cls, k)
        for k in METRICS:
            assert metrics[v]["mean"][k] == pytest.approx(cli["metrics"][v]["mean"][k], abs=TOL), (v, k)


def test_evaluate_api_matches_mrad_eval(client, dataset, served):
    root, cli, cli_scores, zpath = dataset
    named = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert "/evaluate" in named
    calls = dict(served[0].calls)
    result = evaluate_api(client, zpath)  # only the ZIP: every other input has its default
    assert result["variants"] == ["tf", "ft", "clip"] and result["has_masks"] and result["n_images"] == 12
    assert result["skipped_variants"] == {} and result["false_alarm_rate"] == 0.05
    assert_same_metrics(result["metrics"], cli)
    assert served[0].calls["encode"] - calls.get("encode", 0) == 12  # each image encoded once for all variants
    scores = {im["name"]: im["scores"] for im in result["images"]}
    assert len(scores) == len(cli_scores) == 12
    for row in cli_scores:  # the per-image scores behind the metrics
        name = "mvtec/" + Path(row["path"]).relative_to(root).as_posix()
        for v in ("tf", "ft", "clip"):
            assert scores[name][v] == pytest.approx(float(row[f"score_{v}"]), abs=SCORE_TOL), (name, v)
    assert any("not used" in e["message"] for e in result["errors"])  # the train/ images
    pooled = result["thresholds"]["tf"]["all_classes"]
    assert pooled["f1"]["threshold"] is not None and pooled["fpr"]["max_fpr"] == 0.05
    headers, rows = result["table"]["headers"], result["table"]["data"]
    assert headers == ["class", "metric", "MRAD-TF", "MRAD-FT", "MRAD-CLIP", "note"] and len(rows) == 3 * 4

    only_tf = evaluate_api(client, zpath, variants=["tf"], false_alarm_rate=0.2)
    assert only_tf["variants"] == ["tf"] and set(only_tf["metrics"]) == {"tf"}
    assert only_tf["thresholds"]["tf"]["all_classes"]["fpr"]["max_fpr"] == 0.2
    assert_same_metrics(only_tf["metrics"], cli, variants=("tf",))


def test_evaluate_tab_shows_table_plots_mistakes_and_zip(served, dataset):
    _, cli, _, zpath = dataset
    ui = served[2].mrad
    seen = []
    out = ui.evaluate.evaluate(str(zpath), None, None, None, ["tf", "ft", "clip"], None, None, 0.05, 1,
                               progress=lambda f, desc=None: seen.append((f, desc)))
    report, table, thresholds, plots, mistakes, download, found, variant = out
    assert report.startswith("**12 images evaluated** (4 good, 8 defective, 8 with masks) with MRAD-TF, MRAD-FT, "
                              "MRAD-CLIP.") and "train/ images" in report
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and any("scored 12 of 12" in d for _, d in seen)
    assert table["headers"] == ["class", "metric", "MRAD-TF", "MRAD-FT", "MRAD-CLIP", "note"]
    for cls, metric, *cells, note in table["data"]:
        key = {title: k for k, title in TITLES.items()}[metric]
        for v, cell in zip(("tf", "ft", "clip"), cells):
            want = (cli["metrics"][v]["mean"] if cls == "mean" else cli["metrics"][v]["classes"][cls])[key]
            assert float(cell) == pytest.approx(100 * want, abs=0.051), (cls, metric, v)
    assert [r[0] for r in thresholds["data"]] == ["MRAD-TF", "MRAD-FT", "MRAD-CLIP"]
    captions = {c for _, c in plots}
    assert {"bottle/roc_pr.png", "cable/pro.png", "all_classes/histograms.png"} <= captions
    assert all(Path(p).is_file() for p, _ in plots + mistakes)
    assert {c for _, c in mistakes} == {f"{cls}/gallery_{v}.png" for cls in ("bottle", "cable")
                                        for v in ("tf", "ft", "clip")}
    with zipfile.ZipFile(download) as z:
        names = set(z.namelist())
    assert {"metrics.json", "metrics.csv", "scores.csv", "analysis.json", "plots/bottle/roc_pr.png"} <= names
    with zipfile.ZipFile(download) as z:
        assert_same_metrics(json.loads(z.read("metrics.json"))["metrics"], cli)
    assert set(found) == {"f1", "fpr"} and set(found["f1"]) == {"tf", "ft", "clip"}
    assert variant.value == "tf"


def test_separate_uploads_with_masks(served, tmp_path):
    ui = served[2].mrad
    paths = {}
    for name, data in {"g0.png": _png(1), "g1.png": _png(2), "b0.png": _png(10, True), "b1.png": _png(11, True),
                       "b0_mask.png": _png(10, True, mask=True), "stray_mask.png": _png(12, True, mask=True)}.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    out = ui.evaluate.evaluate(None, [paths["g0.png"], paths["g1.png"]], [paths["b0.png"], paths["b1.png"]],
                               [paths["b0_mask.png"], paths["stray_mask.png"]], ["tf"], None, None,
                               progress=lambda *a, **k: None)
    report, table = out[0], out[1]
    assert report.startswith("**4 images evaluated** (2 good, 2 defective, 1 with masks) with MRAD-TF.")
    assert "`stray_mask.png`: skipped: a mask without an image (no defective image named stray)" in report
    assert "`b1.png`: note: no mask" in report
    assert [r[:2] for r in table["data"]] == [["uploads", TITLES[k]] for k in METRICS]  # masks: pixel rows too
    assert all(0 <= float(r[2]) <= 100 for r in table["data"])


BAD_ZIPS = {  # name -> (members or raw bytes, the message expected)
    "junk": (b"this is not a zip", "junk.zip: not a readable ZIP archive"),
    "nolabels": ({"a.png": _png(1), "x/b.png": _png(2)}, "no labels found: put the images in folders"),
    "onlygood": ({"good/a.png": _png(1), "good/b.png": _png(2)}, r"only good images \(2\)"),
    "onlybad": ({"bad/a.png": _png(1, True)}, r"only defective images \(1\) and no masks"),
    "corrupt": ({"good/a.png": _png(1)[:60], "bad/b.png": b"\x89PNG garbage"},
                "no usable labelled images; bad/b.png: not an image format .*; good/a.png: .*truncated or corrupt"),
    "onlymasks": ({"masks/b0.png": _png(3, True, mask=True)},
                  "no usable labelled images; masks/b0.png: skipped: a mask without an image"),
    "text": ({"readme.txt": b"hi"}, "no images found; readme.txt: skipped: not an image file"),
}


@pytest.mark.parametrize("case", sorted(BAD_ZIPS))
def test_bad_zips_give_clear_messages_and_the_server_keeps_serving(client, tmp_path, case):
    from gradio_client.exceptions import AppError
    members, message = BAD_ZIPS[case]
    path = tmp_path / f"{case}.zip"
    path.write_bytes(members) if isinstance(members, bytes) else _zip(path, members)
    with pytest.raises(AppError, match=message):
        evaluate_api(client, path)
    assert "device CPU" in client.predict(api_name="/status")


def test_entry_errors_and_input_mistakes(client, served, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    members = {"good/g0.png": _png(1), "good/g1.png": b"\x89PNG\r\n\x1a\n garbage", "good/g2.png": _png(2),
               "bad/b0.png": _png(10, True), "bad/b1.png": _png(11, True),
               "masks/b0_mask.png": _png(10, True, mask=True), "masks/orphan.png": _png(5, True, mask=True)}
    result = evaluate_api(client, _zip(tmp_path / "mixed.zip", members), variants=["tf"])
    errors = {e["entry"]: e["message"] for e in result["errors"]}
    assert errors["good/g1.png"].startswith("the image data is truncated or corrupt")
    assert errors["masks/orphan.png"].startswith("skipped: a mask without an image (no image named orphan")
    assert result["n_images"] == 4 and result["has_masks"]
    with pytest.raises(AppError, match="nothing to evaluate: upload a labelled ZIP"):
        evaluate_api(client)
    with pytest.raises(AppError, match="either a labelled ZIP or separate good/defective images, not both"):
        evaluate_api(client, tmp_path / "mixed.zip", good=[handle_file(str(tmp_path / "mixed.zip"))])
    with pytest.raises(AppError, match="choose at least one variant"):
        evaluate_api(client, tmp_path / "mixed.zip", variants=[])
    listed = evaluate_api(client, variants=["tf"], good=[handle_file(str(_write(tmp_path / "g.png", _png(1))))],
                          bad=[handle_file(str(_write(tmp_path / "b.png", _png(10, True))))])
    assert listed["n_images"] == 2 and listed["metrics"]["tf"]["classes"]["uploads"]["image_auroc"] is not None
    assert "device CPU" in client.predict(api_name="/status")


def _write(path, data):
    path.write_bytes(data)
    return path


def test_apply_threshold_sets_the_detect_slider(served, dataset):
    demo = served[2]
    ui = demo.mrad
    ev, slider = ui.evaluate, ui.detect.controls["image_threshold"]
    r, _ = ev.run_evaluation(str(dataset[3]), ["tf", "ft"], None, None, rate=0.1, gallery=0)
    found = {kind: r.threshold(kind) for kind in ("f1", "fpr")}
    assert found["f1"]["ft"] == r.thresholds["ft"]["all_classes"]["f1"]["threshold"]
    for kind in ("f1", "fpr"):
        for v in ("tf", "ft"):
            got = ev.apply_threshold(found, kind, v)
            assert isinstance(got, type(slider))
            assert got.value == pytest.approx(min(max(found[kind][v], 0), 1), abs=5e-5)
    unchanged = {"__type__": "update"}  # not evaluated: the slider is left as it is
    assert ev.apply_threshold(found, "f1", "clip") == unchanged and ev.apply_threshold({}, "f1", "tf") == unchanged
    # the button is wired to the Detect tab's slider
    deps = demo.config["dependencies"]
    apply = next(d for d in deps if [ev.apply._id, "click"] in [list(t) for t in d["targets"]])
    assert apply["outputs"] == [slider._id]


@pytest.mark.browser
def test_browser_upload_zip_see_metrics_apply_threshold(served, dataset):
    """Headless Chromium: upload the ZIP in the Evaluate tab, see the metrics table, apply the F1-optimal threshold
    of MRAD-TF and find it in the Detect tab's image-threshold slider."""
    from playwright.sync_api import sync_playwright
    _, cli, _, zpath = dataset
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(60_000)
            page.goto(served[1], wait_until="load")
            page.get_by_role("tab", name="Evaluate").click()
            page.set_input_files("#eval-zip input[type=file]", str(zpath))
            page.wait_for_selector("#eval-zip a")  # uploaded
            page.click("#run-eval")
            page.wait_for_function("() => document.querySelector('#eval-report').innerText.includes('12 images')")
            page.wait_for_function("() => document.querySelector('#eval-table').innerText.includes('image AUROC')")
            table = page.locator("#eval-table").inner_text()
            assert "image AUROC" in table and "AUPRO" in table and "MRAD-CLIP" in table
            auroc = 100 * cli["metrics"]["ft"]["classes"]["bottle"]["image_auroc"]
            assert f"{auroc:.1f}" in table
            thresholds = page.locator("#eval-thresholds").inner_text()
            want = float(re.search(r"MRAD-TF\s+([0-9.]+)", thresholds).group(1))  # F1-optimal, 4 decimals
            page.click("#eval-apply")
            page.get_by_role("tab", name="Detect").click()
            page.wait_for_function("() => document.querySelector('#image-threshold input[type=number]').value "
                                   "!== '0.5'")
            assert float(page.locator("#image-threshold input[type=number]").input_value()) == want
        finally:
            browser.close()


def test_a_variant_the_bank_cannot_run_is_left_out_with_its_reason(served, tmp_path, monkeypatch):
    """The Scorer's plan says which variants this bank runs (exact: from the loaded detector); the evaluation goes
    on with the others, says why, and never asks the model for the one left out."""
    page = served[2].mrad
    det = page.service.detector(page.service.catalogue.default())
    real_availability, real_chunk, calls = det.availability, page.gpu_chunk, []
    monkeypatch.setattr(det, "availability", lambda: {**real_availability(), "clip": "these heads have no prompt parts"})

    def counted(pixels, variants, *a, **k):
        calls.append(tuple(variants))
        return real_chunk(pixels, variants, *a, **k)

    monkeypatch.setattr(page, "gpu_chunk", counted)
    members = {f"good/g{i}.png": _png(i) for i in range(2)} | {f"bad/b{i}.png": _png(10 + i, True) for i in range(2)}
    out = page.evaluate.evaluate(str(_zip(tmp_path / "parts.zip", members)), None, None, None, ["tf", "clip"], None,
                                 None, 0.05, 0, progress=lambda *a, **k: None)
    assert out[0].startswith("**4 images evaluated** (2 good, 2 defective, 0 with masks) with MRAD-TF. MRAD-CLIP "
                             "did not run: these heads have no prompt parts. No masks were given")
    assert out[1]["headers"] == ["class", "metric", "MRAD-TF", "note"]
    assert calls and set(calls) == {("tf",)}  # the plan left MRAD-CLIP out before any model call
    monkeypatch.setattr(det, "availability", lambda: {v: f"no heads for {v}" for v in real_availability()})
    with pytest.raises(gr_error(), match="none of the chosen variants can run with this memory bank: no heads for tf"):
        page.evaluate.evaluate(str(tmp_path / "parts.zip"), None, None, None, ["tf"], None, None,
                               progress=lambda *a, **k: None)


def gr_error():
    import gradio as gr
    return gr.Error


def test_raw_http_call_with_only_the_zip(served, dataset):
    """A raw HTTP call (curl) that sends only the ZIP gets the defaults of the other inputs."""
    import httpx
    url, zpath = served[1], dataset[3]
    with open(zpath, "rb") as f:
        uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": f}).json()[0]
    event = httpx.post(f"{url}gradio_api/call/evaluate", json={"data": [{"path": uploaded, "meta": {
        "_type": "gradio.FileData"}}]}).json()["event_id"]
    text = httpx.get(f"{url}gradio_api/call/evaluate/{event}", timeout=300).text
    assert "event: complete" in text, text[:2000]
    result = complete_data(text)[0]
    assert_same_metrics(result["metrics"], dataset[1])

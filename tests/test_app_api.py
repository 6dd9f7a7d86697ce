"""The Gradio app through gradio_client, launched in-process on 127.0.0.1 with the tiny model and banks:
single and batch endpoints, bad inputs, custom banks, 20 concurrent clients, re-renders without model calls."""
import csv
import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from served_app import launch, served_tiny
from sse import complete_data
from tiny_model import synthetic_image

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def served(tiny_files):
    with served_tiny(tiny_files, precision="fp32") as (service, demo, url):  # compared with the fp32 tiny_detector
        yield service, url, demo.mrad


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client
    return Client(served[1], verbose=False)


def predict(client, path, **kw):
    from gradio_client import handle_file
    return client.predict(image=handle_file(str(path)), api_name="/predict", **kw)


def test_api_lists_the_named_endpoints(client):
    named = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/predict", "/predict_batch", "/build_bank", "/status"} <= set(named)
    assert "device CPU" in client.predict(api_name="/status")


def test_predict_needs_only_the_image(served, tiny_files):
    """A raw HTTP call with the image alone (as the README's curl example sends it) gets the defaults."""
    import httpx
    url = served[1]
    with open(tiny_files["images"][1], "rb") as f:
        uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": f}).json()[0]
    event = httpx.post(f"{url}gradio_api/call/predict", json={"data": [{"path": uploaded, "meta": {
        "_type": "gradio.FileData"}}]}).json()["event_id"]
    text = httpx.get(f"{url}gradio_api/call/predict/{event}", timeout=120).text
    assert "event: complete" in text, text
    result = complete_data(text)[0]
    assert set(result["variants"]) == {"tf", "ft", "clip"} and result["image"] == "query_1.png"


def test_predict_scores_every_variant(client, tiny_detector, tiny_files):
    result = predict(client, tiny_files["images"][1])
    expected = tiny_detector.predict([tiny_files["images"][1]])
    assert result["image"] == "query_1.png" and result["device"] == "cpu" and result["precision"] == "fp32"
    assert set(result["variants"]) == {"tf", "ft", "clip"}
    for v, r in expected.items():
        got = result["variants"][v]
        assert got["score"] == pytest.approx(float(r.score[0]), abs=1e-4)
        assert got["anomalous"] == (got["score"] >= 0.5) and got["latency_ms"] >= 0
    only_tf = predict(client, tiny_files["images"][1], variants=["tf"], image_threshold=0.99)
    assert list(only_tf["variants"]) == ["tf"] and only_tf["variants"]["tf"]["anomalous"] is False


def test_rerenders_do_not_call_the_model(served, tiny_files, tmp_path):
    """The handlers of the live controls, addressed by component: re-drawing runs no model and writes no file."""
    service, _, ui = served
    d = ui.detect
    a = service.calibrate(service.analyze(tiny_files["images"][0], ["tf", "ft", "clip"], "env"))
    calls, files = dict(service.calls), sorted(service.workdir.rglob("*"))
    outputs = {}
    for key, controls in {"low": (0.5, 0.2, 0.5, "turbo", True, False, "raw"),
                          "high": (0.5, 0.8, 0.5, "turbo", True, False, "raw"),
                          "binary": (0.5, 0.5, 0.7, "jet", False, True, "minmax"),
                          "calibrated": (0.9, 0.5, 0.5, "gray", True, False, "calibrated")}.items():
        outputs[key] = d.render(a, *controls)
    assert dict(service.calls) == calls  # no encode, no score
    assert sorted(service.workdir.rglob("*")) == files  # no file written
    overlay = {k: out[d.sliders["clip"]][1] for k, out in outputs.items()}  # MRAD-CLIP slider, right side
    assert overlay["low"].shape == overlay["high"].shape
    assert len({overlay[k].tobytes() for k in overlay}) == 4
    card = outputs["calibrated"][d.cards["clip"]]
    assert "(threshold 0.90)" in card and "calibrated" in card and "not calibrated" not in card
    assert "not computed" not in outputs["calibrated"][d.summary]
    assert outputs["high"][d.json]["pixel_threshold"] == 0.8  # the JSON panel follows the controls
    path = d.export_csv(a, 0.5, 0.8, 0.5, "turbo", True, False, "raw")  # written when asked for
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["MRAD-TF", "MRAD-FT", "MRAD-CLIP"]
    assert float(rows[0]["score"]) == pytest.approx(a.outputs["tf"].score, abs=1e-5)


def test_a_panorama_is_shown_folded_at_a_readable_size_and_scored_whole(served, tiny_detector, tiny_files, tmp_path):
    """A 4000 x 300 panorama: each column shows input and map cut into strips (about square, every pixel once),
    the page says so; the scores are those of the whole image; an ordinary image is shown as it is."""
    service, _, ui = served
    d = ui.detect
    synthetic_image(7, size=(300, 4000), defect=True)[0].save(tmp_path / "panorama.png")
    a = service.analyze(str(tmp_path / "panorama.png"), ["tf", "ft", "clip"], "env")
    assert a.image.shape[:2] == (39, 518)  # the display image (the scores come from the whole image)
    out = d.render(a, 0.5, 0.5, 0.5, "turbo", True, False, "raw")
    for v in ("tf", "ft", "clip"):
        left, right = out[d.sliders[v]]
        assert left.shape == right.shape
        h, w = left.shape[:2]
        assert 1 / 3 <= w / h <= 3, (w, h)  # was 518 x 39: 22 px tall in its column
        assert left.size >= a.image.size and (left[:39] == a.image[:, :w]).all()  # the first strip: the start
    assert "cut left to right into 4 strips" in out[d.legend] and "scored whole" in out[d.legend]
    whole = tiny_detector.predict([str(tmp_path / "panorama.png")])  # the model's scores of the whole image
    for v, r in whole.items():
        assert a.outputs[v].score == pytest.approx(float(r.score[0]), abs=1e-4)
    b = service.analyze(tiny_files["images"][0], ["tf"], "env")
    plain = d.render(b, 0.5, 0.5, 0.5, "turbo", True, False, "raw")
    assert plain[d.sliders["tf"]][0] is b.image and "fold-note" not in plain[d.legend]


def _odd_images(d: Path) -> dict:
    """name -> (path, error text expected or None, note expected or None)."""
    good = Image.open(ASSETS / "examples" / "wood_crack.png")
    png = io.BytesIO()
    good.save(png, "PNG")
    cases = {"corrupt": ("corrupt.png", np.random.default_rng(0).bytes(5000), "not an image format", None),
             "empty": ("empty.png", b"", "empty", None),
             "text": ("notes.txt", b"just some text\n", "not an image format", None),
             "truncated": ("truncated.png", png.getvalue()[:len(png.getvalue()) // 2], "truncated or corrupt", None)}
    out = {k: (d / name, err, note) for k, (name, data, err, note) in cases.items()}
    for k, (name, _, _, _) in cases.items():
        (d / name).write_bytes(cases[k][1])
    Image.new("RGB", (1, 1)).save(d / "tiny.png")
    Image.new("1", (20000, 20000)).save(d / "huge.png")
    good.convert("L").save(d / "gray.png")
    Image.fromarray((np.asarray(good.convert("L")).astype(np.uint16) * 257)).save(d / "deep16.png")
    rgba = good.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "rgba.png")
    good.convert("CMYK").save(d / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    good.crop((0, 0, 224, 150)).save(d / "rotated.jpg", exif=exif)
    frames = [good, good.rotate(90), good.rotate(180)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out.update({"1x1": (d / "tiny.png", "too small", None), "huge": (d / "huge.png", "larger than", None),
                "gray": (d / "gray.png", None, None), "16-bit": (d / "deep16.png", None, "16-bit"),
                "rgba": (d / "rgba.png", None, "transparent"), "cmyk": (d / "cmyk.jpg", None, "CMYK"),
                "exif": (d / "rotated.jpg", None, "EXIF"), "gif": (d / "anim.gif", None, "first of its 3 frames")})
    return out


def test_every_bad_input_is_a_clear_error_and_the_next_request_works(client, tiny_files, tmp_path):
    from gradio_client.exceptions import AppError
    for name, (path, error, note) in _odd_images(tmp_path).items():
        if error:
            with pytest.raises(AppError, match=error):
                predict(client, path)
        else:
            result = predict(client, path)
            assert set(result["variants"]) == {"tf", "ft", "clip"}, name
            if note:
                assert any(note in n for n in result["notes"]), (name, result["notes"])
        assert predict(client, tiny_files["images"][0])["variants"]["tf"]["score"] >= 0, f"after {name}"
    with pytest.raises(AppError, match="choose at least one variant"):
        predict(client, tiny_files["images"][0], variants=[])
    with pytest.raises(AppError, match="unknown source|not in the list of choices"):
        predict(client, tiny_files["images"][0], source="imagenet")


def test_batch_endpoint(client, tmp_path):
    from gradio_client import handle_file
    archive = tmp_path / "parts.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(ASSETS / "examples" / "pill_chip.png", "parts/pill_chip.png")
        z.writestr("parts/readme.md", "not an image")
        z.writestr("parts/broken.png", b"\x89PNG broken")
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 10)
    files = [handle_file(str(ASSETS / "examples" / n)) for n in ("fabric_good.png", "fabric_hole.png")]
    gallery, table, csv_path, zip_path, report = client.predict(
        files=files + [handle_file(str(archive)), handle_file(str(tmp_path / "bad.bin"))],
        folder=[handle_file(str(ASSETS / "examples" / "metal_scratch.png"))],
        variants=["tf", "ft"], api_name="/predict_batch")
    assert "4 image(s) scored" in report and "3 skipped" in report
    assert len(gallery) == 4 and "MRAD-TF" in gallery[0]["caption"] and "MRAD-FT" in gallery[0]["caption"]
    rows = table["data"]
    means = [float(r[1]) for r in rows[:4]]
    assert means == sorted(means, reverse=True)
    with open(csv_path) as f:
        records = list(csv.DictReader(f))
    assert {r["file"] for r in records[:4]} == {"fabric_good.png", "fabric_hole.png", "pill_chip.png",
                                                "metal_scratch.png"}
    assert sum(bool(r["error"]) for r in records) == 3
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
    assert "results.csv" in names and "maps/pill_chip_ft.npy" in names and "overlays/fabric_hole_tf.png" in names
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="no files"):
        client.predict(files=[], api_name="/predict_batch")


def test_custom_bank_endpoint_then_predict_with_it(served):
    from gradio_client import Client, handle_file
    c = Client(served[1], verbose=False)
    report, bank_files, bank_id, source = c.predict(
        normal=[handle_file(str(ASSETS / "examples" / n)) for n in ("metal_good.png", "wood_good.png")],
        name="line 3", api_name="/build_bank")
    assert "Bank ready" in report and "2 normal" in report and source == "custom"
    assert len(bank_files) == 2 and all(str(f).endswith(".safetensors") for f in bank_files)
    assert all("line_3" in Path(f).name for f in bank_files)  # named after the bank, not a hash
    result = predict(c, ASSETS / "examples" / "metal_scratch.png", source="custom", bank_id=bank_id)
    assert "My bank" in result["source"] and "tf" in result["variants"]


def test_twenty_concurrent_clients(served, client, tiny_files):
    from gradio_client import Client
    images = tiny_files["images"]
    expected = {p: predict(client, p)["variants"] for p in images}

    def one(i):
        path = images[i % 2]
        return path, predict(Client(served[1], verbose=False), path)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert len(results) == 20
    for path, result in results:
        assert result["image"] == Path(path).name
        for v, s in expected[path].items():
            assert result["variants"][v]["score"] == pytest.approx(s["score"], abs=1e-5)


def test_opens_without_weights_and_says_what_is_missing(tiny_files, tmp_path, monkeypatch):
    import httpx
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from mrad_core.service import Service
    for name in ("MRAD_HEADS", "MRAD_IMAGE_BANK", "MRAD_PATCH_BANK", "MRAD_BACKBONE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MRAD_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    demo, url = launch(Service(files={"backbone": tiny_files["backbone"]}, model=tiny_files["model"], device="cpu"))
    try:
        assert httpx.get(url).status_code == 200
        c = Client(url, verbose=False)
        with pytest.raises(AppError) as err:
            predict(c, tiny_files["images"][0], source="visa")
        assert "not available" in str(err.value) and "MRAD_HUB_REPO" in str(err.value)
        assert "tf" in predict(c, tiny_files["images"][0], source="examples")["variants"]
    finally:
        demo.close()

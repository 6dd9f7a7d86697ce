"""The app's model holder (lazy, once, thread-safe, counted model calls), settings, custom banks, calibration,
batches."""
import csv
import io
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrad_core import MemoryBank, MRADError, batch, viz
from mrad_core.backbone import Backbone
from mrad_core.catalogue import SOURCE_LABELS
from mrad_core.lru import LRU
from mrad_core.service import Service
from mrad_core.settings import Settings

ENV = ("MRAD_BACKBONE", "MRAD_HEADS", "MRAD_IMAGE_BANK", "MRAD_PATCH_BANK", "MRAD_MODEL", "MRAD_APP_SOURCE",
       "MRAD_PRECISION", "MRAD_DEVICE", "MRAD_CALIBRATION")
ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def make_service(tiny_files, kinds=("backbone", "heads", "image_bank", "patch_bank"), precision="fp32", **kw):
    """fp32 by default, so results can be compared closely with the fp32 `tiny_detector`."""
    return Service(files={k: tiny_files[k] for k in kinds}, model=tiny_files["model"], device="cpu",
                   precision=precision, **kw)


def test_settings_are_read_once_from_the_environment(tiny_files):
    env = {"MRAD_BACKBONE": "b.safetensors", "MRAD_HEADS": "h.pth", "MRAD_PRECISION": "bf16", "MRAD_BATCH_SIZE": "3",
           "MRAD_CALIBRATION": "0", "MRAD_MAX_BATCH": "7", "HF_HUB_OFFLINE": "1", "SPACES_ZERO_GPU": "true"}
    s = Settings.from_env(env)
    assert s.files["backbone"] == "b.safetensors" and s.files["heads"] == "h.pth" and s.files["image_bank"] is None
    assert s.precision == "bf16" and s.batch_size == 3 and not s.calibration and s.max_batch == 7
    assert s.hub_offline and s.zero_gpu and s.uses_own_files
    over = Settings.from_env(env, files={"heads": "mine.pth"}, precision="fp32")
    assert over.files["heads"] == "mine.pth" and over.files["backbone"] == "b.safetensors" and over.precision == "fp32"
    assert Settings.from_env({}).precision is None and not Settings.from_env({}).uses_own_files
    with pytest.raises(TypeError, match="unknown settings"):
        Settings.from_env({}, colour="red")


def test_lru_keeps_the_most_recent():
    lru = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "a" is now the most recent
    assert lru.put("c", 3) == [("b", 2)] and "b" not in lru and len(lru) == 2


def test_precision_defaults_to_auto_and_is_shown(tiny_files, monkeypatch):
    """The app's row of runtime.ENTRY_DEFAULTS is auto: with made-up facts for this CPU class the Service takes the
    fastest pair inside the bounds (not merely whatever resolve_auto says)."""
    from mrad_core import runtime
    facts = {"made-up": [
        {"engine": "torch", "precision": "bf16", "three_variants_s": 0.5, "within_bounds": False},
        {"engine": "torch", "precision": "bf16-mlp", "three_variants_s": 2.0, "within_bounds": True},
        {"engine": "torch", "precision": "fp32", "three_variants_s": 3.0, "within_bounds": True}]}
    monkeypatch.setattr(runtime, "recorded_facts", lambda path=None: facts)
    monkeypatch.setattr(runtime, "cpu_class", lambda flags=None: "made-up")
    s = Service(files={"backbone": tiny_files["backbone"]}, model=tiny_files["model"], device="cpu", engine="torch")
    assert (s.engine, s.precision) == ("torch", "bf16-mlp")
    assert f"engine {s.engine} · precision {s.precision}" in s.status()
    fixed = Service(files={"backbone": tiny_files["backbone"]}, model=tiny_files["model"], device="cpu",
                    precision="fp32")
    assert (fixed.engine, fixed.precision) == ("torch", "fp32")  # reproducible: PyTorch fp32 unless asked
    monkeypatch.setenv("MRAD_ENGINE", "tensorrt")
    with pytest.raises(MRADError, match="engine must be one of"):
        Service(files={"backbone": tiny_files["backbone"]}, model=tiny_files["model"], device="cpu")


@pytest.fixture(scope="module")
def service(tiny_files):
    return make_service(tiny_files)


def test_nothing_loads_until_first_use(tiny_files, monkeypatch):
    loads = []
    real = Backbone.load
    monkeypatch.setattr(Backbone, "load", classmethod(lambda cls, *a, **k: loads.append(1) or real(*a, **k)))
    s = make_service(tiny_files)
    assert s._backbone is None and not loads and "nothing loaded" in s.status()
    assert s.catalogue.keys() == ["env", "examples", "custom"] and s.catalogue.default() == "env"
    assert "device CPU" in s.status() and "fp32" in s.status()
    threads = [threading.Thread(target=s.detector, args=("env",)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(s._detectors) == 1  # six concurrent first requests, one load
    assert s.detector("examples").backbone is s.detector("env").backbone  # one backbone for every source
    assert len(loads) == 1 and "ready" in s.status()


def test_analyze_matches_the_detector(service, tiny_detector, tiny_files):
    image = tiny_files["images"][1]
    a = service.analyze(image, ["clip", "tf", "ft"], "env")
    direct = tiny_detector.predict([image], ("tf", "ft", "clip"))
    w, h = Image.open(image).size
    assert a.image.shape == (h, w, 3) and a.name == Path(image).name
    assert list(a.outputs) == ["tf", "ft", "clip"]  # the canonical order, whatever the request's
    for v, r in direct.items():
        o = a.outputs[v]
        assert o.variant == v and o.score == pytest.approx(float(r.score[0]), abs=1e-6)
        assert o.image_prob == pytest.approx(float(r.image_prob[0]), abs=1e-6)
        assert o.map_top == pytest.approx(float(r.map_top[0]), abs=1e-6)
        assert o.score == pytest.approx(0.3 * o.map_top + 0.7 * o.image_prob, abs=1e-5)
        assert o.map.shape == (h, w) and o.map.dtype == np.float16
        np.testing.assert_allclose(o.map, viz.resize_map(r.map[0], (h, w)), atol=1e-3)
    summary = a.summary(0.5, viz.View(pixel_threshold=0.5))
    assert set(summary["variants"]) == {"tf", "ft", "clip"} and summary["device"] == "cpu"
    for v, s in summary["variants"].items():
        assert s["anomalous"] == (s["score"] >= 0.5) and 0 <= s["defect_area_percent"] <= 100
    assert summary["encode_ms"] > 0 and summary["encoding_reused"] is False
    rows = a.rows(0.5, viz.View())
    assert [r["variant"] for r in rows] == ["MRAD-TF", "MRAD-FT", "MRAD-CLIP"]
    assert rows[1]["score"] == summary["variants"]["ft"]["score"]


def test_the_same_image_again_reuses_its_encoding(tiny_files):
    s = make_service(tiny_files)
    s.detector("examples")  # building the examples bank encodes its images: count from here on
    before = s.calls["encode"]
    image, other = tiny_files["images"]
    first = s.analyze(image, ["tf"], "env")
    assert s.calls["encode"] == before + 1 and not first.reused and first.encode_ms > 0
    again = s.analyze(image, ["tf", "ft", "clip"], "examples")  # other variants, another source: no new encode
    assert s.calls["encode"] == before + 1 and s.calls["score"] == 4
    assert again.reused and again.encode_ms == 0
    fresh = make_service(tiny_files).analyze(image, ["tf", "ft", "clip"], "examples")
    for v in ("tf", "ft", "clip"):
        assert again.outputs[v].score == pytest.approx(fresh.outputs[v].score, abs=1e-6)
    assert abs(again.outputs["tf"].score - first.outputs["tf"].score) > 1e-4  # a different bank really was used
    s.analyze(other, ["tf"], "env")
    assert s.calls["encode"] == before + 2


def test_calibration_is_computed_in_the_call_once_and_carried_with_the_result(tiny_files):
    s = make_service(tiny_files)
    s.detector("env")  # loaded first: loading may start library threads of its own (not model work)
    threads = set(threading.enumerate())
    a = s.analyze(tiny_files["images"][0], ["tf", "ft", "clip"], "env")
    assert s.calls["encode"] == 1 and s.calls["score"] == 3  # no calibration unless asked for
    assert not a.calibrated
    assert not [t for t in threading.enumerate() if t not in threads]  # no background work of any name
    c = s.calibrate(a)
    refs = len(list((ASSETS / "examples").glob("*_good.png")))
    assert s.calls["encode"] == 1 + refs and s.calls["score"] == 3 + 3  # references encoded once, scored per variant
    assert c.calibrated and all(o.calibration.high > o.calibration.low for o in c.outputs.values())
    before = dict(s.calls)
    b = s.analyze(tiny_files["images"][1], ["tf", "ft"], "env", calibrate=True)
    assert b.calibrated and s.calls["encode"] == before["encode"] + 1 and s.calls["score"] == before["score"] + 2
    # levels computed elsewhere (another GPU worker) are taken, not recomputed
    other = make_service(tiny_files)
    d = other.analyze(tiny_files["images"][1], ["tf"], "env", calibrate=True,
                      calibrations={"tf": c.outputs["tf"].calibration})
    assert other.calls["encode"] == 1 and d.outputs["tf"].calibration == c.outputs["tf"].calibration


def test_bad_requests_are_user_errors(service, tiny_files, tmp_path):
    with pytest.raises(MRADError, match="at least one variant"):
        service.analyze(tiny_files["images"][0], [], "env")
    with pytest.raises(MRADError, match="unknown: xl"):
        service.analyze(tiny_files["images"][0], ["tf", "xl"], "env")
    with pytest.raises(MRADError, match="unknown source"):
        service.analyze(tiny_files["images"][0], ["tf"], "imagenet")
    with pytest.raises(MRADError, match="Bank tab"):
        service.analyze(tiny_files["images"][0], ["tf"], "custom", bank_id="nope")
    with pytest.raises(MRADError, match="Bank tab"):
        service.analyze(tiny_files["images"][0], ["tf"], "custom", bank_id="../../etc")
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(MRADError, match="not an image"):
        service.analyze(tmp_path / "x.png", ["tf"], "env")


def test_variants_without_heads_are_skipped_with_reasons(tiny_files):
    s = make_service(tiny_files, kinds=("backbone", "image_bank", "patch_bank"))
    a = s.analyze(tiny_files["images"][0], ["tf", "ft", "clip"], "env")
    assert list(a.outputs) == ["tf"] and set(a.skipped) == {"ft", "clip"}
    assert s.catalogue.variants("env") == ("tf",)
    assert "MRAD_HEADS" in a.skipped["ft"]
    with pytest.raises(MRADError, match="none of the chosen variants"):
        s.analyze(tiny_files["images"][0], ["ft"], "env")
    with pytest.raises(MRADError, match="MRAD_IMAGE_BANK"):
        make_service(tiny_files, kinds=("backbone", "heads")).detector("env")


def test_paper_sources_say_what_is_missing_and_how_to_fix(tiny_files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MRAD_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    s = make_service(tiny_files, kinds=("backbone",))
    assert s.catalogue.keys() == ["visa", "mvtec", "examples", "custom"]
    assert s.catalogue.default() == "examples"  # nothing of the paper's is here: the built-in bank works
    facts = s.catalogue.facts("visa")
    text = "\n".join(facts.lines)
    assert facts.missing and "missing" in text and "cache_model_visa.pt" in text and "CC BY 4.0" in text
    with pytest.raises(MRADError) as err:
        s.detector("visa")
    message = str(err.value)
    assert "not available" in message and "MRAD_HUB_REPO" in message and "fetch-official" in message
    a = s.analyze(str(ASSETS / "examples" / "metal_scratch.png"), ["tf", "ft"], "examples")
    assert list(a.outputs) == ["tf"] and "ft" in a.skipped  # the examples bank runs TF with the backbone only


def test_examples_bank_is_built_from_assets(service):
    det = service.detector("examples")
    n_images = len([p for p in (ASSETS / "bank").glob("*.png") if not p.stem.endswith("_mask")])
    n_defects = len(list((ASSETS / "bank").glob("*_mask.png")))
    assert len(det.image_bank) == n_images and int(det.image_bank.labels.sum()) == n_defects
    assert det.image_bank.source == "examples"
    assert "synthetic" in " ".join(service.catalogue.facts("examples").lines)


def test_custom_banks(service, tiny_files, tmp_path):
    normal = [str(ASSETS / "examples" / f"{k}_good.png") for k in ("metal", "wood")]
    bank_id, notes = service.build_bank(normal, [], "mine")
    info = service.catalogue.bank_info(bank_id)
    assert "synthetic defects" in notes[0]
    assert "2 normal" in info and "'mine'" in info
    a = service.analyze(str(ASSETS / "examples" / "metal_scratch.png"), ["tf"], "custom", bank_id)
    assert 0 <= a.outputs["tf"].score <= 1
    image_file, patch_file = service.catalogue.bank_files(bank_id)
    assert image_file.name == "mine_image_bank.safetensors" and patch_file.name == "mine_patch_bank.safetensors"
    assert len(MemoryBank.load(image_file, "image")) == 2 + len(list((ASSETS / "bank").glob("*_mask.png")))
    MemoryBank.load(patch_file, "patch")
    # another process (a fresh GPU worker) finds the bank by its id, from its files
    elsewhere = make_service(tiny_files)
    elsewhere.workdir = service.workdir
    elsewhere.catalogue.bank_dir = service.catalogue.bank_dir
    b = elsewhere.analyze(str(ASSETS / "examples" / "metal_scratch.png"), ["tf"], "custom", bank_id)
    assert b.outputs["tf"].score == pytest.approx(a.outputs["tf"].score, abs=1e-6)
    # a defect image with its mask is used; one without a mask is skipped with a note
    defect, mask = ASSETS / "bank" / "wood_crack.png", ASSETS / "bank" / "wood_crack_mask.png"
    lone = tmp_path / "lonely.png"
    Image.open(defect).save(lone)
    bank2, notes2 = service.build_bank(normal[:1], [str(defect), str(mask), str(lone)], "with defects")
    assert any("lonely.png" in n and "mask" in n for n in notes2)
    assert "1 normal, 1 defect" in service.catalogue.bank_info(bank2)
    with pytest.raises(MRADError, match="no usable normal image"):
        service.build_bank([str(tmp_path / "missing.png")], [], "broken")


def test_bank_building_is_capped_and_chunked(tiny_files):
    s = make_service(tiny_files, max_bank_images=3, batch_size=2)
    encodes = []
    real = s.encode
    s.encode = lambda det, images: encodes.append(len(images)) or real(det, images)
    normal = [str(ASSETS / "examples" / f"{k}_good.png") for k in ("metal", "wood", "pill", "fabric")]
    bank_id, notes = s.build_bank(normal, [], "capped")
    assert any("at most 3" in n for n in notes)
    assert "3 normal" in s.catalogue.bank_info(bank_id)
    assert max(encodes) <= 2  # encoded chunk by chunk


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_collect_files_reports_each_bad_entry(tmp_path):
    good = (ASSETS / "examples" / "pill_good.png").read_bytes()
    archive = _zip(tmp_path / "a.zip", {"dir/pill.png": good, "__MACOSX/dir/._pill.png": b"x", "notes.txt": b"hi",
                                        "dir/broken.png": good})
    raw = bytearray(archive.read_bytes())  # corrupt broken.png's data: its CRC check fails on reading
    start = raw.index(good, raw.index(b"dir/broken.png") + 14)
    raw[start + 100:start + 200] = bytes(100)
    archive.write_bytes(bytes(raw))
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    (tmp_path / "pill.png").write_bytes(good)
    (tmp_path / "data.csv").write_text("1,2")
    entries, errors = batch.collect_files([archive, tmp_path / "bad.zip", tmp_path / "pill.png",
                                           tmp_path / "data.csv"])
    assert [e.name for e in entries] == ["pill.png", "broken.png", "pill_2.png"]  # unique names
    assert isinstance(entries[0].source(), bytes) and entries[2].source() == str(tmp_path / "pill.png")
    with pytest.raises(MRADError, match="unreadable ZIP entry"):
        entries[1].source()
    text = dict(errors)
    assert "not an image file" in text["a.zip:notes.txt"] and "ZIP" in text["bad.zip"]
    assert "not an image type" in text["data.csv"]
    limited, errs = batch.collect_files([tmp_path / "pill.png"] * 3, limit=2)
    assert len(limited) == 2 and "at most 2" in errs[-1][1]


def test_run_batch_writes_sorted_csv_zip_and_errors(service, tiny_files, tmp_path):
    files = [str(ASSETS / "examples" / n) for n in ("fabric_good.png", "fabric_hole.png", "pill_chip.png")]
    archive = _zip(tmp_path / "more.zip", {"wood_crack.png": (ASSETS / "examples" / "wood_crack.png").read_bytes(),
                                           "empty.png": b""})
    progress = []
    r = batch.run_batch(service, files + [str(archive)], ["clip", "tf"], "env",
                        progress=lambda p, d: progress.append(p))
    assert progress[0] == 0 and progress[-1] == 1
    scored = [row for row in r.rows if not row.get("error")]
    assert len(scored) == 4 and [row["file"] for row in r.rows[4:]] == ["empty.png"]
    means = [row["mean_score"] for row in scored]
    assert means == sorted(means, reverse=True)
    for row in scored:
        assert row["mean_score"] == pytest.approx((row["tf_score"] + row["clip_score"]) / 2, abs=1e-4)
    assert len(r.gallery) == 4 and r.gallery[0][1].startswith(scored[0]["file"])
    with open(r.csv) as f:
        table = list(csv.DictReader(f))
    assert [t["file"] for t in table] == [row["file"] for row in r.rows] and "empty" in table[-1]["error"]
    with zipfile.ZipFile(r.zip) as z:
        names = z.namelist()
        assert "results.csv" in names
        assert sum(n.startswith("overlays/") for n in names) == 8 and sum(n.startswith("maps/") for n in names) == 8
        m = np.load(io.BytesIO(z.read("maps/fabric_hole_clip.npy")))
    assert m.shape == (518, 518) and m.dtype == np.float32
    with pytest.raises(MRADError, match="no images"):
        batch.run_batch(service, [str(tmp_path / "x.txt")], ["tf"], "env")


def test_tidy_removes_only_old_work_files(tiny_files):
    s = make_service(tiny_files)
    old, new = s.workdir / "old", s.workdir / "new.csv"
    old.mkdir()
    (old / "x.npy").write_bytes(b"1")
    new.write_text("a,b")
    os.utime(old, (1, 1))
    s.tidy(max_age=3600)
    assert not old.exists() and new.exists()


def test_precision_and_device_settings(tiny_files, monkeypatch):
    monkeypatch.setenv("MRAD_PRECISION", "bf16")
    assert make_service(tiny_files, precision=None).precision == "bf16"
    monkeypatch.setenv("MRAD_PRECISION", "int3")
    with pytest.raises(MRADError, match="MRAD_PRECISION"):
        make_service(tiny_files, precision=None)
    assert set(SOURCE_LABELS) == {"env", "visa", "mvtec", "examples", "custom"}


def test_custom_bank_detectors_are_evicted_oldest_first(tiny_files, monkeypatch):
    """Every taught edit is a bank: only the newest KEPT_CUSTOM_DETECTORS custom detectors stay loaded (the other
    sources stay), and an evicted bank loads again from its files when used."""
    from mrad_core import service as service_module
    from mrad_core.bank import MemoryBank

    monkeypatch.setattr(service_module, "KEPT_CUSTOM_DETECTORS", 2)
    s = make_service(tiny_files)
    s.detector("env")
    banks = (MemoryBank.load(tiny_files["image_bank"], "image"), MemoryBank.load(tiny_files["patch_bank"], "patch"))
    ids = [s.catalogue.add_bank(banks, f"bank {i}") for i in range(3)]
    for bank_id in ids:
        s.detector("custom", bank_id)
    assert list(s._detectors) == [("env", None), ("custom", ids[1]), ("custom", ids[2])]
    again = s.detector("custom", ids[0])  # evicted: loaded again (its files are still there)
    assert again.variants and list(s._detectors)[-1] == ("custom", ids[0]) and len(s._detectors) == 3


def test_a_failed_load_is_said_once_not_counted_as_work_under_way(tiny_files, tmp_path):
    """The status line after a failed backbone load: short, pointing at the notice, without 'so far' seconds (the
    error itself is the notice's and the Detect summary's)."""
    files = {**tiny_files, "backbone": str(tmp_path / "missing.safetensors")}
    s = make_service(files)
    with pytest.raises(MRADError, match="missing.safetensors"):
        s.detector("env")
    status = s.status()
    assert status.startswith("the CLIP backbone could not be loaded") and "so far" not in status
    assert "missing.safetensors" not in status

"""The app's teaching panel (mrad_core/ui/teach.py) through its handlers, on the tiny model: "Mark the defect" with a
painted mask raises the image's score and map inside the mask (encoded once), "This is normal" lowers a normal image's
score, undo and remove restore the earlier result exactly, the profile sets the sliders and round-trips through
save/load, bank + profile save/load, explanations sorted by weight, clear errors; and the same in ZeroGPU workers."""
import re

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from mrad_core import profile as profiles
from mrad_core import teaching
from mrad_core.ui.sessions import Bank, TeachSession
from tiny_model import synthetic_image

FILES = ("backbone", "heads", "image_bank", "patch_bank")
VARIANTS = ["tf", "ft", "clip"]
VALUES = (0.5, 0.5, 0.5, "turbo", True, False, "raw")  # the values of detect.CONTROLS, in its order
CONTROLS = dict(image_threshold=0.5, pixel_threshold=0.5, opacity=0.5, colormap="turbo", contours=True, binary=False,
                normalisation="raw")  # the same, as the handlers take them (by name)
CALIBRATED = {**CONTROLS, "normalisation": "calibrated"}


def no_progress(*args, **kwargs):
    pass


def make_ui(tiny_files, **kw):
    from mrad_core.settings import Settings
    from mrad_core.ui import create_app
    settings = Settings.from_env(files={k: tiny_files[k] for k in FILES}, model=tiny_files["model"], device="cpu",
                                 precision="fp32", **kw)
    page = create_app(settings).mrad
    return page.service, page


def inputs(**given) -> dict:
    """A teaching handler's named inputs (as the page passes them): no session yet, the stock bank, every variant,
    the default controls; but for `given`."""
    return {"session": None, "source": "env", "bank_id": None, "variants": VARIANTS, "levels": {}, "profile": None,
            **CONTROLS, **given}


def edit(**given) -> dict:
    """The named inputs of an edit (This is normal, Add as defect, …): those and the start mode."""
    return {"start_mode": "current", **inputs(**given)}


def after(out, page, **given) -> dict:
    """The named inputs of the next Undo / Remove after an edit's outputs `out` (its session, bank and levels)."""
    state = {"session": out[page.teach.session], "source": out[page.source], "bank_id": out[page.bank_id],
             "levels": out.get(page.levels, {})}
    return inputs(**{**state, **given})


@pytest.fixture(scope="module")
def ui(tiny_files):
    return make_ui(tiny_files)


def detect(ui, image, levels=None):
    out = ui.detect.detect_image(image, VARIANTS, "env", None, levels or {}, *VALUES, progress=no_progress)
    return out[ui.analysis], out[ui.levels]


def painted(analysis):
    """An ImageEditor value: query_1's display image with its defect painted in red on the layer."""
    h, w = analysis.image.shape[:2]
    mask = np.asarray(synthetic_image(201, size=(120, 90), defect=True)[1].resize((w, h), Image.NEAREST)) > 0
    layer = np.zeros((h, w, 4), np.uint8)
    layer[mask] = (255, 0, 0, 255)
    background = np.dstack([analysis.image, np.full((h, w), 255, np.uint8)])
    return {"background": background, "layers": [layer], "composite": background}, mask


def test_mark_the_defect_raises_the_score_then_undo_restores_it_exactly(ui, tiny_files):
    service, page = ui
    t, d = page.teach, page.detect
    query = tiny_files["images"][1]
    before, levels = detect(page, query)
    editor_value, mask = painted(before)
    opened = t.mark(before)
    assert opened[t.editor]["background"] is before.image and opened[t.mask_file] is None  # the image shown
    encoded = service.calls["encode"]
    out = t.add_defect(**edit(image=query, analysis=before, editor=editor_value, mask_file=None, levels=levels))
    assert service.calls["encode"] == encoded  # the image on screen: its cached encoding, added and re-scored
    taught, session = out[page.analysis], out[t.session]
    assert isinstance(session, TeachSession) and session.before == Bank("env") and session.start == Bank("env")
    assert out[page.source] == "custom" and session.bank == Bank("custom", out[page.bank_id])
    assert session.added == ("query_1",) and "query_1 added as defect" in out[t.teach_report]
    for v in ("tf", "ft"):
        assert taught.outputs[v].score > before.outputs[v].score + 1e-3, v
        m0, m1 = (np.asarray(a.outputs[v].map, np.float32) for a in (before, taught))
        assert m1[mask].mean() > m0[mask].mean() + 1e-3, v
        assert f"{taught.outputs[v].score:.3f}" in out[d.cards[v]]  # the new score is on screen
    undone = t.undo(**after(out, page, image=query, levels=out.get(page.levels, levels)))
    assert undone[page.source] == "env" and undone[page.bank_id] is None and undone[t.session].stack == ()
    for v in VARIANTS:
        assert undone[page.analysis].outputs[v].score == pytest.approx(before.outputs[v].score, abs=1e-6)
        np.testing.assert_allclose(undone[page.analysis].outputs[v].map, before.outputs[v].map, rtol=0, atol=1e-6)
    with pytest.raises(gr.Error, match="nothing to undo: the memory bank in use is not one taught here"):
        t.undo(**after(undone, page, image=query))


def test_this_is_normal_lowers_the_score_and_remove_restores_it_exactly(ui, tiny_files):
    service, page = ui
    t = page.teach
    query = tiny_files["images"][0]
    before, levels = detect(page, query)
    out = t.this_is_normal(**edit(image=query, analysis=before, levels=levels))
    for v in ("tf", "ft"):
        assert out[page.analysis].outputs[v].score < before.outputs[v].score - 1e-3, v
    assert out[t.entries].choices == [("query_0", "query_0")]
    removed = t.remove(**after(out, page, chosen=["query_0"], image=query, levels=out.get(page.levels, levels)))
    assert removed[page.source] == "custom" and removed[page.bank_id] != out[page.bank_id]
    assert removed[t.session].added == () and removed[t.entries].choices == []
    assert len(removed[t.session].stack) == 2  # the removal is an edit of its own: Undo brings query_0 back
    with pytest.raises(gr.Error, match="nothing to remove: the memory bank in use is not one taught here"):
        t.remove(**after(out, page, chosen=["query_0"], image=query, bank_id="someone-elses"))
    for v in VARIANTS:
        assert removed[page.analysis].outputs[v].score == pytest.approx(before.outputs[v].score, abs=1e-6)
        np.testing.assert_allclose(removed[page.analysis].outputs[v].map, before.outputs[v].map, rtol=0, atol=1e-6)


def test_profile_sets_the_sliders_and_round_trips_through_save_and_load(ui, tiny_files, tmp_path):
    service, page = ui
    t, c = page.teach, page.detect.controls
    paths = []
    for i in range(5):
        synthetic_image(400 + i)[0].save(tmp_path / f"good_{i}.png")
        paths.append(str(tmp_path / f"good_{i}.png"))
    shown, levels = detect(page, tiny_files["images"][1])
    out = t.calibrate(files=paths, rate_percent=20, profile_name="line 4", follow="ft", variants=VARIANTS,
                      source="env", bank_id=None, analysis=shown, **CONTROLS)
    profile = out[t.profile]
    assert set(profile.variants) == set(VARIANTS) and profile.name == "line 4" and profile.rate == pytest.approx(0.2)
    ft = profile.variants["ft"]
    assert ft.image_threshold == pytest.approx(float(np.quantile(ft.normal_scores, 0.8)), abs=1e-9)
    assert out[c["image_threshold"]]["value"] == ft.image_threshold  # the slider takes the profile's threshold
    assert out[c["pixel_threshold"]] == 1.0 and out[c["normalisation"]] == "calibrated"
    assert out[page.analysis].outputs["tf"].calibration == teaching.profile_levels(profile)["tf"]  # shown on its scale
    assert page.levels not in out  # the page's (shared) reference levels are not replaced by a profile's
    # a later result (Detect) arrives with the reference levels: it is shown on the profile's scale at once
    later, _ = detect(page, tiny_files["images"][0])
    kept = t.keep_profile(later, profile, **CALIBRATED)
    assert kept[page.analysis].outputs["ft"].calibration == teaching.profile_levels(profile)["ft"]
    replot = t.keep_profile(kept[page.analysis], profile, **CONTROLS)  # then only the plot shows its score
    assert list(replot) == [t.plot] and len(replot[t.plot].axes) == 3
    assert "calibrated" in out[page.detect.cards["tf"]] and out[t.plot].axes  # a plot per variant
    assert len(out[t.plot].axes) == 3
    loaded = t.load_profile(out[t.profile_file], "tf", shown, **CONTROLS)
    assert loaded[t.profile].to_json() == profile.to_json()  # exact: JSON keeps Python floats
    assert loaded[c["image_threshold"]]["value"] == profile.variants["tf"].image_threshold
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "mrad-profile/9", "rate": 0.01}')
    with pytest.raises(gr.Error, match="mrad-profile/9 is not supported"):
        t.load_profile(str(bad), "tf", shown, **CONTROLS)
    with pytest.raises(gr.Error, match="give 5–50 known-good images"):
        t.calibrate(paths[:2], 1, "x", "tf", VARIANTS, "env", None, None, **CONTROLS)
    with pytest.raises(gr.Error, match="false-alarm rate must be between 0 and 100"):
        t.calibrate(paths, 0, "x", "tf", VARIANTS, "env", None, None, **CONTROLS)


def test_a_taught_result_on_the_calibrated_view(ui, tiny_files):
    """Without a profile the new bank's reference levels are computed with it; with one, the profile's scale."""
    service, page = ui
    t = page.teach
    query = tiny_files["images"][0]
    shown, levels = detect(page, query)
    out = t.this_is_normal(**edit(image=query, analysis=shown, variants=["tf"], levels=levels,
                                  normalisation="calibrated"))
    a = out[page.analysis]
    assert a.calibrated and out[page.levels][f"custom:{out[page.bank_id]}"]["tf"] == a.outputs["tf"].calibration
    assert "not calibrated" not in out[page.detect.cards["tf"]]
    rng = np.random.default_rng(0)
    profile = profiles.profile_from_results({"tf": (rng.random(6), rng.random((6, 8, 8)))}, rate=0.1)
    out = t.this_is_normal(**edit(image=query, analysis=shown, variants=["tf"], levels=levels, profile=profile,
                                  normalisation="calibrated"))
    assert out[page.analysis].outputs["tf"].calibration == teaching.profile_levels(profile)["tf"]


def test_bank_and_profile_save_and_load_together(ui, tiny_files, tmp_path):
    service, page = ui
    t = page.teach
    query = tiny_files["images"][0]
    before, levels = detect(page, query)
    taught = t.this_is_normal(**edit(image=query, analysis=before, levels=levels))
    paths = []
    for i in range(5):
        synthetic_image(500 + i)[0].save(tmp_path / f"good_{i}.png")
        paths.append(str(tmp_path / f"good_{i}.png"))
    profile = t.calibrate(paths, 1, "p", "tf", VARIANTS, "custom", taught[page.bank_id], None, **CONTROLS)[t.profile]
    files = t.save_bundle("custom", taught[page.bank_id], profile)[t.bundle]
    assert [f.rsplit("_", 2)[-2:] for f in files[:2]] == [["image", "bank.safetensors"], ["patch", "bank.safetensors"]]
    out = t.load_bundle(**inputs(paths=files, image=query))
    assert out[page.source] == "custom" and out[page.bank_id] not in (None, taught[page.bank_id])
    assert out[t.session] == TeachSession.from_bank(out[page.bank_id])  # teaching continues from it
    assert out[t.profile].to_json() == profile.to_json()
    for v in VARIANTS:
        assert out[page.analysis].outputs[v].score == pytest.approx(taught[page.analysis].outputs[v].score, abs=1e-6)
    with pytest.raises(gr.Error, match="nothing to save"):
        t.save_bundle("env", None, None)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(gr.Error, match="not recognised: notes.txt"):
        t.load_bundle(**inputs(paths=[files[0], str(tmp_path / "notes.txt")], image=query))


def test_why_this_score_lists_the_top_entries_by_weight_and_explains_a_clicked_patch(ui, tiny_files):
    service, page = ui
    t = page.teach
    query = tiny_files["images"][1]
    shown, _ = detect(page, query)
    why = t.why(query, shown, None, 3, "ft", **CONTROLS)
    table, picture = why[t.why_html], why[t.map_image]
    for v in VARIANTS:
        block = table.split(f"<div id='why-{v}'>")[1].split("</table>")[0]
        weights = [float(w) for w in re.findall(r"<td>(0\.\d{4})</td>", block)]
        assert len(weights) == 3 and weights == sorted(weights, reverse=True)
        assert "bank_" in block and "<img" not in block  # the tiny bank records ids, no thumbnails
    expected = teaching.explain_image(service, query, ["ft"], "env", k=3)["entries"]["ft"]
    assert f"<td>{expected[0]['weight']:.4f}</td>" in table
    assert picture.shape == shown.image.shape
    h, w = shown.image.shape[:2]
    clicked = t.point(query, shown, None, "ft", 2, gr.SelectData(None, {"index": [w // 2, h // 2], "value": None}),
                      **CONTROLS)
    text = clicked[t.point_report]
    # the clicked point is marked on the map shown (the same map, drawn again with a marker around the point)
    plain = t.map_of(shown, "ft", **CONTROLS)[t.map_image]
    marked = clicked[t.map_image]
    assert marked.shape == plain.shape
    ys, xs = np.nonzero((marked != plain).any(axis=2))
    assert len(xs) and abs(xs.mean() - w // 2) <= 2 and abs(ys.mean() - h // 2) <= 2
    grid = teaching.explain_image(service, query, ["tf"], "env")["grid"]
    assert f"row {grid // 2}, column {grid // 2}" in text and "anomalous" in text
    taught = t.this_is_normal(**edit(image=query, analysis=shown))
    table = t.why(query, taught[page.analysis], taught[page.bank_id], 3, "ft", **CONTROLS)[t.why_html]
    first = table.split("<div id='why-tf'>")[1].split("</tr>")[1]  # the top entry: the image itself, now taught
    assert "query_1" in first and "data:image/png;base64" in first  # with its thumbnail
    with pytest.raises(gr.Error, match="press \\*\\*Detect"):
        t.why(None, None, None, 3, "ft", **CONTROLS)


def test_an_uploaded_defect_image_with_its_mask_file(ui, tiny_files, tmp_path):
    service, page = ui
    t = page.teach
    query = tiny_files["images"][1]
    shown, levels = detect(page, query)
    image, mask = synthetic_image(777, defect=True)
    mask.save(tmp_path / "upload_mask.png")
    editor_value = {"background": np.dstack([np.asarray(image), np.full(image.size[::-1], 255, np.uint8)]),
                    "layers": [], "composite": None}
    encoded = service.calls["encode"]
    out = t.add_defect(**edit(image=query, analysis=shown, editor=editor_value,
                              mask_file=str(tmp_path / "upload_mask.png"), levels=levels))
    assert service.calls["encode"] == encoded + 1  # the upload, once; the image on screen re-used its encoding
    assert out[t.session].added == ("defect",)
    ib, pb = service.catalogue.bank(out[page.bank_id])
    assert int(ib.labels[-1]) == 1 and pb.labels[pb.owner == len(ib) - 1].tolist() == [1, 0]
    assert out[page.analysis].name == shown.name  # the image on screen, re-scored with the new bank


def test_clear_errors(ui, tiny_files):
    service, page = ui
    t = page.teach
    shown, _ = detect(page, tiny_files["images"][1])
    editor_value, _ = painted(shown)
    editor_value["layers"] = [np.zeros_like(editor_value["layers"][0])]
    with pytest.raises(gr.Error, match="nothing painted"):
        t.add_defect(**edit(image=tiny_files["images"][1], analysis=shown, editor=editor_value, mask_file=None))
    with pytest.raises(gr.Error, match="no defect image"):
        t.add_defect(**edit(image=None, analysis=None, editor=None, mask_file=None))
    with pytest.raises(gr.Error, match="press \\*\\*Detect"):
        t.this_is_normal(**edit(image=None, analysis=None))


def test_teaching_across_zero_gpu_workers(tiny_files, tmp_path):
    """Every call in a fresh fork: the taught bank lives in files, the undo stack in the session's state."""
    service, page = make_ui(tiny_files, emulate_zero_gpu=True)
    service.preload("env")
    t = page.teach
    query = tiny_files["images"][1]
    before, levels = detect(page, query)
    editor_value, _ = painted(before)
    out = t.add_defect(**edit(start_mode="empty", image=query, analysis=before, editor=editor_value, mask_file=None,
                              levels=levels))
    assert service.calls["encode"] == 0 and out[page.source] == "custom"  # the work happened in the workers
    again = page.detect.predict({"path": query}, VARIANTS, "custom", bank_id=out[page.bank_id])
    assert again["variants"]["tf"]["score"] == pytest.approx(out[page.analysis].outputs["tf"].score, abs=1e-5)
    assert "only anomalous" in out[t.teach_report]  # taught from empty: one class so far
    assert out[t.session].start is None  # taught from an empty bank
    undone = t.undo(**after(out, page, image=query, levels=out.get(page.levels, levels)))
    assert undone[page.analysis].outputs["tf"].score == pytest.approx(before.outputs["tf"].score, abs=1e-6)
    table = t.why(query, before, None, 2, "tf", **CONTROLS)[t.why_html]  # explanations and calibration in workers too
    assert table.count("<tr>") == 3 * 3 and service.calls["encode"] == 0
    point = t.point(query, before, None, "ft", 2, gr.SelectData(None, {"index": [1, 1], "value": None}), **CONTROLS)
    assert "patch (row" in point[t.point_report]
    paths = []
    for i in range(5):
        synthetic_image(800 + i)[0].save(tmp_path / f"good_{i}.png")
        paths.append(str(tmp_path / f"good_{i}.png"))
    profile = t.calibrate(paths, 10, "z", "tf", ["tf"], "env", None, before, **CONTROLS)[t.profile]
    assert len(profile.variants["tf"].normal_scores) == 5 and service.calls["encode"] == 0

"""The app's teaching calls (mrad_core.teaching) on the tiny model: a query's own defect raises its score and its map
inside the mask, "This is normal" lowers a normal query's score, each example is encoded once, removing restores the
earlier result exactly, calibration gives the quantiles of the normal scores, explanations are weight-sorted."""
import numpy as np
import pytest
import torch

from mrad_core import teaching, viz
from mrad_core.errors import MRADError
from mrad_core.images import load_mask
from mrad_core.service import Service
from tiny_model import synthetic_image

FILES = ("backbone", "heads", "image_bank", "patch_bank")
VARIANTS = ["tf", "ft", "clip"]
START = {"source": "env", "bank_id": None}


@pytest.fixture(scope="module")
def service(tiny_files):
    return Service(files={k: tiny_files[k] for k in FILES}, model=tiny_files["model"], device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def defect_mask():
    """query_1's defect mask at the image's own size (as a brush would paint it), 0/1 uint8."""
    return (np.asarray(synthetic_image(201, size=(120, 90), defect=True)[1]) > 0).astype(np.uint8)


def test_adding_the_current_defect_raises_its_score_and_map_inside_the_mask(service, tiny_files, defect_mask):
    query = tiny_files["images"][1]
    before = service.analyze(query, VARIANTS, "env")
    encoded = service.calls["encode"]
    bank_id, image_id, after = teaching.add_example(service, START, None, query, defect_mask, current=query,
                                                    variants=VARIANTS)
    assert service.calls["encode"] == encoded  # the current image: its cached encoding, for adding and re-scoring
    assert image_id == "query_1" and after.source == "custom"
    ib, pb = service.catalogue.bank(bank_id)
    assert ib.ids[-1] == "query_1" and int(ib.labels[-1]) == 1 and ib.thumbnails is not None
    inside = viz.resize_map(load_mask(synthetic_image(201, size=(120, 90), defect=True)[1]).numpy(),
                            before.outputs["tf"].map.shape) > 0.5
    for v in ("tf", "ft"):
        assert after.outputs[v].score > before.outputs[v].score + 1e-3, v
        m0, m1 = (np.asarray(a.outputs[v].map, np.float32) for a in (before, after))
        assert m1[inside].mean() > m0[inside].mean() + 1e-3, v


def test_this_is_normal_lowers_a_normal_querys_score_and_undo_restores_it_exactly(service, tiny_files):
    query = tiny_files["images"][0]
    before = service.analyze(query, VARIANTS, "env")
    bank_id, image_id, after = teaching.add_example(service, START, None, query, current=query, variants=VARIANTS)
    for v in ("tf", "ft"):
        assert after.outputs[v].score < before.outputs[v].score - 1e-3, v
    # a second example on top, then removed: exactly the first edit's bank again (outputs within float rounding)
    other = tiny_files["images"][1]
    second, other_id, _ = teaching.add_example(service, START, bank_id, other, current=query, variants=VARIANTS)
    assert teaching.taught_ids(service, second, service.catalogue.bank(bank_id)[0].ids) == [other_id]
    removed, restored = teaching.remove_examples(service, second, [other_id], current=query, variants=VARIANTS)
    for a, b in zip(service.catalogue.bank(removed), service.catalogue.bank(bank_id)):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    for v in VARIANTS:
        assert restored.outputs[v].score == pytest.approx(after.outputs[v].score, abs=1e-6)
        np.testing.assert_allclose(restored.outputs[v].map, after.outputs[v].map, rtol=0, atol=1e-6)
    # removing the first one too gives the stock bank's result again
    _, stock = teaching.remove_examples(service, removed, [image_id], current=query, variants=VARIANTS)
    for v in VARIANTS:
        assert stock.outputs[v].score == pytest.approx(before.outputs[v].score, abs=1e-6)
        np.testing.assert_allclose(stock.outputs[v].map, before.outputs[v].map, rtol=0, atol=1e-6)


def test_start_from_empty_and_bad_masks(service, tiny_files):
    query = tiny_files["images"][0]
    bank_id, image_id, a = teaching.add_example(service, None, None, query, current=query, variants=["tf"])
    ib, pb = service.catalogue.bank(bank_id)
    assert ib.ids == [image_id] and len(pb) == 1 and a.outputs["tf"].image_prob == pytest.approx(0, abs=1e-6)
    with pytest.raises(MRADError, match="mask is empty"):
        teaching.add_example(service, START, None, query, np.zeros((90, 120), np.uint8))
    with pytest.raises(MRADError, match="choose the taught image"):
        teaching.remove_examples(service, bank_id, [])


def test_calibration_gives_the_quantiles_of_the_normal_scores(service, tiny_files, tmp_path):
    paths = []
    for i in range(6):
        synthetic_image(300 + i)[0].save(tmp_path / f"good_{i}.png")
        paths.append(str(tmp_path / f"good_{i}.png"))
    profile = teaching.calibrate(service, paths, ["tf", "ft"], "env", rate=0.2, name="line 4")
    assert set(profile.variants) == {"tf", "ft"} and profile.images == [f"good_{i}.png" for i in range(6)]
    for v in ("tf", "ft"):
        expected = [service.analyze(p, [v], "env").outputs[v].score for p in paths]
        p = profile.variants[v]
        assert p.normal_scores == pytest.approx(expected, abs=1e-5)
        assert p.image_threshold == pytest.approx(float(np.quantile(expected, 0.8)), abs=1e-5)
        levels = teaching.profile_levels(profile)[v]  # on the calibrated view: median -> 0, threshold -> 1
        assert viz.normalise(np.array([[p.pixel_median, p.pixel_threshold]]), "calibrated", levels) == \
            pytest.approx(np.array([[0.0, 1.0]]), abs=1e-5)
    with pytest.raises(MRADError, match="give 5–50 known-good images"):
        teaching.calibrate(service, paths[:3], ["tf"], "env")


def test_explanations_are_the_top_entries_sorted_by_weight(service, tiny_files):
    out = teaching.explain_image(service, tiny_files["images"][1], VARIANTS, "env", k=3)
    assert set(out["entries"]) == set(VARIANTS) and out["note"] is None  # the tiny bank records its images
    for rows in out["entries"].values():
        weights = [r["weight"] for r in rows]
        assert len(rows) == 3 and weights == sorted(weights, reverse=True) and 0 < sum(weights) <= 1 + 1e-6
        assert all(r["id"].startswith("bank_") and r["label"] in ("normal", "anomalous") for r in rows)
    point = teaching.explain_point(service, tiny_files["images"][1], "tf", "env", None, 45, 60, 90, 120, k=2)
    assert point["row"] == point["col"] == out["grid"] // 2
    assert point["normal"] + point["anomalous"] == pytest.approx(1, abs=1e-5)
    with pytest.raises(MRADError, match="outside"):
        teaching.explain_point(service, tiny_files["images"][1], "tf", "env", None, 95, 10, 90, 120)


def test_a_bank_taught_from_a_paper_source_keeps_its_heads(tiny_files, monkeypatch):
    """Teaching from VisA: the new custom bank records heads_from=visa and loads VisA's heads (here the tiny heads
    served as VisA's through the resolver), so MRAD-FT and MRAD-CLIP keep running."""
    from mrad_core import catalogue, sources
    from mrad_core.bank import MemoryBank
    from mrad_core.heads import Heads

    service = Service(files={"backbone": tiny_files["backbone"]}, model=tiny_files["model"], device="cpu",
                      precision="fp32")
    stock = (MemoryBank.load(tiny_files["image_bank"], "image"), MemoryBank.load(tiny_files["patch_bank"], "patch"))
    heads = Heads.load(tiny_files["heads"])
    asked, parts = [], catalogue.Catalogue.parts
    monkeypatch.setattr(catalogue.Catalogue, "parts", lambda self, key, bank_id, build: (
        (heads, *stock) if key == "visa" else parts(self, key, bank_id, build)))  # VisA's files without a resolver
    monkeypatch.setattr(sources.PaperSource, "heads", lambda self: asked.append(self.key) or heads)
    new_id, _, _ = teaching.add_example(service, {"source": "visa"}, None, tiny_files["images"][0])
    assert service.catalogue.bank(new_id)[0].meta["heads_from"] == "visa"
    det = service.detector("custom", new_id)
    assert asked == ["visa"] and det.variants == ("tf", "ft", "clip")


def test_a_bank_taught_from_unnamed_files_is_named_in_its_report(tiny_files, tmp_path):
    """The authors' bank files record no name: the teach report (catalogue.bank_info) names the taught bank after
    the bank it started from, with its id, never 'unknown'; the name stays through further edits."""
    from mrad_core.bank import MemoryBank

    files = {"backbone": tiny_files["backbone"], "heads": tiny_files["heads"]}
    for kind in ("image", "patch"):  # as the authors ship them: {"keys", "values"} only
        bank = MemoryBank.load(tiny_files[f"{kind}_bank"], kind)
        files[f"{kind}_bank"] = str(tmp_path / f"official_{kind}.pt")
        torch.save({"keys": bank.keys, "values": bank.values}, files[f"{kind}_bank"])
    service = Service(files=files, model=tiny_files["model"], device="cpu", precision="fp32")
    assert "source" not in service.detector("env").image_bank.meta
    first, _, _ = teaching.add_example(service, START, None, tiny_files["images"][0])
    second, _, _ = teaching.add_example(service, START, first, tiny_files["images"][1])
    for bank_id in (first, second):
        info = service.catalogue.bank_info(bank_id)
        assert "unknown" not in info and info.startswith(f"'taught from your files' (id {bank_id}): "), info
    assert service.catalogue.bank_files(second)[0].name == "taught_from_your_files_image_bank.safetensors"

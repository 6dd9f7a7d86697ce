"""Teaching the bank on the tiny model: a query's own defect raises its score and its map inside the mask, a normal
image lowers a normal query's score, removing restores the earlier banks and scores exactly, merge / empty start,
and provenance (ids, patch owners, thumbnails) through save / load."""
import numpy as np
import pytest
import torch

from mrad_core import MemoryBank, explain, load_mask
from mrad_core.bank_edit import add_defect, add_normal, fresh_id, merge, one_class_note, remove_images
from mrad_core.errors import MRADError
from mrad_core.images import thumbnail
from tiny_model import synthetic_image


@pytest.fixture(scope="module")
def banks(tiny_files):
    return MemoryBank.load(tiny_files["image_bank"], "image"), MemoryBank.load(tiny_files["patch_bank"], "patch")


@pytest.fixture(scope="module")
def encodings(tiny_detector, tiny_files):
    """query_0 (normal) and query_1 (defect; its mask rebuilt from the generator) encoded once."""
    enc = tiny_detector.encode(tiny_files["images"])
    mask = load_mask(synthetic_image(201, size=(120, 90), defect=True)[1])
    return enc, mask


def _scores(det, enc):
    return {v: det.score(enc, v) for v in det.variants}


def test_adding_a_querys_own_defect_raises_its_score_and_map_inside_the_mask(tiny_detector, banks, encodings):
    enc, mask = encodings
    before = _scores(tiny_detector, enc[1])
    ib, pb = add_defect(*banks, enc[1], mask[None], ["query_1"])
    assert ib.ids[-1] == "query_1" and ib.labels[-1] == 1 and pb.labels[-2:].tolist() == [1, 0]
    assert pb.owner[-2:].tolist() == [len(ib) - 1] * 2
    after = _scores(tiny_detector.with_banks(ib, pb), enc[1])
    inside = mask.numpy() == 1
    for v in ("tf", "ft"):
        assert after[v].score[0] > before[v].score[0] + 1e-3, v
        assert after[v].map[0][inside].mean() > before[v].map[0][inside].mean() + 1e-3, v
    assert after["clip"].image_prob[0] > before["clip"].image_prob[0]  # CLIP's image probability is FT's


def test_adding_a_normal_image_lowers_a_normal_querys_score(tiny_detector, banks, encodings):
    enc, _ = encodings
    before = _scores(tiny_detector, enc[0])
    ib, pb = add_normal(*banks, enc[0], ["query_0"])
    assert ib.labels[-1] == 0 and pb.labels[-1] == 0 and len(pb) == len(banks[1]) + 1
    after = _scores(tiny_detector.with_banks(ib, pb), enc[0])
    for v in ("tf", "ft"):
        assert after[v].score[0] < before[v].score[0] - 1e-3, v


def test_removing_restores_the_earlier_result_exactly(tiny_detector, banks, encodings):
    enc, mask = encodings
    ib0, pb0 = banks
    before = _scores(tiny_detector, enc)
    ib, pb = add_normal(ib0, pb0, enc[0], ["good"], thumbnail(synthetic_image(1)[0])[None])
    ib, pb = add_defect(ib, pb, enc[1], [mask.numpy()], ["bad"])
    ib1, pb1 = remove_images(ib, pb, ["good"])
    assert ib1.ids == [*ib0.ids, "bad"] and pb1.owner[-1].item() == len(ib1) - 1
    ib2, pb2 = remove_images(ib1, pb1, ["bad"])
    for a, b in ((ib2, ib0), (pb2, pb0)):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values) and a.ids == b.ids
    assert torch.equal(pb2.owner, pb0.owner) and ib2.thumbnails is None
    after = _scores(tiny_detector.with_banks(ib2, pb2), enc)
    for v in before:
        np.testing.assert_allclose(after[v].score, before[v].score, rtol=0, atol=1e-6)  # the banks: torch.equal above
        np.testing.assert_allclose(after[v].map, before[v].map, rtol=0, atol=1e-6)


def test_start_from_empty_merge_and_one_class(tiny_detector, banks, encodings):
    enc, mask = encodings
    assert one_class_note(None)
    ib, pb = add_normal(None, None, enc[0], ["n"])
    assert len(ib) == 1 and ib.source == "taught" and "only normal" in one_class_note(ib)
    ib, pb = add_defect(ib, pb, enc[1], mask[None], ["d"])
    assert one_class_note(ib) is None and ib.ids == ["n", "d"] and pb.owner.tolist() == [0, 1, 1]
    r = tiny_detector.with_banks(ib, pb).score(enc, "tf")
    assert np.all(np.isfinite(r.score))
    mi, mp = merge(banks, (ib, pb))
    assert mi.ids == [*banks[0].ids, "n", "d"] and mp.owner[-3:].tolist() == [len(banks[0]) + k for k in (0, 1, 1)]
    assert torch.equal(mi.keys[-2:], ib.keys) and torch.equal(mp.keys[:len(banks[1])], banks[1].keys)
    with pytest.raises(MRADError, match="both banks hold image"):
        merge((mi, mp), (ib, pb))
    assert remove_images(ib, pb, ["n", "d"]) == (None, None)


def test_bad_edits_are_clear_errors(banks, encodings):
    enc, mask = encodings
    with pytest.raises(MRADError, match="covers no whole patch"):
        add_defect(*banks, enc[1], torch.zeros(1, 518, 518), ["x"])
    with pytest.raises(MRADError, match="already in the bank"):
        add_normal(*banks, enc[0], [banks[0].ids[0]])
    assert fresh_id(banks[0], banks[0].ids[0]) == banks[0].ids[0] + "#2"
    with pytest.raises(MRADError, match="no image nope"):
        remove_images(*banks, ["nope"])
    with pytest.raises(MRADError, match="one .* mask per defect image"):
        add_defect(*banks, enc[1], torch.zeros(2, 518, 518), ["x"])


def test_provenance_round_trips_through_files(banks, encodings, tmp_path):
    enc, mask = encodings
    thumb = thumbnail(synthetic_image(1)[0])
    assert thumb.shape == (64, 64, 3) and thumb.dtype == torch.uint8
    ib, pb = add_defect(*banks, enc[1], mask[None], ["bad"], thumb[None])
    ib.save(tmp_path / "i.safetensors")
    pb.save(tmp_path / "p.safetensors")
    li, lp = MemoryBank.load(tmp_path / "i.safetensors", "image"), MemoryBank.load(tmp_path / "p.safetensors", "patch")
    assert li.ids == ib.ids and lp.ids == ib.ids and torch.equal(lp.owner, pb.owner)
    assert torch.equal(li.thumbnails[-1], thumb) and not li.thumbnails[0].any()
    assert (explain.thumbnail(li, len(li) - 1) == thumb.numpy()).all() and explain.thumbnail(li, 0) is None


def test_authors_banks_without_provenance(tiny_detector, banks, encodings, tmp_path):
    """Banks that record no images (the official layout): added images get ids, the old entries none; removing
    the added ones gives back banks without provenance, tensors unchanged."""
    enc, mask = encodings
    plain = []
    for b in banks:
        torch.save({"keys": b.keys, "values": b.values}, tmp_path / f"{b.kind}.pt")
        plain.append(MemoryBank.load(tmp_path / f"{b.kind}.pt", b.kind))
    assert plain[0].ids is None and plain[1].owner is None
    ib, pb = add_defect(*plain, enc[1], mask[None], ["bad"])
    assert ib.ids == [None] * len(plain[0]) + ["bad"] and pb.owner.tolist() == [-1] * len(plain[1]) + [4, 4]
    ib.save(tmp_path / "i.safetensors")
    assert MemoryBank.load(tmp_path / "i.safetensors", "image").ids == ib.ids
    ib2, pb2 = remove_images(ib, pb, ["bad"])
    assert ib2.ids is None and pb2.owner is None
    assert torch.equal(ib2.keys, plain[0].keys) and torch.equal(pb2.keys, plain[1].keys)
    with pytest.raises(MRADError, match="it records no images"):
        remove_images(ib2, pb2, ["bad"])


def test_built_banks_record_owners_and_thumbnails(tiny_files, tiny_config, tmp_path):
    """build-bank's banks (batched, as `mrad build-bank`) know which patch rows each image gave, so images can be
    removed from them; each image entry has its thumbnail."""
    from mrad_core import Detector
    from mrad_core.build import build_banks
    from mrad_core.datasets import read_dataset, record_id
    from synthetic_datasets import make_dataset

    make_dataset("mvtec", tmp_path, n_normal=1, n_bad=1)
    records = read_dataset("mvtec", tmp_path)
    det = Detector.from_files(tiny_files["backbone"], config=tiny_config, device="cpu")
    ib, pb = build_banks(det, records, tmp_path, source="mvtec", batch_size=4, progress=False)
    expected = [i for i, r in enumerate(records) for _ in range(1 + r.anomaly)]  # defect: anomalous + normal
    assert pb.owner.tolist() == expected and ib.ids == [record_id(r, tmp_path) for r in records]
    assert ib.thumbnails.shape == (len(records), 64, 64, 3) and all(t.any() for t in ib.thumbnails)
    bad = next(i for i, r in enumerate(records) if r.anomaly)
    ib2, pb2 = remove_images(ib, pb, [ib.ids[bad]])
    assert len(ib2) == len(ib) - 1 and len(pb2) == len(pb) - 2 and ib.ids[bad] not in ib2.ids
    assert torch.equal(ib2.thumbnails, torch.cat([ib.thumbnails[:bad], ib.thumbnails[bad + 1:]]))

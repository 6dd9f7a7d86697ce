"""Dataset readers and meta.json for every supported layout, on synthetic datasets."""
import json
import os

import pytest
import torch

from mrad_core import MRADError, load_mask, preprocess
from mrad_core.cli import main
from mrad_core.datasets import DATASETS, Record, RecordDataset, read_dataset, write_meta
from mrad_core.images import load_image
from synthetic_datasets import make_dataset


def _rel(records, root):
    return [(os.path.relpath(r.image, root), r.mask and os.path.relpath(r.mask, root), r.anomaly) for r in records]


def _flat(expected, split):
    return [t for samples in expected[split].values() for t in samples]


@pytest.mark.parametrize("name", DATASETS)
def test_scan_meta_and_read_back_every_layout(name, tmp_path):
    root = tmp_path / name
    expected = make_dataset(name, root)
    scanned = read_dataset(name, root, "test")
    assert _rel(scanned, root) == _flat(expected, "test")
    assert all(os.path.isabs(r.image) for r in scanned)
    assert [r.cls_name for r in scanned] == [c for c, s in expected["test"].items() for _ in s]

    # `mrad meta` writes the AnomalyCLIP/MRAD format, paths relative to ROOT
    assert main(["meta", name, str(root)]) == 0
    meta = json.loads((root / "meta.json").read_text())
    assert set(meta) == {"train", "test"}
    assert list(meta["test"]) == list(expected["test"])
    for cls, samples in meta["test"].items():
        want = expected["test"][cls]
        assert [(s["img_path"], s["mask_path"] or None, s["anomaly"]) for s in samples] == want
        assert all(set(s) == {"img_path", "mask_path", "cls_name", "specie_name", "anomaly"} for s in samples)
        assert all(s["cls_name"] == cls for s in samples)
    # once meta.json exists it is what is read, with the same records
    assert read_dataset(name, root, "test") == scanned
    if expected["train"]:
        assert _rel(read_dataset(name, root, "train"), root) == _flat(expected, "train")


def test_visa_test_split_holds_every_csv_row(tmp_path):
    expected = make_dataset("visa", tmp_path, n_normal=2, n_bad=3)
    test = read_dataset("visa", tmp_path, "test")
    assert len(test) == 2 * (2 + 2 + 3)  # two classes x (CSV train normals + test normals + test anomalies)
    assert sum(r.anomaly for r in test) == 6
    assert _rel(read_dataset("visa", tmp_path, "train"), tmp_path) == _flat(expected, "train")


def test_meta_from_other_tools_is_honoured(tmp_path):
    """Absolute img_path (as the reference writes for BrainMRI), "" masks of anomalous images, and mask paths of
    normal images are read as the reference's loader reads them."""
    make_dataset("mvtec", tmp_path, n_normal=1, n_bad=1)
    img = str(tmp_path / "bottle/test/crack/000.png")
    meta = {"test": {"bottle": [
        dict(img_path=img, mask_path="", cls_name="bottle", specie_name="crack", anomaly=1),
        dict(img_path="bottle/test/good/000.png", mask_path="bottle/ground_truth/crack/000_mask.png",
             cls_name="bottle", specie_name="good", anomaly=0),
        dict(img_path="bottle/test/hole/000.png", mask_path="bottle/ground_truth/hole/000_mask.png",
             cls_name="bottle", specie_name="hole", anomaly=1)]}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    recs = read_dataset("MVTec", tmp_path)  # names are case-insensitive
    assert recs[0] == Record(img, None, "bottle", 1, "crack")
    assert recs[1].mask is None and recs[1].anomaly == 0
    assert recs[2].mask == str(tmp_path / "bottle/ground_truth/hole/000_mask.png")
    with pytest.raises(MRADError, match="no split 'train'"):
        read_dataset("mvtec", tmp_path, "train")


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(MRADError, match="unknown dataset 'imagenet'"):
        read_dataset("imagenet", tmp_path)
    with pytest.raises(MRADError, match="no class folders"):
        read_dataset("mvtec", tmp_path)
    make_dataset("kvasir", tmp_path / "k", n_bad=3)
    os.remove(tmp_path / "k/masks/2.png")
    with pytest.raises(MRADError, match="3 images but 2 masks"):
        read_dataset("kvasir", tmp_path / "k")
    make_dataset("btad", tmp_path / "b")
    write_meta("btad", tmp_path / "b")
    os.remove(tmp_path / "b/01/test/ok/000.bmp")
    with pytest.raises(MRADError, match="do not exist.*000.bmp"):
        read_dataset("btad", tmp_path / "b")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MRADError, match="not a readable meta.json"):
        from mrad_core.datasets import _from_meta
        _from_meta(tmp_path / "bad.json", "test")


def test_write_meta_out_and_ignores_existing_meta(tmp_path):
    make_dataset("mpdd", tmp_path)
    (tmp_path / "meta.json").write_text("{}")  # stale: write_meta scans the folders, not this file
    out = write_meta("mpdd", tmp_path, tmp_path / "other.json")
    assert out == tmp_path / "other.json"
    assert sum(len(v) for v in json.loads(out.read_text())["test"].values()) == 6


def test_record_dataset_uses_inference_preprocessing(tmp_path):
    make_dataset("mvtec", tmp_path, n_normal=1, n_bad=1)
    recs = read_dataset("mvtec", tmp_path)
    ds = RecordDataset(recs, 518)
    bad = next(i for i, r in enumerate(recs) if r.anomaly)
    good = next(i for i, r in enumerate(recs) if not r.anomaly)
    item = ds[bad]
    assert item["pixels"].shape == (3, 518, 518) and item["mask"].shape == (518, 518)
    assert torch.equal(item["pixels"], preprocess(load_image(recs[bad].image).image, 518))
    assert torch.equal(item["mask"], load_mask(recs[bad].mask, 518))
    assert 0 < item["mask"].mean() < 1 and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["label"] == 1 and item["cls_name"] == recs[bad].cls_name and item["path"] == recs[bad].image
    assert ds[good]["mask"].sum() == 0 and ds[good]["label"] == 0
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["pixels"].shape == (3, 3, 518, 518) and batch["label"].tolist() == [r.anomaly for r in recs[:3]]

"""Dataset readers: the per-sample records the reference's `meta.json` holds, and a torch Dataset over them.

`read_dataset(name, root, split)` reads ROOT/meta.json when it exists (the AnomalyCLIP/MRAD format, so existing
files work) and otherwise scans the folder layout below, exactly as the AnomalyCLIP/MRAD meta scripts do
(classes, defect folders and files in sorted order; masks paired with images by sorted position).
`write_meta(name, root)` writes that meta.json: {"train": {cls: [sample]}, "test": {cls: [sample]}} with samples
{"img_path", "mask_path" ("" when none), "cls_name", "specie_name", "anomaly"}, paths relative to ROOT.

Expected layouts (ROOT = --data-path; only image files are listed, hidden files are ignored):

    mvtec, mpdd, dtd   ROOT/<class>/{train,test}/<defect>/<image>, masks ROOT/<class>/ground_truth/<defect>/<mask>;
                       the defect folder "good" holds normal images (DTD-Synthetic: ROOT/Woven_001/…)
    btad               as mvtec, with "ok" as the normal folder (ROOT/01/test/ko/…, ROOT/01/ground_truth/ko/…)
    visa               ROOT/split_csv/1cls.csv (columns object, split, label, image, mask; paths relative to ROOT).
                       As in the reference's meta.json, "test" holds EVERY row of the CSV (its train and test
                       splits, in CSV order); "train" holds the CSV's train rows.
    headct             ROOT/brain/test/{good,<other>}/<image>; no masks (class "brain")
    brainmri           ROOT/brain_tumor_dataset/{no,yes}/<image>; no masks (class "brain")
    br35h              ROOT/{no,yes}/<image>; no masks (class "brain"; other folders such as pred/ are ignored)
    clinicdb, colondb, kvasir
                       ROOT/images/<image>, ROOT/masks/<mask>; every image anomalous (class "colon")
    isic               ROOT/skin/test/<folder>/<image> ("good" = normal), masks
                       ROOT/skin/ISBI2016_ISIC_Part1_Test_GroundTruth/<mask> (class "skin")
    endo               ROOT/<folder>/<image> for every folder but masks/ ("good" = normal), masks ROOT/masks/<mask>
                       (class "colon")

The medical sets have a "test" split only. Normal images, and anomalous ones without a mask file, get an all-zero
mask. `RecordDataset` loads samples with the inference preprocessing (images.preprocess / images.load_mask).
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import MRADError
from .files import write_text
from .images import IMAGE_EXTENSIONS, load_image, load_mask, preprocess

DATASETS = ("mvtec", "visa", "mpdd", "btad", "dtd", "headct", "brainmri", "br35h", "clinicdb", "colondb",
            "kvasir", "isic", "endo")
ALIASES = {"mvtec-ad": "mvtec", "dtd-synthetic": "dtd", "head-ct": "headct", "brain-mri": "brainmri",
           "br35": "br35h", "cvc-clinicdb": "clinicdb", "cvc-colondb": "colondb", "isbi": "isic",
           "endotect": "endo"}
SPLITS = ("train", "test")
ISIC_MASKS = "ISBI2016_ISIC_Part1_Test_GroundTruth"


@dataclass
class Record:
    """One sample, as the reference's meta.json holds it."""

    image: str  # absolute path
    mask: str | None  # absolute path; None for normal images (=> all-zero mask)
    cls_name: str
    anomaly: int  # 0 normal, 1 anomalous
    specie_name: str = ""  # defect type as in meta.json


def dataset_name(name: str) -> str:
    """Canonical dataset name (case-insensitive, a few aliases); MRADError for an unknown one."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise MRADError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return key


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _need_dir(path: Path, name: str) -> Path:
    if not path.is_dir():
        raise MRADError(f"{name}: expected the folder {path} (see `mrad meta --help` for the layouts)")
    return path


def _pair(images: list[Path], masks: list[Path] | None, cls, specie, anomaly) -> list[Record]:
    """Records for images of one folder; anomalous ones get masks[i] (sorted pairing, as the reference)."""
    if anomaly and masks is not None and len(masks) != len(images):
        raise MRADError(f"class {cls}, defect {specie}: {len(images)} images but {len(masks)} masks; "
                        "masks are paired with images by sorted file name, so the counts must match")
    return [Record(os.path.abspath(img), os.path.abspath(masks[i]) if anomaly and masks is not None else None,
                   cls, int(anomaly), specie) for i, img in enumerate(images)]


def _scan_mvtec(root: Path, name: str, normal: str) -> dict:
    classes = [d for d in _dirs(root) if (d / "test").is_dir()]
    if not classes:
        raise MRADError(f"{name}: no class folders with a test/ folder under {root} "
                        f"(expected ROOT/<class>/test/<defect>/<image>)")
    out = {s: {} for s in SPLITS}
    for cls_dir in classes:
        cls = cls_dir.name
        for split in SPLITS:
            if not (cls_dir / split).is_dir():
                continue
            records = []
            for specie_dir in _dirs(cls_dir / split):
                specie, anomaly = specie_dir.name, specie_dir.name != normal
                masks = _files(_need_dir(cls_dir / "ground_truth" / specie, name)) if anomaly else None
                records += _pair(_files(specie_dir), masks, cls, specie, anomaly)
            out[split][cls] = records
    return out


def _scan_visa(root: Path) -> dict:
    path = root / "split_csv" / "1cls.csv"
    if not path.is_file():
        raise MRADError(f"visa: expected the split file {path} (VisA's split_csv/1cls.csv)")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f)][1:]  # header: object, split, label, image, mask
    out = {s: {} for s in SPLITS}
    for row in rows:
        if len(row) < 4:
            continue
        obj, split, label, image = (c.strip() for c in row[:4])
        mask = row[4].strip() if len(row) > 4 else ""
        anomaly = int(label == "anomaly")
        rec = Record(os.path.abspath(root / image), os.path.abspath(root / mask) if anomaly and mask else None,
                     obj, anomaly, "")
        out["test"].setdefault(obj, []).append(rec)
        if split == "train":
            out["train"].setdefault(obj, []).append(rec)
    return {s: dict(sorted(v.items())) for s, v in out.items()}


def _scan_folders(folder: Path, name: str, cls: str, normal: str, masks_dir: Path | None = None,
                  only=None, exclude=()) -> dict:
    """Images in defect folders under `folder`; anomalous ones (all non-normal folders together, sorted)
    paired with the sorted files of `masks_dir` when given."""
    species = [d for d in _dirs(_need_dir(folder, name)) if d.name not in exclude and (only is None or d.name in only)]
    if not species:
        raise MRADError(f"{name}: no image folders under {folder}")
    masks = _files(_need_dir(masks_dir, name)) if masks_dir is not None else None
    records, used = [], 0
    for d in species:
        images, anomaly = _files(d), d.name != normal
        part = masks[used:used + len(images)] if anomaly and masks is not None else None
        if anomaly and masks is not None:
            if len(part) != len(images):
                raise MRADError(f"{name}: {len(masks)} masks in {masks_dir} for more anomalous images")
            used += len(images)
        records += _pair(images, part, cls, d.name, anomaly)
    if masks is not None and used != len(masks):
        raise MRADError(f"{name}: {len(masks)} masks in {masks_dir} but {used} anomalous images")
    return {"train": {}, "test": {cls: records}}


def _scan_images_masks(root: Path, name: str) -> dict:
    images = _files(_need_dir(root / "images", name))
    masks = _files(_need_dir(root / "masks", name))
    return {"train": {}, "test": {"colon": _pair(images, masks, "colon", "", 1)}}


def scan(name: str, root) -> dict:
    """Scan the folder layout of dataset `name` -> {"train": {cls: [Record]}, "test": {cls: [Record]}}."""
    name, root = dataset_name(name), Path(root)
    _need_dir(root, name)
    if name in ("mvtec", "mpdd", "dtd", "btad"):
        return _scan_mvtec(root, name, "ok" if name == "btad" else "good")
    if name == "visa":
        return _scan_visa(root)
    if name == "headct":
        return _scan_folders(root / "brain" / "test", name, "brain", "good")
    if name == "brainmri":
        return _scan_folders(root / "brain_tumor_dataset", name, "brain", "no", only=("no", "yes"))
    if name == "br35h":
        return _scan_folders(root, name, "brain", "no", only=("no", "yes"))
    if name == "isic":
        return _scan_folders(root / "skin" / "test", name, "skin", "good", root / "skin" / ISIC_MASKS)
    if name == "endo":
        return _scan_folders(root, name, "colon", "good", root / "masks", exclude=("masks",))
    return _scan_images_masks(root, name)  # clinicdb, colondb, kvasir


def _from_meta(path: Path, split: str) -> dict:
    """meta.json -> {cls: [Record]} for one split (the reference's loading rules for masks)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MRADError(f"{path}: not a readable meta.json ({e})") from None
    if not isinstance(meta, dict) or split not in meta:
        found = ", ".join(meta) if isinstance(meta, dict) else "nothing"
        raise MRADError(f"{path}: no split {split!r} (it has {found})")
    root, out = path.parent, {}
    try:
        for cls, samples in meta[split].items():
            out[cls] = []
            for s in samples:
                anomaly = int(s["anomaly"])
                mask = s.get("mask_path") or ""
                mask = os.path.abspath(root / mask) if anomaly and mask and not (root / mask).is_dir() else None
                out[cls].append(Record(os.path.abspath(root / s["img_path"]), mask, s.get("cls_name", cls),
                                       anomaly, s.get("specie_name", "")))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise MRADError(f"{path}: malformed sample in split {split!r} ({type(e).__name__}: {e})") from None
    return out


def read_dataset(name: str, root, split: str = "test", check_files: bool = True) -> list[Record]:
    """Records of one split, class by class: from ROOT/meta.json if it exists, else by scanning the layout.
    With check_files, every image and mask must exist (MRADError naming the first missing ones)."""
    name, root = dataset_name(name), Path(root)
    _need_dir(root, name)
    meta = root / "meta.json"
    by_class = _from_meta(meta, split) if meta.is_file() else scan(name, root).get(split)
    if by_class is None:
        raise MRADError(f"{name}: no split {split!r}; choose from {', '.join(SPLITS)}")
    records = [r for recs in by_class.values() for r in recs]
    if not records:
        raise MRADError(f"{name}: split {split!r} under {root} has no samples")
    if check_files:
        missing = [p for r in records for p in (r.image, r.mask) if p is not None and not os.path.isfile(p)]
        if missing:
            raise MRADError(f"{name}: {len(missing)} listed file(s) do not exist, e.g. {', '.join(missing[:3])}")
    return records


def to_meta(by_split: dict, root) -> dict:
    """{split: {cls: [Record]}} -> the meta.json dictionary (paths relative to root, POSIX separators)."""
    def rel(p):
        return Path(os.path.relpath(p, root)).as_posix()
    return {split: {cls: [dict(img_path=rel(r.image), mask_path=rel(r.mask) if r.mask else "", cls_name=r.cls_name,
                               specie_name=r.specie_name, anomaly=int(r.anomaly)) for r in recs]
                    for cls, recs in classes.items()} for split, classes in by_split.items()}


def write_meta(name: str, root, out=None) -> Path:
    """Scan ROOT (ignoring any existing meta.json) and write the AnomalyCLIP/MRAD meta.json (default ROOT/meta.json)."""
    root = Path(root)
    data = to_meta(scan(name, root), root)
    out = Path(out) if out else root / "meta.json"
    write_text(out, json.dumps(data, indent=4) + "\n")
    return out


def record_id(record: Record, root) -> str:
    """A sample's id: its image path relative to the dataset root (as meta.json's img_path)."""
    return Path(os.path.relpath(record.image, root)).as_posix()


class RecordDataset(torch.utils.data.Dataset):
    """Records -> dict(pixels (3, S, S) float, mask (S, S) 0/1 float, label int, cls_name, path, index),
    loaded with the same preprocessing as inference (stretch resize, bicubic; masks bilinear, > 0.5)."""

    def __init__(self, records: list[Record], image_size: int = 518):
        self.records, self.image_size = list(records), image_size

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        r = self.records[index]
        return {"pixels": preprocess(load_image(r.image).image, self.image_size),
                "mask": load_mask(r.mask, self.image_size), "label": int(r.anomaly), "cls_name": r.cls_name,
                "path": r.image, "index": index}

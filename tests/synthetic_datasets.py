"""Tiny datasets in every supported folder layout (a few small synthetic images, defects with masks).

`make_dataset(name, root)` writes the layout and returns what it wrote, independently of mrad_core.datasets:
{split: {class: [(image path relative to root, mask path or None, anomaly)]}}, in the order the reference's
meta scripts list samples (sorted classes, sorted defect folders, sorted files; VisA: CSV order).
"""
from __future__ import annotations

from pathlib import Path

from tiny_model import synthetic_image

SIZE = (40, 52)  # small, non-square: preprocessing stretches it to 518x518


class _Writer:
    def __init__(self, root: Path, seed: int):
        self.root, self.seed = root, seed

    def image(self, rel, defect=False, mask_rel=None):
        self.seed += 1
        img, mask = synthetic_image(self.seed, SIZE, defect)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        if mask_rel:
            (self.root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            mask.save(self.root / mask_rel)
        return rel


def _mvtec_like(w, classes, normal, defects, ext, n_normal, n_bad):
    out = {"train": {}, "test": {}}
    for cls in classes:
        out["train"][cls] = [(w.image(f"{cls}/train/{normal}/{i:03d}{ext}"), None, 0) for i in range(n_normal)]
        test = []
        for specie in sorted([normal, *defects]):
            for i in range(n_normal if specie == normal else n_bad):
                img = f"{cls}/test/{specie}/{i:03d}{ext}"
                if specie == normal:
                    test.append((w.image(img), None, 0))
                else:
                    mask = f"{cls}/ground_truth/{specie}/{i:03d}_mask.png"
                    test.append((w.image(img, True, mask), mask, 1))
        out["test"][cls] = test
    return out


def _visa(w, n_normal, n_bad):
    rows, out = ["object,split,label,image,mask"], {"train": {}, "test": {}}
    for cls in ("candle", "pcb1"):
        for split, label, n in (("train", "normal", n_normal), ("test", "normal", n_normal),
                                ("test", "anomaly", n_bad)):
            kind = "Normal" if label == "normal" else "Anomaly"
            for i in range(n):
                img = f"{cls}/Data/Images/{kind}/{split}{i:03d}.JPG"
                mask = f"{cls}/Data/Masks/Anomaly/{split}{i:03d}.png" if label == "anomaly" else None
                w.image(img, label == "anomaly", mask)
                rows.append(f"{cls},{split},{label},{img},{mask or ''}")
                out["test"].setdefault(cls, []).append((img, mask, int(label == "anomaly")))
                if split == "train":
                    out["train"].setdefault(cls, []).append((img, mask, int(label == "anomaly")))
    (w.root / "split_csv").mkdir(parents=True, exist_ok=True)
    (w.root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return out


def _folders(w, base, cls, normal, bad, n_normal, n_bad, masks=None, ext=".png"):
    """Normal and anomalous folders under base; masks (if a folder is given) for the anomalous ones."""
    test = []
    for specie in sorted([normal, bad]):
        for i in range(n_normal if specie == normal else n_bad):
            img = f"{base}{specie}/{i:03d}{ext}"
            if specie == normal:
                test.append((w.image(img), None, 0))
            elif masks:
                mask = f"{masks}/{i:03d}_segmentation.png"
                test.append((w.image(img, True, mask), mask, 1))
            else:
                test.append((w.image(img, True), None, 1))
    return {"train": {}, "test": {cls: test}}


def make_dataset(name: str, root, n_normal: int = 2, n_bad: int = 2, seed: int = 0) -> dict:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    w = _Writer(root, seed)
    if name in ("mvtec", "mpdd", "dtd"):
        classes = {"mvtec": ("bottle", "cable"), "mpdd": ("tubes",), "dtd": ("Woven_001",)}[name]
        return _mvtec_like(w, classes, "good", ("crack", "hole"), ".png", n_normal, n_bad)
    if name == "btad":
        return _mvtec_like(w, ("01", "02"), "ok", ("ko",), ".bmp", n_normal, n_bad)
    if name == "visa":
        return _visa(w, n_normal, n_bad)
    if name == "headct":
        return _folders(w, "brain/test/", "brain", "good", "Ungood", n_normal, n_bad)
    if name == "brainmri":
        return _folders(w, "brain_tumor_dataset/", "brain", "no", "yes", n_normal, n_bad, ext=".jpg")
    if name == "br35h":
        out = _folders(w, "", "brain", "no", "yes", n_normal, n_bad, ext=".jpg")
        w.image("pred/pred0.jpg")  # Br35H's unlabelled folder: not part of the dataset
        return out
    if name in ("clinicdb", "colondb", "kvasir"):
        test = []
        for i in range(n_bad):
            img, mask = f"images/{i + 1}.png", f"masks/{i + 1}.png"
            test.append((w.image(img, True, mask), mask, 1))
        return {"train": {}, "test": {"colon": test}}
    if name == "isic":
        return _folders(w, "skin/test/", "skin", "good", "anomaly", n_normal, n_bad,
                        masks="skin/ISBI2016_ISIC_Part1_Test_GroundTruth", ext=".jpg")
    if name == "endo":
        return _folders(w, "", "colon", "good", "images", n_normal, n_bad, masks="masks", ext=".jpg")
    raise ValueError(f"no synthetic layout for {name}")


def evaluated_mvtec_zip(tmp_path_factory, tiny_files) -> tuple:
    """A synthetic MVTec folder (2 classes, 6 test images each, masks), `mrad eval` run on it with the tiny model,
    and the same folder as a ZIP -> (root, metrics.json as a dict, scores.csv rows, ZIP path)."""
    import csv
    import json
    import zipfile

    from mrad_core.cli import main

    root = tmp_path_factory.mktemp("mvtec")
    make_dataset("mvtec", root, n_normal=2, n_bad=2)
    out = tmp_path_factory.mktemp("cli")
    f = tiny_files
    assert main(["eval", "--dataset", "mvtec", "--data-path", str(root), "--out", str(out), "--model", f["model"],
                 "--backbone", f["backbone"], "--image-bank", f["image_bank"], "--patch-bank", f["patch_bank"],
                 "--heads", f["heads"], "--device", "cpu", "--workers", "0"]) == 0
    zpath = tmp_path_factory.mktemp("zip") / "mvtec.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                z.write(p, "mvtec/" + p.relative_to(root).as_posix())
    with open(out / "scores.csv") as fh:
        scores = list(csv.DictReader(fh))
    return root, json.loads((out / "metrics.json").read_text()), scores, zpath

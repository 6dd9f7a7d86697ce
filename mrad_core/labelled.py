"""Reading a user's labelled images for evaluation (the app's Evaluate tab, the /evaluate API): a ZIP archive or a
folder in one of two layouts, or a list of (image, label[, mask]) -> `LabelledSet` of dataset Records.

    MVTec     [top/]<class>/test/<good|defect>/<image>, masks [top/]<class>/ground_truth/<defect>/<name>
              ("ok" counts as good too; train/ folders are ignored)
    good/bad  [top/][<class>/]good/<image>, [<class>/]bad/[<defect>/]<image>, optional [<class>/]masks/<name>

A mask belongs to the defective image with the same file stem, with or without a `_mask` suffix (`003.png` ->
`003.png`, `003_mask.png`, or `003_mask.bmp`). ZIP members are copied into a fresh MVTec-style folder under
`workdir` (never at a path taken from the archive), each within a size limit and decoded once to check it, so
the evaluation reads exactly what `mrad eval` would read from that folder.

Problems with single entries (corrupt image or mask, a mask without its image, a file outside the layout)
become per-entry errors [(name, message)]; an MRADError only when the whole set cannot be evaluated (no
archive, no labels, nothing usable, only good images, only defective images without masks).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .datasets import Record
from .errors import MRADError
from .files import safe_name
from .images import IMAGE_EXTENSIONS, ImageError, load_image, load_mask

# default limit per evaluation (read_labelled(max_images=...) for another): evaluate() holds one class's maps,
# 1 MB per image and variant at 518 px, so 500 images of one class with three variants take about 1.5 GB
MAX_IMAGES = 500
MAX_ENTRY_BYTES = 256 * 2 ** 20  # one entry, uncompressed
MAX_TOTAL_BYTES = 4 * 2 ** 30  # all entries of one archive, uncompressed
GOOD, BAD, MASKS = ("good", "ok"), ("bad",), ("masks",)
LABELS = {"good": 0, "ok": 0, "normal": 0, "0": 0, "false": 0,
          "bad": 1, "defective": 1, "anomalous": 1, "anomaly": 1, "1": 1, "true": 1}
# reading one entry: bad CRC, encrypted (RuntimeError), unsupported compression, truncated, undecodable
READ_ERRORS = (ImageError, OSError, zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, ValueError)
LAYOUTS = ("<class>/test/<good|defect>/<image> with masks in <class>/ground_truth/<defect>/ (MVTec), or "
           "good/<image> and bad/<image> with optional masks/<image name>")


@dataclass
class LabelledSet:
    """Labelled images ready for evaluate(): records (class by class), the name shown for each record's image,
    per-entry problems and notes, and the folder holding copied files (None for a list; caller removes it)."""

    records: list
    names: dict  # record.image -> name shown to the user (ZIP member, relative path or file name)
    errors: list = field(default_factory=list)  # [(entry name, message)]
    layout: str = "list"
    root: Path | None = None

    @property
    def n_good(self) -> int:
        return sum(r.anomaly == 0 for r in self.records)

    @property
    def n_bad(self) -> int:
        return sum(r.anomaly == 1 for r in self.records)

    @property
    def n_masks(self) -> int:
        return sum(r.mask is not None for r in self.records)


@dataclass
class _Item:
    name: str  # member name, for messages
    read: object  # () -> bytes
    cls: str
    label: int | None  # None for a mask
    defect: str
    stem: str  # pairing key (a mask's stem without "_mask")
    ext: str


def _key(stem: str) -> str:
    return stem[:-5] if stem.lower().endswith("_mask") else stem


def _parse(name: str, default_cls: str, layout: str):
    """Member path -> (cls, label or None for a mask, defect) in `layout`, or None when it does not fit."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "/")]
    folders = [p.lower() for p in parts[:-1]]
    if layout == "mvtec":
        for i, f in enumerate(folders):
            if f in ("test", "ground_truth") and len(parts) - i == 3:
                cls = parts[i - 1] if i else default_cls
                defect = parts[i + 1]
                if f == "ground_truth":
                    return cls, None, defect
                return cls, int(defect.lower() not in GOOD), defect
        return None
    for i, f in enumerate(folders):
        if f in (*GOOD, *BAD, *MASKS):
            cls = parts[i - 1] if i else default_cls
            defect = parts[i + 1] if len(parts) - i > 2 else "bad"
            return cls, (None if f in MASKS else int(f in BAD)), ("good" if f in GOOD else defect)
    return None


def _layout(names) -> str:
    for layout in ("mvtec", "goodbad"):
        if any(_parse(n, "x", layout) for n in names):
            return layout
    raise MRADError(f"no labels found: put the images in folders that say which are good and which are "
                    f"defective: {LAYOUTS}")


def _limited(opener, size_hint: int, budget: list):
    """Reader returning at most MAX_ENTRY_BYTES, counting against budget[0] (uncompressed total)."""
    def read():
        if size_hint > MAX_ENTRY_BYTES or budget[0] + size_hint > MAX_TOTAL_BYTES:
            raise ImageError("skipped: too large when uncompressed")
        with opener() as f:
            data = f.read(MAX_ENTRY_BYTES + 1)
        if len(data) > MAX_ENTRY_BYTES or budget[0] + len(data) > MAX_TOTAL_BYTES:
            raise ImageError("skipped: too large when uncompressed")
        budget[0] += len(data)
        return data
    return read


def _zip_members(path: Path):
    """-> [(name, reader)] of the visible image files of a ZIP archive; MRADError if it is not one."""
    try:
        archive = zipfile.ZipFile(path)
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise MRADError(f"{path.name}: not a readable ZIP archive ({e})") from None
    budget = [0]
    return [(i.filename, _limited(lambda i=i: archive.open(i), i.file_size, budget)) for i in infos
            if not i.is_dir()], archive


def _folder_members(root: Path):
    budget = [0]
    return [(p.relative_to(root).as_posix(), _limited(lambda p=p: open(p, "rb"), p.stat().st_size, budget))
            for p in sorted(root.rglob("*")) if p.is_file()], None


def read_labelled(source, workdir=None, max_images: int = MAX_IMAGES) -> LabelledSet:
    """A ZIP archive or folder (path) in one of the layouts above, or a list of (image, label[, mask]) ->
    LabelledSet (at most `max_images` images; the rest become errors). Copies go to a new folder under
    `workdir` (default: the system temp folder)."""
    if isinstance(source, (list, tuple)):
        return read_labelled_list(source, max_images=max_images)
    path = Path(source)
    if path.is_dir():
        members, archive = _folder_members(path)
    elif path.is_file():
        members, archive = _zip_members(path)
    else:
        raise MRADError(f"{path}: no such file or folder")
    try:
        return _from_members(members, safe_name(path.stem), workdir, max_images)
    finally:
        if archive is not None:
            archive.close()


def _from_members(members, default_cls: str, workdir, max_images: int) -> LabelledSet:
    errors, visible = [], []
    for name, read in members:
        base = PurePosixPath(name.replace("\\", "/")).name
        if name.startswith("__MACOSX/") or base.startswith(".") or base == "Thumbs.db":
            continue
        if ".." in name.replace("\\", "/").split("/") or name.startswith(("/", "\\")) or ":" in name:
            errors.append((name, "skipped: an absolute path or '..' in the archive"))
            continue
        if PurePosixPath(base).suffix.lower() not in IMAGE_EXTENSIONS:
            errors.append((name, "skipped: not an image file"))
            continue
        visible.append((name, read))
    if not visible:
        raise MRADError("no images found" + "".join(f"; {n}: {m}" for n, m in errors[:5]))
    layout = _layout([n for n, _ in visible])
    items, train = [], 0
    for name, read in visible:
        parsed = _parse(name, default_cls, layout)
        if parsed is None:
            if layout == "mvtec" and "train" in name.lower().replace("\\", "/").split("/"):
                train += 1
            else:
                errors.append((name, f"skipped: not in the {'MVTec' if layout == 'mvtec' else 'good/bad'} layout"))
            continue
        cls, label, defect = parsed
        p = PurePosixPath(name.replace("\\", "/"))
        items.append(_Item(name, read, cls, label, defect, _key(p.stem) if label is None else p.stem,
                           p.suffix.lower()))
    if train:
        errors.append((f"{train} train/ images", "not used: an evaluation uses the test/ images"))
    return _extract(items, errors, layout, workdir, max_images)


def _extract(items, errors, layout, workdir, max_images) -> LabelledSet:
    """Pair masks with defective images, copy both into an MVTec-style folder and check they decode."""
    def pair_key(it):
        return (it.cls, it.defect if layout == "mvtec" else "", it.stem)

    masks = {}
    for it in (i for i in items if i.label is None):
        if pair_key(it) in masks:
            errors.append((it.name, f"skipped: a second mask for {it.stem}"))
        else:
            masks[pair_key(it)] = it
    images = sorted((i for i in items if i.label is not None), key=lambda i: (i.cls, i.defect, i.name))
    if len(images) > max_images:
        errors.append((f"{len(images) - max_images} more", f"skipped: an evaluation takes at most {max_images} images"))
        images = images[:max_images]
    root = Path(tempfile.mkdtemp(prefix="mrad-labelled-", dir=workdir))
    records, names, used = [], {}, set()
    try:
        for it in images:
            mask_item = masks.get(pair_key(it))
            if mask_item is not None:
                used.add(pair_key(it))
                if it.label == 0:
                    errors.append((mask_item.name, "ignored: a mask for a good image"))
                    mask_item = None
            folder = root / safe_name(it.cls) / "test" / safe_name(it.defect if it.label else "good")
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{len(records):05d}_{safe_name(it.stem)}{it.ext}"
            try:
                target.write_bytes(it.read())
                load_image(target)
            except READ_ERRORS as e:
                target.unlink(missing_ok=True)
                errors.append((it.name, _message(e, target.name)))
                continue
            mask_path = None
            if mask_item is not None:
                mfolder = root / safe_name(it.cls) / "ground_truth" / safe_name(it.defect)
                mfolder.mkdir(parents=True, exist_ok=True)
                mask_path = mfolder / f"{target.stem}_mask{mask_item.ext}"
                try:
                    mask_path.write_bytes(mask_item.read())
                    load_mask(str(mask_path), 8)
                except READ_ERRORS as e:
                    target.unlink(missing_ok=True)
                    errors.append((mask_item.name, _message(e, mask_path.name) + f"; {it.name} skipped with it"))
                    continue
            elif it.label == 1 and masks:
                errors.append((it.name, "note: no mask, so all its pixels count as normal in the pixel metrics"))
            records.append(Record(str(target), str(mask_path) if mask_path else None, it.cls, it.label, it.defect))
            names[str(target)] = it.name
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    for key, m in masks.items():
        if key not in used:
            where = f"{m.cls}/ground_truth/{m.defect}/" if layout == "mvtec" else f"{m.cls}: bad/"
            errors.append((m.name, f"skipped: a mask without an image (no image named {m.stem} in {where})"))
    result = LabelledSet(records, names, errors, layout, root)
    try:
        check_usable(result)
    except MRADError:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return result


def _message(e, local_name) -> str:
    text = str(e).removeprefix("image: ").removeprefix(f"{local_name}: ")
    return text if isinstance(e, ImageError) else f"unreadable entry ({type(e).__name__}: {text})"


def check_usable(s: LabelledSet):
    """MRADError when nothing could be evaluated: no usable image, only good images, or only defective images
    without masks (image AUROC / AP and the thresholds need both kinds; pixel metrics need masks)."""
    problems = "".join(f"; {n}: {m}" for n, m in s.errors[:5])
    if not s.records:
        raise MRADError("no usable labelled images" + problems)
    if s.n_bad == 0:
        raise MRADError(f"only good images ({s.n_good}): image AUROC, AP and pixel AUROC are undefined without "
                        "defective images; add some (bad/ or test/<defect>/) with masks if you have them")
    if s.n_good == 0 and s.n_masks == 0:
        raise MRADError(f"only defective images ({s.n_bad}) and no masks: image AUROC and AP are undefined without "
                        "good images and pixel metrics without masks; add good images (good/ or test/good/)")


def _label(value) -> int | None:
    if isinstance(value, bool) or value in (0, 1):
        return int(value)
    return LABELS.get(str(value).strip().lower())


def read_labelled_list(items, cls: str = "uploads", max_images: int = MAX_IMAGES) -> LabelledSet:
    """[(image path, label[, mask path or None])] -> LabelledSet (files used where they are). Labels: 0/1,
    True/False, "good"/"ok"/"normal" or "bad"/"defective"/"anomalous". Unreadable items become errors."""
    records, names, errors = [], {}, []
    if len(items) > max_images:
        errors.append((f"{len(items) - max_images} more", f"skipped: an evaluation takes at most {max_images} images"))
        items = items[:max_images]
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) not in (2, 3):
            raise MRADError(f"each labelled image must be (image, label) or (image, label, mask), got {item!r}")
        image, label, mask = (*item, None)[:3]
        shown = Path(str(image)).name
        value = _label(label)
        if value is None:
            errors.append((shown, f"skipped: label {label!r} is neither good nor bad"))
            continue
        try:
            load_image(image)
            if mask is not None and value == 1:
                load_mask(mask, 8)
        except ImageError as e:
            errors.append((shown, _message(e, shown)))
            continue
        if mask is not None and value == 0:
            errors.append((Path(str(mask)).name, "ignored: a mask for a good image"))
        records.append(Record(os.path.abspath(image), os.path.abspath(mask) if mask is not None and value else None,
                              cls, value, "bad" if value else "good"))
        names[os.path.abspath(image)] = shown
    result = LabelledSet(records, names, errors, "list", None)
    check_usable(result)
    return result

"""`mrad bank add | inspect | remove | merge`: teach a memory-bank pair with your own images, and look inside it.

    mrad bank add --image-bank IB --patch-bank PB [--normal IMG ...] [--defect IMG:MASK ...] --out DIR
    mrad bank inspect BANK [--kind image|patch] [--all]
    mrad bank remove --image-bank IB --patch-bank PB (--id ID ... | --last N) --out DIR
    mrad bank merge --image-bank IB1 --patch-bank PB1 --image-bank IB2 --patch-bank PB2 [...] --out DIR
Outputs are DIR/image_bank.safetensors and DIR/patch_bank.safetensors (the inputs are never changed).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..bank import MemoryBank
from ..bank_edit import add_defect, add_normal, merge, one_class_note, remove_images
from ..build import save_banks
from ..config import DEFAULT
from ..errors import MRADError
from ..images import load_image, load_mask, thumbnail

COMMAND = "bank"


def add_parser(sub, name):
    p = sub.add_parser(name, help="add images to a memory bank, remove them, merge banks, inspect a bank",
                       description="Teach a memory-bank pair with your own images, and look inside it. add / remove "
                                   "/ merge write OUT/image_bank.safetensors and OUT/patch_bank.safetensors (the "
                                   "input files are never changed); inspect prints one bank.",
                       epilog="Each sub-command has its own --help.")
    bank_sub = p.add_subparsers(dest="bank_command", required=True, metavar="ACTION")

    a = bank_sub.add_parser("add", help="add normal images and defect images (with masks) to a bank pair",
                            description="Encode each image once and add it as bank building does: a normal image "
                                        "gives a normal image entry and one normal patch entry; a defect image an "
                                        "anomalous image entry, an anomalous patch entry for the mask's region and "
                                        "a normal one for the rest. Each image's id (its path as given) and a 64x64 "
                                        "thumbnail are recorded; normal images are added first, then defects. "
                                        "Without --image-bank/--patch-bank the bank starts empty.")
    _pair_args(a, "bank pair to add to (omit both to start from an empty bank)")
    a.add_argument("--normal", nargs="+", action="extend", default=[], metavar="IMG", help="known-good images")
    a.add_argument("--defect", nargs="+", action="extend", default=[], metavar="IMG:MASK",
                   help="defect image and its mask (non-zero pixels = defect), joined by ':'")
    a.add_argument("--out", required=True, metavar="DIR", help="folder for the new bank pair")
    a.add_argument("--backbone", metavar="PATH", default=None,
                   help="CLIP backbone state dict [$MRAD_BACKBONE] (default: open_clip's OpenAI weights); must be "
                        "the backbone the bank was built with")
    a.add_argument("--model", default=None, metavar="NAME",
                   help=f"open_clip model name or config .json [$MRAD_MODEL] (default: {DEFAULT.model_name})")
    a.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    a.add_argument("--precision", choices=("fp32", "bf16", "fp16", "bf16-mlp"), default="fp32",
                   help="backbone precision (default: %(default)s, as bank building)")
    a.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")
    a.set_defaults(run=run_add)

    i = bank_sub.add_parser("inspect", help="print a bank's size, labels, source and image ids",
                            description="Print a bank file's kind, size, normal / anomalous counts, source, recorded "
                                        "image ids (with each image's label and entries) and metadata.")
    i.add_argument("bank", metavar="BANK", help="an image or patch bank (.safetensors or official .pt)")
    i.add_argument("--kind", choices=("image", "patch"), default=None,
                   help="for official .pt files (default: from the file's metadata, else 'patch' when the name "
                        "contains 'patch', else 'image')")
    i.add_argument("--all", action="store_true", help="list every id (default: the first 20)")
    i.set_defaults(run=run_inspect)

    r = bank_sub.add_parser("remove", help="remove images (their image entry and all their patch entries)",
                            description="Remove images by id: each one's image entry and every patch entry it gave. "
                                        "Removing what `bank add` added restores the earlier bank exactly.")
    _pair_args(r, "bank pair to remove from", required=True)
    r.add_argument("--id", dest="ids", nargs="+", action="extend", default=[], metavar="ID",
                   help="image id(s) as `mrad bank inspect` lists them")
    r.add_argument("--last", type=int, default=0, metavar="N", help="remove the N most recently added images")
    r.add_argument("--out", required=True, metavar="DIR", help="folder for the new bank pair")
    r.set_defaults(run=run_remove)

    m = bank_sub.add_parser("merge", help="merge bank pairs into one",
                            description="Concatenate two or more bank pairs (entries of the first pair first). "
                                        "Give --image-bank and --patch-bank once per pair, in the same order. Image "
                                        "ids must not repeat across the pairs.")
    m.add_argument("--image-bank", action="append", required=True, metavar="PATH", help="once per pair")
    m.add_argument("--patch-bank", action="append", required=True, metavar="PATH", help="once per pair")
    m.add_argument("--out", required=True, metavar="DIR", help="folder for the merged bank pair")
    m.set_defaults(run=run_merge)


def _pair_args(p, text, required=False):
    p.add_argument("--image-bank", metavar="PATH", default=None, required=required, help=f"image bank of the {text}")
    p.add_argument("--patch-bank", metavar="PATH", default=None, required=required, help=f"patch bank of the {text}")


def _load_pair(image_path, patch_path):
    if (image_path is None) != (patch_path is None):
        raise MRADError("give both --image-bank and --patch-bank (one pair), or neither to start from empty")
    if image_path is None:
        return None, None
    return MemoryBank.load(image_path, "image"), MemoryBank.load(patch_path, "patch")


def _save(image, patch, out, what):
    if image is None:
        raise MRADError("nothing would be left in the bank; not writing an empty bank")
    paths = save_banks(image, patch, out)
    print(f"{what}: image bank {len(image)} entries, patch bank {len(patch)} entries")
    print(f"wrote {paths[0]} and {paths[1]}")
    note = one_class_note(image)
    if note:
        print(f"warning: {note}")


def _defects(specs):
    out = []
    for spec in specs:
        image, sep, mask = spec.rpartition(":")
        if not sep or not image or not mask:
            raise MRADError(f"--defect {spec!r}: give the image and its mask as IMG:MASK")
        out.append((image, mask))
    return out


def run_add(args):

    if not args.normal and not args.defect:
        raise MRADError("nothing to add: give --normal IMG ... and/or --defect IMG:MASK ...")
    if args.batch_size < 1:
        raise MRADError("--batch-size must be >= 1")
    image_bank, patch_bank = _load_pair(args.image_bank, args.patch_bank)
    defects = _defects(args.defect)
    config = replace(DEFAULT, model_name=args.model or DEFAULT.model_name)
    masks = [load_mask(m, config.image_size) for _, m in defects]  # all inputs readable before any work
    for path in [*args.normal, *(d for d, _ in defects)]:
        load_image(path)
    ids = [*args.normal, *(d for d, _ in defects)]
    taken = sorted({i for i in ids if ids.count(i) > 1 or i in set((image_bank.ids or []) if image_bank else [])})
    if taken:
        raise MRADError(f"image id(s) {', '.join(taken[:5])} given twice or already in the bank (ids are the paths "
                        "as given; `mrad bank remove` takes the old entry out first)")
    from .common import encoder_from_args
    detector = encoder_from_args(args, args.backbone)  # bank's row of runtime.ENTRY_DEFAULTS (PyTorch)
    if image_bank is not None:
        image_bank.check(detector.backbone.image_dim, "image bank")
        patch_bank.check(detector.backbone.patch_dim, "patch bank")
    n0 = 0 if image_bank is None else len(image_bank)
    step = args.batch_size  # one batch of encodings in memory at a time
    for s in range(0, len(args.normal), step):
        paths = args.normal[s:s + step]
        image_bank, patch_bank = add_normal(image_bank, patch_bank, detector.encode(paths).to("cpu"), paths,
                                            torch.stack([thumbnail(p) for p in paths]))
    for s in range(0, len(defects), step):
        paths = [d for d, _ in defects[s:s + step]]
        image_bank, patch_bank = add_defect(image_bank, patch_bank, detector.encode(paths).to("cpu"),
                                            torch.stack(masks[s:s + step]), paths,
                                            torch.stack([thumbnail(p) for p in paths]))
    _save(image_bank, patch_bank, args.out, f"added {len(image_bank) - n0} image(s)")
    return 0


def _label_counts(bank):
    counts = bank.labels.bincount(minlength=2).tolist()
    return f"{counts[0]} normal, {counts[1]} anomalous"


def _kind_of(path: Path, given):
    if given:
        return given
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                kind = (f.metadata() or {}).get("kind")
            if kind in ("image", "patch"):
                return kind
        except Exception:  # unreadable: MemoryBank.load says why
            pass
    return "patch" if "patch" in path.name.lower() else "image"


def run_inspect(args):
    path = Path(args.bank)
    kind = _kind_of(path, args.kind)
    bank = MemoryBank.load(path, kind)
    print(f"file: {path}")
    print(f"kind: {kind} bank ({bank.meta.get('format', 'unknown format')})")
    print(f"entries: {len(bank)} ({_label_counts(bank)}), key dimension {bank.dim}")
    print(f"source: {bank.source}")
    for key in ("dataset", "split", "model", "backbone", "created", "built_with"):
        if key in bank.meta:
            print(f"{key}: {bank.meta[key]}")
    if kind == "image":
        print("thumbnails: " + ("yes" if bank.thumbnails is not None else "no"))
    ids = bank.ids
    if ids is None:
        print("images: none recorded (this bank records no images, as the authors' banks; entries have index and "
              "label only)")
    else:
        known = [i for i in ids if i is not None]
        print(f"images: {len(known)} recorded" + (f", {len(ids) - len(known)} unknown" if len(known) < len(ids)
                                                  else ""))
        owner = bank.owner
        if kind == "patch" and owner is None:
            print("patch owners: not recorded (images cannot be removed from this pair)")
        shown = ids if args.all else ids[:20]
        for row, image_id in enumerate(shown):
            if image_id is None:
                continue
            if kind == "image":
                print(f"  {row}\t{image_id}\t{('normal', 'anomalous')[int(bank.labels[row])]}")
            elif owner is not None:
                labels = bank.labels[owner == row].tolist()
                print(f"  {row}\t{image_id}\t{len(labels)} patch entries ({_label_counts_list(labels)})")
        if len(shown) < len(ids):
            print(f"  … {len(ids) - len(shown)} more (--all lists every id)")
    if kind == "image":
        note = one_class_note(bank)
        if note:
            print(f"warning: {note}")
    return 0


def _label_counts_list(labels):
    return f"{labels.count(0)} normal, {labels.count(1)} anomalous"


def run_remove(args):
    if args.last < 0:
        raise MRADError(f"--last must be >= 0, not {args.last}")
    if not args.ids and not args.last:
        raise MRADError("nothing to remove: give --id ID ... and/or --last N")
    image_bank, patch_bank = _load_pair(args.image_bank, args.patch_bank)
    ids = list(args.ids)
    if args.last:
        known = [i for i in (image_bank.ids or []) if i is not None]
        if args.last > len(known):
            raise MRADError(f"--last {args.last}: the bank records only {len(known)} image(s)")
        ids += [i for i in known[-args.last:] if i not in ids]
    image_bank, patch_bank = remove_images(image_bank, patch_bank, ids)
    _save(image_bank, patch_bank, args.out, f"removed {len(ids)} image(s): {json.dumps(ids)[:200]}")
    return 0


def run_merge(args):
    if len(args.image_bank) != len(args.patch_bank):
        raise MRADError(f"give --image-bank and --patch-bank once per pair ({len(args.image_bank)} image banks, "
                        f"{len(args.patch_bank)} patch banks)")
    if len(args.image_bank) < 2:
        raise MRADError("give at least two bank pairs to merge")
    merged = (None, None)
    for ib, pb in zip(args.image_bank, args.patch_bank):
        merged = merge(merged, _load_pair(ib, pb))
    _save(*merged, args.out, f"merged {len(args.image_bank)} bank pairs")
    return 0

"""Building the image and patch memory banks over a dataset split, as the reference does (parity README
"Bank building"): every sample of the split, normal and anomalous, with its mask; each image encoded ONCE and
both banks taken from that one encoding through `BankBuilder`.

Restartable: with a work dir, the entries of every chunk of `chunk` images are saved there
(part-NNNNN.safetensors, with a manifest fingerprinting the dataset and model); a rerun of the same command
skips the chunks already done. Sharded across processes with `distributed` (identical banks).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import __version__
from .bank import BankBuilder, MemoryBank, one_hot
from .datasets import RecordDataset, record_id
from .distributed import Shard, broadcast_flags, rounds, run_rounds
from .images import THUMBNAIL_SIZE, thumbnails_from_pixels

IMAGE_BANK, PATCH_BANK = "image_bank.safetensors", "patch_bank.safetensors"
MANIFEST = "manifest.json"


def spec(image_dim: int, patch_dim: int) -> dict:
    """Rows gathered per round: image entries (one per image, with a thumbnail), patch entries (one or two per
    image, with the index of their image)."""
    f, i, t = torch.float32, torch.int64, THUMBNAIL_SIZE
    return {"image_keys": ((image_dim,), f), "image_labels": ((), i), "index": ((), i),
            "thumbnails": ((t, t, 3), torch.uint8),
            "patch_keys": ((patch_dim,), f), "patch_labels": ((), i), "patch_owner": ((), i)}


def fingerprint(ids, records, detector, chunk: int, backbone: str = "") -> str:
    """What the saved partial entries depend on: samples, labels, masks, model, backbone, chunking."""
    blob = json.dumps({"ids": ids, "labels": [r.anomaly for r in records], "masks": [r.mask for r in records],
                       "model": detector.config.model_name, "size": detector.config.image_size,
                       "backbone": backbone, "precision": detector.precision, "chunk": chunk,
                       "layout": 2})  # 2: parts hold thumbnails and patch owners
    return hashlib.sha256(blob.encode()).hexdigest()


def _entries(detector, batch) -> dict:
    """One batch -> its bank entries, through BankBuilder (image and patch entries from one encoding)."""
    enc = detector.encode(batch["pixels"])
    builder = BankBuilder()
    builder.add(enc, batch["label"], batch["mask"])
    image, patch = builder.build()
    return {"image_keys": image.keys, "image_labels": image.labels, "index": batch["index"],
            "thumbnails": thumbnails_from_pixels(batch["pixels"]),
            "patch_keys": patch.keys, "patch_labels": patch.labels, "patch_owner": batch["index"][patch.owner]}


def _prepare_work_dir(work_dir: Path, fp: str, n_chunks: int, log) -> list[bool]:
    """Which chunks are already saved; a work dir of another build is cleared."""
    work_dir.mkdir(parents=True, exist_ok=True)
    manifest = work_dir / MANIFEST
    try:
        same = json.loads(manifest.read_text()).get("fingerprint") == fp
    except (OSError, ValueError):
        same = False
    if not same:
        for p in work_dir.glob("part-*.safetensors"):
            p.unlink()
        manifest.write_text(json.dumps({"fingerprint": fp, "chunks": n_chunks}))
        return [False] * n_chunks
    done = [(work_dir / f"part-{c:05d}.safetensors").is_file() for c in range(n_chunks)]
    if any(done):
        log(f"resuming: {sum(done)} of {n_chunks} chunk(s) already built in {work_dir}")
    return done


def build_banks(detector, records, root, *, source: str, batch_size: int = 8, workers: int = 0,
                work_dir=None, chunk: int = 256, shard: Shard = Shard(), progress: bool = True, log=print,
                extra_meta: dict | None = None, identity: str = ""):
    """Records of a split -> (image_bank, patch_bank) on rank 0 ((None, None) on the other ranks).

    detector: a Detector (only its backbone is used). Bank order = record order; per image the patch bank holds
    the anomalous region's entry first, then the normal one's (as BankBuilder). `identity` (e.g. the backbone
    file's path, size and time) is part of the work dir's fingerprint; `extra_meta` goes into the banks."""
    n = len(records)
    ids = [record_id(r, root) for r in records]
    chunks = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    work_dir = Path(work_dir) if work_dir else None
    done = [False] * len(chunks)
    if work_dir is not None and shard.main:
        fp = fingerprint(ids, records, detector, chunk, identity)
        done = _prepare_work_dir(work_dir, fp, len(chunks), log)
    done = broadcast_flags(done, shard)
    sp = spec(detector.backbone.image_dim, detector.backbone.patch_dim)
    plan = [(c, idx) for c, (s, e) in enumerate(chunks) if not done[c] for idx in rounds(s, e, batch_size, shard)]
    parts = {c: load_file(str(work_dir / f"part-{c:05d}.safetensors")) for c in range(len(chunks))
             if done[c] and shard.main}
    bar = tqdm(total=n, initial=sum(e - s for (s, e), d in zip(chunks, done) if d), unit="image",
               desc="mrad build-bank", disable=not (progress and shard.main))
    pending = {}
    dataset = RecordDataset(records, detector.config.image_size)
    gathered = run_rounds(dataset, [idx for _, idx in plan], lambda b: _entries(detector, b), sp, shard, workers)
    for (c, _), rows in zip(plan, gathered):
        if rows is None:
            continue
        bar.update(len(rows["index"]))
        acc = pending.setdefault(c, [])
        acc.append(rows)
        s, e = chunks[c]
        if sum(len(r["index"]) for r in acc) == e - s:  # chunk complete: keep it, and save it when resumable
            parts[c] = {k: torch.cat([r[k] for r in acc]) for k in sp}
            del pending[c]
            if work_dir is not None:
                tmp = work_dir / f".part-{c:05d}.tmp"
                save_file({k: v.contiguous() for k, v in parts[c].items()}, str(tmp))
                os.replace(tmp, work_dir / f"part-{c:05d}.safetensors")
    bar.close()
    if not shard.main:
        return None, None
    allp = [parts[c] for c in range(len(chunks))]
    index = torch.cat([p["index"] for p in allp])
    if not torch.equal(index, torch.arange(n)):
        raise RuntimeError("bank entries came back out of order (a bug): please report it")
    meta = {"source": source, "image_ids": ids, "n_images": n,
            "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "model": detector.config.model_name, "built_with": f"mrad_core {__version__} (mrad build-bank)",
            **(extra_meta or {})}
    cat = {k: torch.cat([p[k] for p in allp]) for k in sp}
    image = MemoryBank(cat["image_keys"], one_hot(cat["image_labels"]), "image", dict(meta),
                       thumbnails=cat["thumbnails"])
    patch = MemoryBank(cat["patch_keys"], one_hot(cat["patch_labels"]), "patch", dict(meta), cat["patch_owner"])
    return image, patch


def save_banks(image: MemoryBank, patch: MemoryBank, out_dir) -> tuple[Path, Path]:
    """Write OUT/image_bank.safetensors and OUT/patch_bank.safetensors; nothing half-written at either path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / IMAGE_BANK, out_dir / PATCH_BANK)
    tmps = [p.with_name(f".{p.name}.tmp") for p in paths]
    image.save(tmps[0])
    patch.save(tmps[1])
    for tmp, final in zip(tmps, paths):
        os.replace(tmp, final)
    return paths


def clear_work_dir(work_dir):
    shutil.rmtree(work_dir, ignore_errors=True)

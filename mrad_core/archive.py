"""Scoring a whole archive: inputs expanded from folders, globs and @LIST files, images decoded by DataLoader workers
while the model encodes batches, results committed batch by batch to an SQLite store that survives `kill -9`, a
re-run continuing where the last one stopped, the work sharded over torchrun ranks (distributed.py).

    items = expand(["archive/", "extra/*.png", "@more.txt"])           # [Item(key, path)], sorted by key
    summary = score_archive(detector, items, ("tf",), out, identity=run_identity(...), shard=shard)

The store: OUT/store/part-<rank>.sqlite, one per rank that ever wrote (WAL journal, one transaction per batch, so a
batch is in it entirely or not at all). Each part holds the run's identity (inputs, variants, model files, precision,
engine, maps, profile) in its `run` table; a run with another identity into the same OUT is refused (MRADError
naming the differences) unless `overwrite`. Table `rows` holds one row per image and variant:
(image key, variant position, variant, score, image_prob, map_top, anomalous, error). After the last batch, rank 0
merges the parts in key order into OUT/scores.csv and OUT/scores.json (written atomically); maps, when kept, are
OUT/maps/<key>.<variant>.npy, written (atomically) before their batch is committed.
"""
from __future__ import annotations

import csv
import glob
import heapq
import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .datasets import IMAGE_EXTENSIONS
from .distributed import Shard, barrier, rounds, sum_ranks
from .errors import MRADError
from .files import atomic
from .images import load_image, preprocess

STORE = "store"  # OUT/store/part-<rank>.sqlite
CSV_COLUMNS = ("image", "variant", "score", "image_prob", "map_top", "anomalous", "error")
STORE_VERSION = 1
MAPS = ("npy", "none")


@dataclass(frozen=True)
class Item:
    key: str  # the output key: path relative to the folder (or glob base, or list file) it came from, '/'-separated
    path: str  # where to read it


def is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def explicit_only(sources) -> bool:
    """True when every source is an existing file named directly (no folder, glob or @LIST): today's
    `mrad predict IMAGE...` contract (outputs keyed by stem, all images checked before any work)."""
    return all(not str(s).startswith("@") and Path(s).is_file() for s in sources)


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _walk(folder: Path) -> list[Item]:
    """Image files under `folder`, recursively (symlinked files followed, hidden files and folders skipped)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith(".") and _image_name(f):
                p = Path(root) / f
                out.append(Item(p.relative_to(folder).as_posix(), str(p)))
    return out


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    base = []
    for part in parts[:-1]:
        if is_glob(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _globbed(pattern: str) -> list[Item]:
    base = _glob_base(pattern)
    out = []
    for match in glob.glob(pattern, recursive=True):
        p = Path(match)
        rel = Path(os.path.relpath(p, base))
        if p.is_file() and not _hidden(rel) and _image_name(p.name):
            out.append(Item(rel.as_posix(), str(p)))
    return out


def _listed(list_file: Path) -> list[Item]:
    """One path per line (blank lines and lines starting with # skipped); relative paths are relative to the
    list file's folder and are the keys; absolute paths are their own keys."""
    if not list_file.is_file():
        raise MRADError(f"@{list_file}: no such list file")
    out = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        key = os.path.normpath(line)
        out.append(Item(Path(key).as_posix(), str(p if p.is_absolute() else list_file.parent / p)))
    return out


def expand(sources) -> list[Item]:
    """Image paths, folders (recursive), shell-style globs and @LIST files -> Items sorted by key. Keys must be
    unique (two sources giving the same relative path are an error naming it)."""
    items = []
    for s in map(str, sources):
        if s.startswith("@"):
            items += _listed(Path(s[1:]))
        elif Path(s).is_dir():
            items += _walk(Path(s))
        elif Path(s).is_file():
            items.append(Item(Path(s).name, s))
        elif is_glob(s):
            found = _globbed(s)
            if not found:
                raise MRADError(f"{s}: no images match this pattern")
            items += found
        else:
            raise MRADError(f"{s}: no such file or folder")
    items.sort(key=lambda it: it.key)
    dupes = sorted({a.key for a, b in zip(items, items[1:]) if a.key == b.key})
    if dupes:
        raise MRADError(f"several inputs give the same relative path {', '.join(dupes[:5])}"
                        f"{' …' if len(dupes) > 5 else ''}; outputs are keyed by it: pass their common parent "
                        "folder instead")
    if not items:
        raise MRADError("no images found in " + ", ".join(map(str, sources)))
    return items


def describe_sources(sources) -> list[str]:
    """The sources as they identify a run: absolute paths (globs and @LIST kept as such)."""
    out = []
    for s in map(str, sources):
        if s.startswith("@"):
            out.append("@" + os.path.abspath(s[1:]))
        else:
            out.append(os.path.abspath(s))
    return out


def file_identity(path) -> dict | None:
    """A model file as it identifies a run: absolute path, size and modification time (no hashing of GBs)."""
    if not path:
        return None
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return {"path": str(path)}
    return {"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


class ImageDataset(torch.utils.data.Dataset):
    """Items -> {"index", "pixels" (3, S, S), "error" ("" or why the image cannot be used; pixels then zeros)}."""

    def __init__(self, items, image_size: int = 518):
        self.paths = [it.path for it in items]
        self.image_size = image_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            pixels, error = preprocess(load_image(self.paths[index]).image, self.image_size), ""
        except MRADError as e:
            pixels, error = torch.zeros(3, self.image_size, self.image_size), str(e)
        return {"index": index, "pixels": pixels, "error": error}


# ---------------------------------------------------------------------------------------------------- the store

def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=60, isolation_level=None)  # explicit BEGIN / COMMIT
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")  # a committed batch survives a power cut too, not only kill -9
    return con


def parts(out) -> list[Path]:
    folder = Path(out) / STORE
    return sorted(folder.glob("part-*.sqlite")) if folder.is_dir() else []


def _query(path: Path, sql: str) -> list:
    """Rows of `sql` on one part; [] when its table does not exist yet (a part killed while being created).
    An unreadable part is an MRADError naming it (never silently scored again)."""
    con = sqlite3.connect(str(path), timeout=60)  # read-write: recovers the WAL of a killed writer
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise MRADError(f"{path}: cannot read this part of the store ({e}); --overwrite starts afresh")
    except sqlite3.DatabaseError as e:
        raise MRADError(f"{path}: cannot read this part of the store ({e}); --overwrite starts afresh")
    finally:
        con.close()


def stored_identities(out) -> list[tuple[Path, dict]]:
    found = []
    for p in parts(out):
        for (value,) in _query(p, "SELECT value FROM run WHERE key = 'identity'"):
            found.append((p, json.loads(value)))
    return found


def differences(old: dict, new: dict) -> list[str]:
    """What differs between two run identities, one phrase per key."""
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            out.append(f"{k}: the stored run has {json.dumps(old.get(k))}, this one {json.dumps(new.get(k))}")
    return out


def check_identity(out, identity: dict):
    """MRADError if OUT holds a run with another identity (nothing is changed)."""
    for path, old in stored_identities(out):
        diff = differences(old, identity)
        if diff:
            raise MRADError(f"{out} holds another run ({path.name}); " + "; ".join(diff)
                            + ". Use another --out, or --overwrite to start afresh")


def done_keys(out) -> set:
    """Keys of the images committed in any part of the store."""
    return {k for p in parts(out) for (k,) in _query(p, "SELECT DISTINCT image FROM rows")}


class Store:
    """This rank's part of the store: rows are committed one batch per transaction."""

    def __init__(self, out, rank: int, identity: dict):
        folder = Path(out) / STORE
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"part-{rank}.sqlite"
        self.con = _connect(self.path)
        self.con.execute("CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT)")
        self.con.execute("CREATE TABLE IF NOT EXISTS rows (image TEXT, vpos INTEGER, variant TEXT, score REAL, "
                         "image_prob REAL, map_top REAL, anomalous INTEGER, error TEXT, PRIMARY KEY (image, vpos))")
        self.con.execute("INSERT OR REPLACE INTO run VALUES ('identity', ?)", (json.dumps(identity, sort_keys=True),))

    def commit(self, rows):
        """rows: tuples in the `rows` column order; all or none of them land."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            self.con.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def close(self):
        self.con.close()


def stored_rows(out):
    """Every stored row, merged over the parts in (image key, variant position) order, each (image, variant) once."""
    cons = [sqlite3.connect(str(p), timeout=60) for p in parts(out)]
    try:
        cursors = [c.execute("SELECT image, vpos, variant, score, image_prob, map_top, anomalous, error FROM rows "
                             "ORDER BY image, vpos") for c in cons]
        last = None
        for row in heapq.merge(*cursors, key=lambda r: (r[0], r[1])):
            if (row[0], row[1]) != last:
                last = (row[0], row[1])
                yield row
    finally:
        for c in cons:
            c.close()


# ---------------------------------------------------------------------------------------------------- scoring

def _save_map(path: Path, array: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def map_path(out, key: str, variant: str) -> Path:
    return Path(out) / "maps" / f"{key}.{variant}.npy"


def score_batch(detector, batch, keys, variants, *, out=None, maps="npy", profile=None, strict=False) -> list:
    """One loaded batch -> store rows; the batch is encoded once (its readable images only) and scored per variant."""
    errors = list(batch["error"])
    if strict:
        for e in errors:
            if e:
                raise MRADError(e)
    ok = [i for i, e in enumerate(errors) if not e]
    results = {}
    if ok:
        enc = detector.encode(batch["pixels"][ok])
        results = {v: detector.score(enc, v) for v in variants}
    rows, j = [], {i: n for n, i in enumerate(ok)}
    for i, key in enumerate(keys):
        for vpos, v in enumerate(variants):
            if errors[i]:
                rows.append((key, vpos, v, None, None, None, None, errors[i]))
                continue
            r, n = results[v], j[i]
            anomalous = None if profile is None else int(bool(profile.is_anomalous(v, r.score[n])))
            if maps == "npy":
                _save_map(map_path(out, key, v), r.map[n].astype(np.float32))
            rows.append((key, vpos, v, float(r.score[n]), float(r.image_prob[n]), float(r.map_top[n]), anomalous, ""))
    return rows


def _collate(samples):
    return {"index": torch.tensor([s["index"] for s in samples]), "pixels": torch.stack([s["pixels"] for s in samples]),
            "error": [s["error"] for s in samples]}


def prepare(out, identity: dict, shard: Shard = Shard(), overwrite: bool = False) -> set:
    """Before any scoring, on every rank: refuse another run's OUT (unless overwrite: rank 0 clears it), then
    read which images are already committed. Returns those keys (the same set on every rank)."""
    out = Path(out)
    if overwrite:
        if shard.main:
            shutil.rmtree(out / STORE, ignore_errors=True)
            shutil.rmtree(out / "maps", ignore_errors=True)
            for name in ("scores.csv", "scores.json", "run.json"):
                (out / name).unlink(missing_ok=True)
        barrier(shard)
    check_identity(out, identity)
    done = done_keys(out)
    barrier(shard)  # every rank has read the store before any rank writes to it
    return done


def score_archive(detector, items, variants, out, *, identity: dict, shard: Shard = Shard(), batch_size: int = 8,
                  workers: int = 0, maps: str = "npy", profile=None, strict: bool = False, overwrite: bool = False,
                  progress: bool = True, on_commit=None) -> dict | None:
    """Score every item not yet in OUT's store, batch by batch (this rank's share of the rounds), then (rank 0)
    assemble scores.csv and scores.json. Returns (rank 0) {"images", "errors", "scored", "skipped"}; None elsewhere.
    `on_commit(n_rows)` is called after each committed batch of this rank."""
    if maps not in MAPS:
        raise MRADError(f"--maps takes {' or '.join(MAPS)}, not {maps!r}")
    if batch_size < 1 or workers < 0:
        raise MRADError("--batch-size must be >= 1 and --workers >= 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = prepare(out, identity, shard, overwrite)
    n = len(items)
    todo_block = [any(items[i].key not in done for i in range(b, min(b + batch_size, n)))
                  for b in range(0, n, batch_size)]
    plan = rounds(0, n, batch_size, shard)
    active = [k for k in range(len(plan))
              if any(todo_block[b] for b in range(k * shard.world, min((k + 1) * shard.world, len(todo_block))))]
    mine = [[i for i in plan[k] if items[i].key not in done] for k in active]
    remaining = sum(1 for it in items if it.key not in done)
    store = Store(out, shard.rank, identity)
    bar = tqdm(total=n, initial=n - remaining, unit="image", desc="mrad predict", smoothing=0.1,
               disable=not (progress and shard.main))
    dataset = ImageDataset(items, detector.config.image_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[m for m in mine if m], num_workers=workers,
                                         collate_fn=_collate, persistent_workers=False)
    ok, it = False, None
    try:
        it = iter(loader)
        for indices in mine:
            error, count = None, 0
            try:
                if indices:
                    batch = next(it)
                    keys = [items[i].key for i in batch["index"].tolist()]
                    rows = score_batch(detector, batch, keys, variants, out=out, maps=maps, profile=profile,
                                       strict=strict)
                    store.commit(rows)
                    count = len(indices)
                    if on_commit is not None:
                        on_commit(len(rows))
            except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
                error = e
            failed, scored = sum_ranks([int(error is not None), count], shard)
            if failed:
                if error is not None:
                    raise error
                raise MRADError("another process of this distributed run failed; see its error message")
            bar.update(scored)
        ok = True
    finally:
        bar.close()
        store.close()
        del it, loader
    barrier(shard)  # every rank has committed its last batch
    if not ok or not shard.main:
        return None
    summary = assemble(out, items, variants)
    summary.update(scored=remaining, skipped=n - remaining)
    return summary


def _cell(x) -> str:
    return "" if x is None else repr(float(x))


def assemble(out, items, variants) -> dict:
    """Merge the store's parts into OUT/scores.csv and OUT/scores.json in key order (streamed; atomic files).
    Only the current inputs are written. Returns {"images", "errors"}."""
    out = Path(out)
    wanted = {it.key for it in items}
    n_images = n_errors = 0
    with atomic(out / "scores.csv") as csv_tmp, atomic(out / "scores.json") as json_tmp:
        with open(csv_tmp, "w", newline="") as cf, open(json_tmp, "w") as jf:
            writer = csv.writer(cf)
            writer.writerow(CSV_COLUMNS)
            jf.write("{")
            current, entry = None, None

            def flush():
                nonlocal n_images, n_errors
                if current is None:
                    return
                jf.write(("\n" if n_images == 0 else ",\n") + json.dumps(current) + ": " + json.dumps(entry))
                n_images += 1
                n_errors += "error" in entry

            for image, _vpos, v, score, prob, top, anomalous, error in stored_rows(out):
                if image not in wanted:
                    continue
                if image != current:
                    flush()
                    current, entry = image, {}
                writer.writerow([image, v, _cell(score), _cell(prob), _cell(top),
                                 "" if anomalous is None else ("true" if anomalous else "false"), error or ""])
                if error:
                    entry = {"error": error}
                else:
                    entry[v] = {"score": score, "image_prob": prob, "map_top": top}
                    if anomalous is not None:
                        entry[v]["anomalous"] = bool(anomalous)
            flush()
            jf.write("\n}\n")
        if n_images != len(items):  # inside the block: the old outputs stay as they were
            raise MRADError(f"the store holds {n_images} of the {len(items)} images; run the same command again "
                            "to score the rest")
    return {"images": n_images, "errors": n_errors}


def read_csv(path) -> list[dict]:
    """scores.csv -> rows as dicts (for tests and tools)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_json(path, data: dict):
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


__all__ = ["Item", "expand", "explicit_only", "describe_sources", "file_identity", "ImageDataset", "Store",
           "score_archive", "assemble", "stored_rows", "check_identity", "differences", "read_csv", "CSV_COLUMNS",
           "MAPS", "STORE_VERSION"]

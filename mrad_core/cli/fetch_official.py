"""`mrad fetch-official`: the authors' released banks and MRAD-CLIP checkpoints from Google Drive, file by file
(by the file ids in the registry, through drive.py: verified sha256, atomic, one download per file), copied into
cache/ and checkpoints/; `--verify` reports each local file against the registry's table without downloading."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..artefacts import drive
from ..artefacts.digest import file_sha256
from ..artefacts.hub import unreachable
from ..artefacts.registry import REGISTRY, TRAINING_SOURCES
from ..errors import MRADError
from ..files import atomic
from ..settings import settings_of

COMMAND = "fetch-official"
GROUPS = {"heads": ("heads",), "banks": ("image_bank", "patch_bank")}


def add_parser(sub, name):
    p = sub.add_parser(name, help="download the authors' banks and checkpoints (Google Drive, by file id)",
                       description="Download the MRAD authors' memory banks into cache/ and their MRAD-CLIP "
                                   "checkpoints into checkpoints/, file by file from Google Drive (MRAD_DRIVE_URL), "
                                   "each checked against the sha256 in mrad_core/artefacts/registry.py "
                                   "(MRAD_ACCEPT_DIGESTS accepts others). Downloads go through $MRAD_CACHE_DIR/drive; the project gets "
                                   "copies. `mrad convert` then turns them into safetensors.")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="project directory holding cache/ and checkpoints/ (default: $MRAD_PROJECT_DIR, else here)")
    p.add_argument("--only", choices=tuple(GROUPS), default=None, help="heads or banks only")
    p.add_argument("--source", choices=TRAINING_SOURCES, default=None, help="one training source only")
    p.add_argument("--verify", action="store_true",
                   help="download nothing: report each local file (project and cache) against the table")
    p.set_defaults(run=run)


def selected(args) -> list:
    kinds = GROUPS[args.only] if args.only else tuple(k for g in GROUPS.values() for k in g)
    return [a for (kind, source), a in REGISTRY.items() if kind in kinds and args.source in (None, source)]


def _place(src: Path, dest: Path):
    """Copy (or hard-link) a verified file into the project, atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic(dest) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def verdict(art, path: Path, options) -> tuple:
    """(ok, text) for one local file against the registry's table."""
    digest, off = file_sha256(path, options.cache_dir), art.official
    if digest == off.sha256:
        return True, "ok       sha256 matches the table"
    if digest in drive.accepted(off, options):
        return True, f"accepted sha256 {digest} (MRAD_ACCEPT_DIGESTS; the table says {off.sha256})"
    return False, f"MISMATCH sha256 {digest}, the table says {off.sha256}"


def verify(arts, root: Path, options) -> int:
    bad = 0
    for art in arts:
        off = art.official
        places = [root / art.local_dir / off.name, drive.cache_dir(options) / off.name]
        found = [p for p in places if p.is_file()]
        if not found:
            bad += 1
            print(f"  MISSING  {off.name} (looked in {', '.join(str(p.parent) for p in places)}; Drive id "
                  f"{off.drive_id}, {off.link})")
        for path in found:
            ok, text = verdict(art, path, options)
            bad += not ok
            print(f"  {text}: {path} ({path.stat().st_size:,} bytes)")
    print(f"{bad} file(s) missing or not matching" if bad else "every file matches the registry's table")
    return 1 if bad else 0


def run(args):
    options = settings_of(args).artefacts
    root = Path(args.root) if args.root else options.project_dirs()[0]
    arts = selected(args)
    if args.verify:
        print(f"checking the authors' files in {root} and {drive.cache_dir(options)} against "
              f"mrad_core/artefacts/registry.py:")
        return verify(arts, root, options)
    if drive.url_template(options) is None:
        raise MRADError("Google Drive downloads are off (MRAD_DRIVE_URL=off or HF_HUB_OFFLINE=1): unset them, or "
                        "download the files by hand (`mrad fetch-official --verify` lists their links)")
    failures = []
    for art in arts:
        off = art.official
        dest = root / art.local_dir / off.name
        if dest.is_file() and verdict(art, dest, options)[0]:
            print(f"  present  {dest} (sha256 checked)")
            continue
        if dest.is_file():
            print(f"  replacing {dest}: {verdict(art, dest, options)[1]}")
        print(f"fetching {off.name} ({art.label}) from Google Drive, file id {off.drive_id}")
        try:
            cached = drive.fetch_original(art, [root], options)
        except drive.DriveError as e:
            failures.append(str(e))
            print(f"  FAILED   {off.name}")
            if unreachable(e):  # no network: the other files would fail the same way
                break
            continue
        _place(cached, dest)
        print(f"  fetched  {dest} ({dest.stat().st_size:,} bytes, sha256 {file_sha256(dest, options.cache_dir)})")
    if failures:
        raise MRADError(" | ".join(failures))
    print("all files are in place and verified; the app and `mrad predict` find them there "
          "(`mrad convert` turns them into safetensors)")
    return 0

"""`mrad fetch-official`: download the authors' released banks and MRAD-CLIP checkpoints from their Google
Drive folders (gdown) into cache/ and checkpoints/, then report what was found against what is expected."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import MRADError
from ..hub import project_dirs
from ..registry import OFFICIAL_FOLDERS, OFFICIAL_NAMES

COMMAND = "fetch-official"
SUFFIXES = (".pt", ".pth", ".safetensors")


def add_parser(sub, name):
    p = sub.add_parser(name, help="download the authors' banks and checkpoints (Google Drive)",
                       description="Download the MRAD authors' memory banks into cache/ and their MRAD-CLIP "
                                   "checkpoints into checkpoints/ (Google Drive, via gdown; interrupted runs "
                                   "resume), then list what arrived against the expected names. The resolver uses "
                                   "these files directly; `mrad convert` turns them into safetensors.")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="project directory holding cache/ and checkpoints/ (default: $MRAD_PROJECT_DIR, else here)")
    p.add_argument("--only", choices=tuple(OFFICIAL_FOLDERS), default=None, help="fetch one folder only")
    p.add_argument("--quiet", action="store_true", help="no gdown progress output")
    p.set_defaults(run=run)


def expected(what: str) -> list:
    kinds = ("heads",) if what == "heads" else ("image_bank", "patch_bank")
    return [name for (kind, _), name in OFFICIAL_NAMES.items() if kind in kinds]


def fetch(what: str, root: Path, quiet=False) -> str | None:
    """Download one Drive folder into its directory. Returns None, or the reason it failed."""
    import gdown

    url, sub = OFFICIAL_FOLDERS[what]
    target = root / sub
    target.mkdir(parents=True, exist_ok=True)
    try:
        gdown.download_folder(url=url, output=str(target), quiet=quiet, use_cookies=False, resume=True)
    except Exception as e:  # gdown's DownloadError / FileURLRetrievalError, requests' connection errors, OSError
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else 'no details'}"
    return None


def collect(what: str, root: Path) -> list:
    """Lines of the report for one folder; expected files that landed in a sub-folder are moved up."""
    _, sub = OFFICIAL_FOLDERS[what]
    target = root / sub
    lines = []
    for name in expected(what):
        top = target / name
        nested = [p for p in sorted(target.rglob(name)) if p != top] if target.is_dir() else []
        if not top.is_file() and nested:
            os.replace(nested[0], top)
            lines.append(f"  found    {sub}/{name} ({top.stat().st_size:,} bytes; moved up from "
                         f"{nested[0].relative_to(target)})")
        elif top.is_file():
            lines.append(f"  found    {sub}/{name} ({top.stat().st_size:,} bytes)")
        else:
            lines.append(f"  MISSING  {sub}/{name}")
    others = sorted(p for p in target.rglob("*") if p.suffix in SUFFIXES and p.name not in expected(what)) \
        if target.is_dir() else []
    lines += [f"  also     {p.relative_to(root)} ({p.stat().st_size:,} bytes; not a name MRAD looks for: give it "
              f"with a path option or `mrad convert` it)" for p in others]
    return lines


def run(args):
    root = Path(args.root) if args.root else project_dirs()[0]
    folders = [args.only] if args.only else list(OFFICIAL_FOLDERS)
    failures = {}
    for what in folders:
        print(f"fetching the authors' {what} from {OFFICIAL_FOLDERS[what][0]} into {root / OFFICIAL_FOLDERS[what][1]}")
        failure = fetch(what, root, args.quiet)
        if failure:
            failures[what] = failure
    lines, missing = [], 0
    for what in folders:
        part = collect(what, root)
        missing += sum("MISSING" in line for line in part)
        lines += [f"{what} ({OFFICIAL_FOLDERS[what][0]}):"] + part
    print("\n".join(lines))
    if failures:
        raise MRADError("; ".join(f"downloading the {w} failed ({why}): download the folder by hand from "
                                  f"{OFFICIAL_FOLDERS[w][0]} into {root / OFFICIAL_FOLDERS[w][1]}"
                                  for w, why in failures.items()))
    if missing:
        print(f"{missing} expected file(s) missing: the Drive folders may use other names (see 'also' above)")
        return 1
    print("all expected files are in place; the app and `mrad predict` find them there")
    return 0

"""`mrad publish --repo ID`: upload our safetensors heads and banks plus a generated model card (licences,
provenance, sha256 list) to a Hugging Face model repo with `HfApi.upload_folder`. Pickled official files are
never published: convert them first (`mrad convert`)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..artefacts import ArtefactOptions
from ..artefacts.digest import file_sha256
from ..artefacts.registry import BACKBONE, LICENCES, REGISTRY, SPDX
from ..errors import MRADError, first_line
from ..settings import settings_of

COMMAND = "publish"


def add_parser(sub, name):
    p = sub.add_parser(name, help="upload our heads and banks with a model card to the Hub",
                       description="Upload the mrad_*.safetensors files found in checkpoints/ and cache/ (or "
                                   "--from DIR) with a generated README.md (licences, provenance, sha256 list) "
                                   "and SHA256SUMS. Needs a login (`hf auth login` or HF_TOKEN) with write access.")
    p.add_argument("--repo", required=True, metavar="ID", help="target model repo, e.g. mrad-project/mrad")
    p.add_argument("--from", dest="sources", action="append", default=None, metavar="DIR",
                   help="directory with mrad_*.safetensors files (repeatable; default: checkpoints/ and cache/)")
    p.add_argument("--revision", default=None, metavar="BRANCH", help="branch to commit to (default: main)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--message", default="Upload MRAD heads and memory banks", help="commit message")
    p.add_argument("--dry-run", default=None, metavar="DIR", help="write the folder that would be uploaded to DIR, "
                                                                  "upload nothing")
    p.set_defaults(run=run)


def find_files(dirs=None, roots=None) -> list:
    """[(Artefact, path)] for every registry file present in the given directories (default: checkpoints/ and
    cache/ of the project directories `roots`)."""
    roots = roots or ArtefactOptions().project_dirs()
    dirs = [Path(d) for d in dirs] if dirs else [Path(r) / sub for r in roots for sub in ("checkpoints", "cache")]
    found = {}
    for art in REGISTRY.values():
        for d in dirs:
            if (d / art.filename).is_file() and art.filename not in found:
                found[art.filename] = (art, d / art.filename)
    return list(found.values())


def _metadata(path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def model_card(files: list, digests: dict, repo_id: str) -> str:
    """README.md for the Hub repo: YAML metadata, what the files are, where they come from, licences, sha256."""
    from huggingface_hub import ModelCardData

    sources = sorted({art.source for art, _ in files})
    licence = SPDX["mvtec"] if "mvtec" in sources else SPDX["visa"]
    data = ModelCardData(license=licence, library_name="open_clip", base_model=BACKBONE.repo,
                         tags=["anomaly-detection", "zero-shot", "clip", "mrad"])
    rows, origins = [], []
    for art, path in files:
        meta = _metadata(path)
        rows.append(f"| `{art.filename}` | {art.label} | {path.stat().st_size:,} | `{digests[art.filename]}` |")
        prov = json.loads(meta["provenance"]) if meta.get("provenance", "").startswith("{") else None
        origins.append(f"- `{art.filename}`: " + (f"converted with `mrad convert` from `{prov.get('file')}` "
                                                   f"(sha256 `{prov.get('sha256')}`)" if prov else
                                                   "built with `mrad` (see the file's metadata)"))
    licences = "\n".join(f"- {s}: {LICENCES[s]}" for s in sources)
    return f"""---
{data.to_yaml()}
---

# MRAD heads and memory banks

Files for MRAD, "Zero-Shot Anomaly Detection with Memory-Driven Retrieval" (ICLR 2026), in the safetensors
layout of `mrad_core` (no pickles). With `MRAD_HUB_REPO={repo_id}` (and `MRAD_HUB_REVISION` pinned to a commit of
this repo) the app and `mrad predict` download them lazily with `hf_hub_download` and check each file against the
sha256 the Hub recorded, which are the digests listed below.

| file | what | bytes | sha256 |
|---|---|---|---|
{chr(10).join(rows)}

The CLIP backbone is not here: open_clip fetches OpenAI's ViT-L/14@336 from `{BACKBONE.repo}`.

## Source

{chr(10).join(origins)}

## Licence

The MRAD code is MIT-licensed. These files are derived from datasets with their own terms:

{licences}

Files built from MVTec AD may be used for non-commercial purposes only (CC BY-NC-SA 4.0).
"""


def stage(files: list, repo_id: str, folder: Path, cache_dir=None) -> dict:
    """Link (or copy) the files into `folder` with README.md and SHA256SUMS. Returns {filename: sha256}."""
    digests = {art.filename: file_sha256(path, cache_dir) for art, path in files}
    folder.mkdir(parents=True, exist_ok=True)
    for art, path in files:
        dest = folder / art.filename
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)
    (folder / "README.md").write_text(model_card(files, digests, repo_id))
    (folder / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in sorted(digests.items())))
    return digests


def run(args):
    options = settings_of(args).artefacts
    roots = options.project_dirs()
    files = find_files(args.sources, roots)
    if not files:
        where = ", ".join(args.sources or [str(r / s) for r in roots for s in ("checkpoints", "cache")])
        raise MRADError(f"no mrad_*.safetensors files in {where}: run `mrad convert` on the authors' files first")
    if args.dry_run:
        digests = stage(files, args.repo, Path(args.dry_run), options.cache_dir)
        print(f"staged {len(files)} file(s) + README.md + SHA256SUMS in {args.dry_run} (nothing uploaded)")
    else:
        from huggingface_hub import HfApi
        api = HfApi()
        with tempfile.TemporaryDirectory(prefix="mrad-publish-") as tmp:
            digests = stage(files, args.repo, Path(tmp), options.cache_dir)
            try:
                api.create_repo(args.repo, repo_type="model", private=args.private, exist_ok=True)
                info = api.upload_folder(repo_id=args.repo, folder_path=tmp, revision=args.revision,
                                         commit_message=args.message)
            except Exception as e:  # huggingface_hub HTTP errors, missing login
                raise MRADError(f"upload to {args.repo} failed ({first_line(e, 300)}); log in with `hf auth login` or set HF_TOKEN "
                                f"(a token with write access)") from e
        print(f"uploaded {len(files)} file(s) to {getattr(info, 'commit_url', args.repo)}")
        print(f"pin it: MRAD_HUB_REPO={args.repo} MRAD_HUB_REVISION={getattr(info, 'oid', '<commit>')}")
    for name, digest in sorted(digests.items()):
        print(f"  {digest}  {name}")
    return 0

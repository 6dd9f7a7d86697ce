"""`mrad build-bank`: build the image and patch memory banks from a dataset split (parity README "Bank building").

Writes OUT/image_bank.safetensors and OUT/patch_bank.safetensors (our bank format, with provenance metadata).
Restartable: finished chunks are kept in OUT/.build-work; running the same command again resumes there.
Shard across processes with `torchrun --nproc_per_node N -m mrad_core build-bank ...` (identical banks).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..build import build_banks, clear_work_dir, save_banks
from ..config import DEFAULT
from ..datasets import DATASETS, dataset_name, read_dataset
from ..distributed import setup, teardown
from ..errors import MRADError
from ..artefacts.resolve import backbone_file, resolve_paths
from ..settings import settings_of
from .common import add_model_args, encoder_from_args

COMMAND = "build-bank"


def add_parser(sub, name):
    p = sub.add_parser(name, help="build image + patch memory banks from a dataset",
                       description="Encode every sample of a dataset split once (normal and anomalous, with masks) "
                                   "and write OUT/image_bank.safetensors and OUT/patch_bank.safetensors. Only the "
                                   "backbone options are used (--heads / banks are ignored). Interrupted runs "
                                   "resume from OUT/.build-work when the same command is run again.")
    p.add_argument("--dataset", required=True, help="one of: " + ", ".join(DATASETS))
    p.add_argument("--data-path", required=True, metavar="ROOT",
                   help="the dataset's folder (its meta.json is used if present)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the two bank files")
    p.add_argument("--split", default="test", help="meta.json split to build from (default: %(default)s, as the "
                                                   "reference)")
    p.add_argument("--workers", type=int, default=2, help="image-loading processes (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=256, metavar="N",
                   help="save finished entries every N images for resuming (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="discard any unfinished earlier run in OUT/.build-work")
    add_model_args(p)
    p.set_defaults(run=run)


def _identity(path):
    if not path:
        return "open_clip pretrained"
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}"


def run(args):
    if args.batch_size < 1 or args.workers < 0 or args.checkpoint_every < 1:
        raise MRADError("--batch-size and --checkpoint-every must be >= 1, --workers >= 0")
    name = dataset_name(args.dataset)
    records = read_dataset(name, args.data_path, args.split)
    settings = settings_of(args)
    given = resolve_paths(backbone=args.backbone, files=settings.files)["backbone"]
    # open_clip's pretrained weights without one: a local file (Hugging Face cache or download)
    backbone = backbone_file(args.backbone, args.model or settings.model, settings.artefacts)
    shard, device = setup(args.device, settings.dist_timeout_hours)
    ok = False
    try:
        config = replace(DEFAULT, model_name=args.model or settings.model)
        detector = encoder_from_args(args, backbone, device)  # build-bank's row of runtime.ENTRY_DEFAULTS
        out = Path(args.out)
        work = out / ".build-work"
        if args.fresh and shard.main:
            clear_work_dir(work)
        backbone_name = Path(given).name if given else f"{config.model_name}:{config.pretrained} (open_clip)"
        image, patch = build_banks(
            detector, records, args.data_path, source=name, batch_size=args.batch_size, workers=args.workers,
            work_dir=work, chunk=args.checkpoint_every, shard=shard, identity=_identity(backbone),
            extra_meta={"dataset": name, "split": args.split, "backbone": backbone_name,
                        "precision": detector.precision, "engine": detector.engine.name})
        if shard.main:
            paths = save_banks(image, patch, out)
            clear_work_dir(work)
            print(f"{len(records)} images -> image bank {len(image)} entries, patch bank {len(patch)} entries")
            print(f"wrote {paths[0]} and {paths[1]}")
        ok = True
    finally:
        teardown(shard, ok)
    return 0

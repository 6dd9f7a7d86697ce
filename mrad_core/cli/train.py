"""`mrad train`: train MRAD-FT / MRAD-CLIP heads on a dataset with the reference recipe."""
from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import MRADError
from .common import add_model_args, encoder_from_args, model_of

COMMAND = "train"


def add_parser(sub, name):
    p = sub.add_parser(
        name, help="train MRAD-FT / MRAD-CLIP heads (the reference recipe)",
        description="Encode every image of the split once with the frozen CLIP, build the image and patch memory "
                    "banks from those encodings, then train: MRAD-FT = 1 epoch of image_proj + patch_proj (cosine "
                    "lr to 1e-6); MRAD-CLIP = 1 FT epoch, then 5 epochs of prompt_learner + prompt_proj. Writes "
                    "OUT/heads_epoch{N}.safetensors and OUT/checkpoint.safetensors (for --resume) after every epoch, "
                    "OUT/heads.safetensors at the end, "
                    "OUT/image_bank.safetensors + OUT/patch_bank.safetensors (the banks it trained with) and "
                    "OUT/train.log. As in the paper, train on one dataset's test split (e.g. VisA) and test on "
                    "the others. --batch-size is both the training batch (8 in the reference) and the encoding "
                    "batch; banks are built from the data unless --image-bank and --patch-bank are given "
                    "(environment variables are not used for heads or banks here).")
    p.add_argument("--variant", choices=("ft", "clip"), required=True, help="which heads to train")
    p.add_argument("--dataset", required=True, metavar="NAME", help="mvtec, visa, mpdd, btad, dtd, … (see mrad meta)")
    p.add_argument("--data-path", required=True, metavar="ROOT", help="dataset root (a meta.json there is used)")
    p.add_argument("--split", default="test", help="split to train on (default: %(default)s, as the reference)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--init", metavar="HEADS", default=None,
                   help="start from these heads (.safetensors or official .pth; --heads is the same) instead of a "
                        "fresh initialisation")
    p.add_argument("--ft-epochs", type=int, default=1, help="epochs of the FT stage (default: %(default)s)")
    p.add_argument("--clip-epochs", type=int, default=5, help="epochs of the CLIP stage (default: %(default)s)")
    p.add_argument("--lr", type=float, default=4e-4, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=111, help="random seed (default: %(default)s)")
    p.add_argument("--official", action="store_true",
                   help="also write the official checkpoint layout (mrad_{variant}_epoch_N.pth, "
                        "mrad_{variant}_final.pth)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.safetensors (the whole training state at the end of the last "
                        "finished epoch, written atomically) with the same options: the losses are those of an "
                        "uninterrupted run; without a checkpoint yet, start from the first epoch")
    p.add_argument("--workers", type=int, default=2, help="image loading processes (default: %(default)s)")
    p.add_argument("--features", metavar="DIR", default=None,
                   help="where to keep the per-image encodings (default: OUT/features; ~10 MB per image)")
    p.add_argument("--keep-features", action="store_true",
                   help="keep the encodings after training (a later run on the same images re-uses them)")
    add_model_args(p, engine=False)
    p.set_defaults(run=run)


def _heads(args, backbone, variant):
    from ..heads import FT_GROUPS, Heads
    from ..train import init_heads

    path = args.init or args.heads
    torch.manual_seed(args.seed)
    if not path:
        return init_heads(backbone, clip=variant == "clip")
    heads = Heads.load(path)
    if variant == "ft" and heads.has_clip:  # as the reference, MRAD-FT checkpoints hold the FT heads only
        return Heads.from_state_dict({k: v for k, v in heads.state_dict().items() if k.split(".")[0] in FT_GROUPS},
                                     heads.meta)
    if variant == "clip" and not heads.has_clip:  # FT heads given: add fresh prompt heads
        fresh = init_heads(backbone)
        fresh.load_state_dict({k: v for k, v in heads.state_dict().items() if k.split(".")[0] in FT_GROUPS},
                              strict=False)
        fresh.meta = {**heads.meta, "init": f"{path} + fresh prompt heads"}
        return fresh
    return heads


def run(args):
    from ..bank import MemoryBank
    from ..config import DEFAULT
    from ..datasets import dataset_name, read_dataset, record_id
    from ..artefacts.resolve import resolve_paths
    from ..settings import settings_of
    from ..train import TrainConfig, TrainLog, encode_dataset, train

    cfg = TrainConfig(variant=args.variant, ft_epochs=args.ft_epochs, clip_epochs=args.clip_epochs, lr=args.lr,
                      batch_size=args.batch_size, seed=args.seed, official=args.official)
    if (args.image_bank is None) != (args.patch_bank is None):
        raise MRADError("give both --image-bank and --patch-bank, or neither (then they are built from the data)")
    name = dataset_name(args.dataset)
    records = read_dataset(name, args.data_path, args.split)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = TrainLog(out / "train.log")
    backbone_path = resolve_paths(backbone=args.backbone, files=settings_of(args).files)["backbone"]
    config = replace(DEFAULT, model_name=model_of(args))
    detector = encoder_from_args(args, backbone_path)  # train's row of runtime.ENTRY_DEFAULTS (PyTorch)
    heads = _heads(args, detector.backbone, args.variant)
    log(f"mrad train --variant {args.variant} --dataset {name} --data-path {args.data_path} ({args.split}: "
        f"{len(records)} images, {sum(r.anomaly for r in records)} anomalous) on {detector.device}")
    t0 = time.time()
    features = Path(args.features) if args.features else out / "features"
    store, image_bank, patch_bank = encode_dataset(
        detector, records, features, ids=[record_id(r, args.data_path) for r in records], workers=args.workers,
        source=f"{name}/{args.split}", backbone=str(backbone_path or f"{config.model_name}/{config.pretrained}"))
    log(f"encoded {len(store)} images in {time.time() - t0:.1f} s; banks: {len(image_bank)} image, "
        f"{len(patch_bank)} patch entries")
    if args.image_bank:
        image_bank = MemoryBank.load(args.image_bank, "image").check(detector.backbone.image_dim)
        patch_bank = MemoryBank.load(args.patch_bank, "patch").check(detector.backbone.patch_dim)
        log(f"training with the given banks {args.image_bank}, {args.patch_bank} instead")
    image_bank.save(out / "image_bank.safetensors")
    patch_bank.save(out / "patch_bank.safetensors")
    meta = {"dataset": name, "split": args.split, "images": len(store), "init": str(args.init or args.heads or "fresh")}
    train(heads, detector.backbone, store, image_bank, patch_bank, cfg, out, device=detector.device, meta=meta,
          resume=args.resume)
    if not args.keep_features:
        shutil.rmtree(features, ignore_errors=True)
    print(f"done in {time.time() - t0:.0f} s: heads {out / 'heads.safetensors'}, banks of the training set "
          f"{out / 'image_bank.safetensors'}, {out / 'patch_bank.safetensors'}; log {out / 'train.log'}")
    return 0

"""MRAD-FT / MRAD-CLIP training, the reference recipe (losses and dropout in `losses.py`).

    heads = init_heads(backbone)                      # or Heads.load(...) to continue from a checkpoint
    store, image_bank, patch_bank = encode_dataset(detector, records, out / "features")
    train(heads, detector.backbone, store, image_bank, patch_bank, TrainConfig(variant="clip"), out)

Recipe (the reference's train.py): memory banks from the training set; Adam, lr 4e-4, betas (0.5, 0.999), batch 8,
seed 111. FT stage trains image_proj + patch_proj (seg_loss + image_loss); MRAD-FT alone runs 1 epoch with cosine
annealing to 1e-6 per step. MRAD-CLIP runs 1 FT epoch (constant lr), then 5 epochs training only prompt_learner +
prompt_proj (FT heads frozen). The backbone is frozen, so each image is encoded ONCE and its features are re-read
every epoch (the reference re-encodes every image every epoch: same numbers, ~6x the backbone time for MRAD-CLIP).
Checkpoints after every epoch: heads_epoch{N}.safetensors (and mrad_{variant}_epoch_{N}.pth in the official layout),
and the whole training state in checkpoint.safetensors (heads, Adam moments, the schedule, the shuffling generator and
torch's RNG; written atomically), from which `train(..., resume=True)` continues exactly (losses equal an
uninterrupted run's).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .bank import BankBuilder, MemoryBank
from .files import sync
from .errors import MRADError
from .heads import Heads
from .losses import Features, clip_losses, ft_losses, ft_probs

TRAIN_VARIANTS = ("ft", "clip")
CHECKPOINT = "checkpoint.safetensors"  # the training state after the last finished epoch
PROMPTS = ("object.", "damaged object.")  # after the n_ctx "X" placeholders: normal (`_pos`), anomalous (`_neg`)


@dataclass
class TrainConfig:
    variant: str = "clip"  # "ft": FT stage only (cosine schedule); "clip": FT stage, then the CLIP stage
    ft_epochs: int = 1
    clip_epochs: int = 5
    lr: float = 4e-4
    betas: tuple = (0.5, 0.999)
    eta_min: float = 1e-6  # cosine annealing floor (MRAD-FT only)
    batch_size: int = 8
    seed: int = 111
    official: bool = False  # also write the official .pth layout

    def __post_init__(self):
        if self.variant not in TRAIN_VARIANTS:
            raise MRADError(f"can train variant 'ft' or 'clip', not {self.variant!r}")
        if self.ft_epochs < 0 or self.clip_epochs < 0 or self.epochs == 0:
            raise MRADError("epochs must be >= 0 and the run must have at least one epoch")
        if self.batch_size < 1:
            raise MRADError("batch size must be >= 1")

    @property
    def epochs(self):
        return self.ft_epochs + (self.clip_epochs if self.variant == "clip" else 0)


def init_heads(backbone, n_ctx: int = 12, n_compound: int | None = None, compound_len: int = 4, clip: bool = True,
               tokenize=None) -> Heads:
    """Fresh heads, initialised as the reference does (seed torch first for reproducibility): Linear layers with
    PyTorch's default init; context vectors and compound prompts N(0, 0.02); the SOS / suffix token embeddings and
    token ids of "X X … X object." / "X X … X damaged object." (n_ctx X's) from the model's tokenizer
    (`open_clip.tokenize`, or `tokenize(texts) -> (2, context) ids`) and its token_embedding.
    n_compound (deep prompts, before text layers 2…) defaults to min(8, text layers - 1); 8 for ViT-L/14."""
    model = backbone.clip
    dim, patch_dim = backbone.image_dim, backbone.patch_dim
    prompt = None
    if clip:
        width = model.ln_final.weight.shape[0]
        if width != dim:
            raise MRADError(f"MRAD-CLIP needs text width == embedding dim; this model has {width} and {dim}")
        if tokenize is None:
            import open_clip
            tokenize = open_clip.tokenize
        layers = len(model.transformer.resblocks)
        n_compound = min(8, layers - 1) if n_compound is None else n_compound
        texts = [" ".join(["X"] * n_ctx) + " " + p for p in PROMPTS]
        ids = tokenize(texts)
        vocab = model.token_embedding.num_embeddings
        if int(ids.max()) >= vocab:
            raise MRADError(f"the tokenizer gives token ids up to {int(ids.max())} but this model's vocabulary has "
                            f"{vocab}; start from existing heads (--init) instead")
        context = ids.shape[1]
        prompt = dict(n_ctx=n_ctx, dim=width, n_suffix=context - 1 - n_ctx, n_compound=n_compound,
                      compound_len=compound_len, context=context)
    heads = Heads(dict(dim=dim), dict(in_dim=patch_dim, dim=dim), prompt, meta={"init": "fresh"})
    if clip:
        pl = heads.prompt_learner
        with torch.no_grad():
            for p in (pl.ctx_pos, pl.ctx_neg, *pl.compound_prompts_text):
                torch.nn.init.normal_(p, std=0.02)
            emb = model.token_embedding(ids.to(model.token_embedding.weight.device)).float().cpu()
            for i, side in enumerate(("pos", "neg")):
                getattr(pl, f"token_prefix_{side}").copy_(emb[i, :1][None, None])
                getattr(pl, f"token_suffix_{side}").copy_(emb[i, 1 + n_ctx:][None, None])
                getattr(pl, f"tokenized_prompts_{side}").copy_(ids[i][None, None].int())
    return heads


class FeatureStore:
    """The training inputs of every image, computed once from the frozen backbone and memory-mapped from .npy files
    in `folder`: image (n, E), patches (n, N, W), tokens (n, N, E) (normalised, as training reads them; about
    10 MB per image at full size), masks (n, S, S) uint8, labels (n,). `info.json` is written last (complete)."""

    FIELDS = ("image", "patches", "tokens", "masks", "labels")

    def __init__(self, folder):
        self.folder = Path(folder)
        self.info = json.loads((self.folder / "info.json").read_text())
        self.arrays = {f: np.load(self.folder / f"{f}.npy", mmap_mode="r") for f in self.FIELDS}

    def __len__(self):
        return len(self.arrays["labels"])

    def batch(self, indices, device="cpu"):
        """Indices -> (Features, gt (B, S, S) float 0/1, labels (B,) long) on `device`."""
        idx = np.sort(np.asarray(indices))
        a = {f: torch.from_numpy(np.ascontiguousarray(self.arrays[f][idx])) for f in self.FIELDS}
        feats = Features(a["image"], a["patches"], a["tokens"]).to(device)
        return feats, a["masks"].float().to(device), a["labels"].long().to(device)


def encode_dataset(detector, records, folder, ids=None, workers: int = 2, progress: bool = True, **bank_meta):
    """Encode every record once with `detector` (batch size, device, precision are its own): build the image and
    patch banks (BankBuilder) and the FeatureStore in `folder` from the same encodings.
    Returns (FeatureStore, image_bank, patch_bank); reuses a complete store of the same images and model."""
    from .datasets import RecordDataset

    folder = Path(folder)
    ids = list(ids or [r.image for r in records])
    key = {"ids": ids, "model": detector.config.model_name, "precision": detector.precision,
           "backbone": str(bank_meta.get("backbone", ""))}
    banks = [folder / f"bank_{k}.safetensors" for k in ("image", "patch")]
    if (folder / "info.json").is_file() and all(b.is_file() for b in banks):
        store = FeatureStore(folder)
        if {k: store.info.get(k) for k in key} == key:
            return store, MemoryBank.load(banks[0], "image"), MemoryBank.load(banks[1], "patch")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "info.json").unlink(missing_ok=True)
    bb, n, size = detector.backbone, len(records), detector.config.image_size
    shapes = {"image": (n, bb.image_dim), "patches": (n, bb.grid ** 2, bb.patch_dim),
              "tokens": (n, bb.grid ** 2, bb.image_dim), "masks": (n, size, size), "labels": (n,)}
    dtypes = {"masks": np.uint8, "labels": np.int64}
    arrays = {f: np.lib.format.open_memmap(folder / f"{f}.npy", mode="w+", dtype=dtypes.get(f, np.float32),
                                           shape=shapes[f]) for f in FeatureStore.FIELDS}
    loader = torch.utils.data.DataLoader(RecordDataset(records, size), batch_size=detector.batch_size,
                                         shuffle=False, num_workers=workers)
    builder = BankBuilder(**bank_meta)
    start = 0
    for item in tqdm(loader, desc="encoding", unit="batch", disable=not progress):
        enc = detector.encode(item["pixels"])
        masks = (item["mask"] > 0.5).float()
        end = start + len(enc)
        builder.add(enc, item["label"], masks, ids[start:end])
        feats = Features.from_encoding(enc.to("cpu"))
        for f, t in (("image", feats.image), ("patches", feats.patches), ("tokens", feats.tokens),
                     ("masks", masks.to(torch.uint8)), ("labels", item["label"])):
            arrays[f][start:end] = t.numpy()
        start = end
    for a in arrays.values():
        a.flush()
    del arrays
    image_bank, patch_bank = builder.build()
    image_bank.save(banks[0])
    patch_bank.save(banks[1])
    (folder / "info.json").write_text(json.dumps({**key, "n": n}))
    return FeatureStore(folder), image_bank, patch_bank


def official_checkpoint(heads: Heads) -> dict:
    """The reference's checkpoint dict (plain tensors). For MRAD-CLIP, the prompt learner also gets the
    parameters the reference stores but never uses (compound_prompt_projections, mlp; zeros), so the
    reference's strict load_state_dict accepts the file."""
    state = heads.official_state()
    if "prompt_learner" in state:
        pl = heads.prompt_learner
        dim = pl.ctx_pos.shape[-1]
        for i in range(len(pl.compound_prompts_text)):
            state["prompt_learner"][f"compound_prompt_projections.{i}.weight"] = torch.zeros(896, dim)
            state["prompt_learner"][f"compound_prompt_projections.{i}.bias"] = torch.zeros(896)
        for name, shape in (("c_fc.weight", (4 * dim, dim)), ("c_fc.bias", (4 * dim,)),
                            ("c_proj.weight", (dim, 4 * dim)), ("c_proj.bias", (dim,))):
            state["prompt_learner"][f"mlp.{name}"] = torch.zeros(shape)
    return state


def save_checkpoint(heads: Heads, path, official_path=None, **meta):
    """Our safetensors layout at `path` (and the official .pth at `official_path`), each written atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    heads.save(tmp, **meta)
    os.replace(tmp, path)
    if official_path is not None:
        official_path = Path(official_path)
        tmp = official_path.with_name(f".{official_path.name}.tmp")
        torch.save(official_checkpoint(heads), tmp)
        os.replace(tmp, official_path)


def _optimizer_tensors(prefix: str, opt) -> tuple[dict, dict]:
    """An optimizer's state_dict -> (tensors, JSON-able rest): no pickle."""
    state = opt.state_dict()
    tensors, rest = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        rest["state"][str(idx)] = {}
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}.{idx}.{k}"] = v.detach().cpu().clone().contiguous()
                rest["state"][str(idx)][k] = None
            else:
                rest["state"][str(idx)][k] = v
    return tensors, rest


def _optimizer_state(prefix: str, tensors: dict, rest: dict) -> dict:
    state = {int(idx): {k: (tensors[f"{prefix}.{idx}.{k}"] if v is None else v) for k, v in entry.items()}
             for idx, entry in rest["state"].items()}
    return {"state": state, "param_groups": rest["param_groups"]}


def save_training_state(path, *, heads: Heads, optimizers: dict, scheduler, generator, epoch: int, history: list,
                        config: "TrainConfig", n_images: int):
    """The whole training state at the end of `epoch` -> one safetensors file (state in its JSON metadata),
    written under a temporary name, synced, then renamed into place: a crash leaves the previous state or this one."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"heads.{k}": v.detach().cpu().clone().contiguous() for k, v in heads.state_dict().items()}
    opt_rest = {}
    for name, opt in optimizers.items():
        if opt is not None:
            t, opt_rest[name] = _optimizer_tensors(f"optimizer.{name}", opt)
            tensors.update(t)
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    state = {"epoch": epoch, "history": history, "config": json.loads(json.dumps(asdict(config))),
             "n_images": n_images, "optimizers": opt_rest,
             "scheduler": scheduler.state_dict() if scheduler is not None else None}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"mrad_training_state": json.dumps(state)})
    sync(tmp)
    os.replace(tmp, path)


def load_training_state(path) -> tuple[dict, dict]:
    """-> (tensors, state) as saved by save_training_state."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            state = json.loads(f.metadata()["mrad_training_state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise MRADError(f"{path}: not a training checkpoint of mrad train ({e})")
    return tensors, state


class TrainLog:
    """Lines to the log file (with a timestamp) and to the console (through tqdm, so bars stay intact)."""

    def __init__(self, path, echo=True):
        self.path, self.echo = Path(path), echo

    def __call__(self, msg):
        with open(self.path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        if self.echo:
            tqdm.write(msg)


def train(heads: Heads, backbone, store: FeatureStore, image_bank, patch_bank, config: TrainConfig, out,
          device="cpu", progress: bool = True, meta: dict | None = None, resume: bool = False,
          on_epoch=None) -> list[dict]:
    """Train `heads` in place with the reference recipe; checkpoint after every epoch into `out` (heads_epoch{N}
    and the training state, CHECKPOINT). With resume, continue from `out`/CHECKPOINT when there is one (the same
    config and number of images; else MRADError): the epochs after it give the losses of an uninterrupted run.
    `on_epoch(summary)` is called after each epoch's checkpoint. Returns one summary per epoch (the resumed ones
    too): {epoch, stage, lr, mean losses, seconds}."""
    cfg, out = config, Path(out)
    if cfg.variant == "clip" and not heads.has_clip:
        raise MRADError("MRAD-CLIP training needs heads with a prompt learner (init_heads, or a CLIP checkpoint)")
    out.mkdir(parents=True, exist_ok=True)
    log = TrainLog(out / "train.log", echo=progress)
    device = torch.device(device)
    heads.to(device).train().requires_grad_(True)  # e.g. heads a Detector had frozen
    backbone.to(device)
    image_bank, patch_bank = image_bank.to(device), patch_bank.to(device)
    text_cfg = backbone.config
    gen = torch.Generator().manual_seed(cfg.seed)
    n, bs = len(store), cfg.batch_size
    steps = (n + bs - 1) // bs
    ft_params = [*heads.image_proj.parameters(), *heads.patch_proj.parameters()]
    ft_opt = torch.optim.Adam(ft_params, lr=cfg.lr, betas=cfg.betas)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(ft_opt, T_max=cfg.ft_epochs * steps, eta_min=cfg.eta_min)
             if cfg.variant == "ft" else None)
    clip_opt = (torch.optim.Adam([*heads.prompt_learner.parameters(), *heads.prompt_proj.parameters()], lr=cfg.lr,
                                 betas=cfg.betas) if cfg.variant == "clip" else None)
    log(f"train MRAD-{cfg.variant.upper()}: {n} images, {steps} steps/epoch, {cfg.epochs} epoch(s), "
        f"{json.dumps(asdict(cfg))}")
    history, first = [], 1
    checkpoint = out / CHECKPOINT
    if resume and checkpoint.is_file():
        tensors, state = load_training_state(checkpoint)
        want = json.loads(json.dumps(asdict(cfg)))
        diff = [k for k in sorted(set(want) | set(state["config"]))
                if k != "official" and want.get(k) != state["config"].get(k)]
        if diff or state["n_images"] != n:
            what = ", ".join(f"{k} {state['config'].get(k)} -> {want.get(k)}" for k in diff)
            if state["n_images"] != n:
                what = ", ".join(filter(None, [what, f"images {state['n_images']} -> {n}"]))
            raise MRADError(f"{checkpoint} was made by another training run ({what}); resume with the same options, "
                            "or train into another --out")
        heads.load_state_dict({k[len("heads."):]: v for k, v in tensors.items() if k.startswith("heads.")})
        for name, opt in (("ft", ft_opt), ("clip", clip_opt)):
            if opt is not None and name in state["optimizers"]:
                opt.load_state_dict(_optimizer_state(f"optimizer.{name}", tensors, state["optimizers"][name]))
        if sched is not None and state["scheduler"] is not None:
            sched.load_state_dict(state["scheduler"])
        gen.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        history, first = list(state["history"]), state["epoch"] + 1
        log(f"resumed from {checkpoint} after epoch {state['epoch']}/{cfg.epochs}")
    elif resume:
        log(f"no {checkpoint} yet: starting from the first epoch")
    for epoch in range(first, cfg.epochs + 1):
        stage = "ft" if epoch <= cfg.ft_epochs else "clip"
        for p in ft_params:  # FT heads are frozen in the CLIP stage
            p.requires_grad_(stage == "ft")
        sums, t0 = {}, time.time()
        order = torch.randperm(n, generator=gen)
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs} [{stage}]", unit="step", disable=not progress)
        for step in bar:
            feats, gt, labels = store.batch(order[step * bs:(step + 1) * bs].numpy(), device)
            if stage == "ft":
                res = ft_losses(heads, feats, gt, labels, image_bank, patch_bank)
                opt, keys = ft_opt, ("seg_loss", "image_loss", "loss")
            else:
                with torch.no_grad():
                    _, seg = ft_probs(heads, feats, image_bank, patch_bank)
                res = clip_losses(heads, backbone, feats, gt, seg, text_cfg.region_threshold,
                                  text_cfg.text_temperature)
                opt, keys = clip_opt, ("clip_loss",)
            opt.zero_grad()
            res["loss"].backward()
            opt.step()
            if stage == "ft" and sched is not None:
                sched.step()
            for k in keys:
                sums[k] = sums.get(k, 0.0) + res[k].detach().item()
            bar.set_postfix({k: f"{v / (step + 1):.4f}" for k, v in sums.items()})
        summary = {"epoch": epoch, "stage": stage, "lr": opt.param_groups[0]["lr"],
                   **{k: v / steps for k, v in sums.items()}, "seconds": round(time.time() - t0, 1)}
        history.append(summary)
        name = f"mrad_{cfg.variant}_epoch_{epoch}.pth" if cfg.official else None
        save_checkpoint(heads, out / f"heads_epoch{epoch}.safetensors", out / name if name else None,
                        provenance=json.dumps({**(meta or {}), **asdict(cfg), "epoch": epoch, "stage": stage}))
        save_training_state(checkpoint, heads=heads, optimizers={"ft": ft_opt, "clip": clip_opt}, scheduler=sched,
                            generator=gen, epoch=epoch, history=history, config=cfg, n_images=n)
        log(f"epoch {epoch}/{cfg.epochs} [{stage}] lr {summary['lr']:.2e}, " + ", ".join(
            f"{k} {v:.4f}" for k, v in summary.items() if k.endswith("loss")) + f", {summary['seconds']} s")
        if on_epoch is not None:
            on_epoch(summary)
    final = out / "heads.safetensors"
    save_checkpoint(heads, final, out / f"mrad_{cfg.variant}_final.pth" if cfg.official else None,
                    provenance=json.dumps({**(meta or {}), **asdict(cfg), "epoch": cfg.epochs}))
    log(f"saved {final}")
    for p in ft_params:
        p.requires_grad_(True)
    heads.eval()
    return history

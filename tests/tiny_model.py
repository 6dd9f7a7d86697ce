"""A tiny open_clip model (3 vision layers, width 64; 4 text layers, width 32) with matching random heads and
banks built by our own builder, written to files: fast stand-ins for the full-size MRAD files in unit tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TINY_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 336, "layers": 3, "width": 64, "patch_size": 14, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 4},
}


def write_config(directory) -> str:
    """Write the tiny open_clip config; its path is a valid MRADConfig.model_name / MRAD_MODEL."""
    path = Path(directory) / "mrad-tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return str(path)


def synthetic_image(seed: int, size=(96, 128), defect=False):
    """A textured RGB image; with defect=True a bright blob and its mask. Returns (PIL image, PIL mask)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.5 + 0.2 * np.sin(xx / rng.uniform(3, 9)) * np.cos(yy / rng.uniform(3, 9))
    img = np.stack([base * c for c in rng.uniform(0.6, 1.0, 3)], -1) + rng.normal(0, 0.03, (h, w, 3))
    mask = np.zeros((h, w), bool)
    if defect:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        mask = ((yy - cy) / (0.2 * h)) ** 2 + ((xx - cx) / (0.2 * w)) ** 2 <= 1
        img[mask] = img[mask] * 0.3 + np.array([0.9, 0.2, 0.1])
    img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(img), Image.fromarray(mask.astype(np.uint8) * 255)


def random_heads(seed=0, image_dim=32, patch_dim=64, n_compound=3):
    from mrad_core.heads import Heads
    torch.manual_seed(seed)
    heads = Heads(dict(dim=image_dim), dict(in_dim=patch_dim, dim=image_dim),
                  dict(n_ctx=12, dim=image_dim, n_suffix=64, n_compound=n_compound, compound_len=4))
    with torch.no_grad():
        pl = heads.prompt_learner
        for p in [pl.ctx_pos, pl.ctx_neg, *pl.compound_prompts_text]:
            p.normal_(0, 0.5)
        for side, eot in (("pos", 15), ("neg", 16)):
            getattr(pl, f"token_prefix_{side}").normal_(0, 0.5)
            getattr(pl, f"token_suffix_{side}").normal_(0, 0.5)
            ids = torch.zeros(1, 1, 77, dtype=torch.int32)
            ids[0, 0, :eot] = torch.arange(1, eot + 1)
            ids[0, 0, eot] = 999  # the EOT id is the largest one, as in CLIP's tokenizer
            getattr(pl, f"tokenized_prompts_{side}").copy_(ids)
        for lin in [heads.image_proj.mlp1, heads.image_proj.mlp2, *heads.patch_proj.fc,
                    heads.prompt_proj.mlp1, heads.prompt_proj.mlp2]:
            lin.weight.mul_(8)  # sharper retrieval, as trained heads are
    return heads


def make_tiny_files(directory) -> dict:
    """Write tiny backbone weights, heads and banks (built from 4 synthetic images) into `directory`.
    Returns {"model": config path, "backbone", "heads", "image_bank", "patch_bank", "images": [paths]}."""
    import open_clip
    from safetensors.torch import save_file

    from mrad_core import Backbone, BankBuilder, MRADConfig, load_mask
    from mrad_core.detector import Detector

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model = write_config(d)
    open_clip.add_model_config(model)
    torch.manual_seed(0)
    clip = open_clip.create_model("mrad-tiny", pretrained=None)
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(d / "tiny_backbone.safetensors"))
    config = MRADConfig(model_name=model)
    backbone = Backbone(clip, config)
    heads = random_heads()
    heads.save(d / "tiny_heads.safetensors", training_source="synthetic")

    images, masks, labels = [], [], []
    for i in range(4):
        img, mask = synthetic_image(100 + i, defect=i >= 2)
        img.save(d / f"bank_{i}.png")
        mask.save(d / f"bank_{i}_mask.png")
        images.append(d / f"bank_{i}.png")
        masks.append(load_mask(d / f"bank_{i}_mask.png"))
        labels.append(int(i >= 2))
    det = Detector(backbone, device="cpu")
    builder = BankBuilder(source="synthetic")
    builder.add(det.encode(images), labels, torch.stack(masks), [p.stem for p in images])
    image_bank, patch_bank = builder.build()
    image_bank.save(d / "tiny_image_bank.safetensors")
    patch_bank.save(d / "tiny_patch_bank.safetensors")
    queries = []
    for i, defect in enumerate((False, True)):
        img, _ = synthetic_image(200 + i, size=(120, 90), defect=defect)
        img.save(d / f"query_{i}.png")
        queries.append(str(d / f"query_{i}.png"))
    return {"model": model, "backbone": str(d / "tiny_backbone.safetensors"),
            "heads": str(d / "tiny_heads.safetensors"), "image_bank": str(d / "tiny_image_bank.safetensors"),
            "patch_bank": str(d / "tiny_patch_bank.safetensors"), "images": queries}

"""Frozen CLIP (open_clip) with MRAD's dual-path V-V encoder, and the text tower for MRAD-CLIP.

The vision forward re-uses open_clip's modules (conv1, ln_pre, the residual blocks' projections,
ln_post, proj) and only changes how they are wired:

    block 1           ordinary block
    blocks 2..L       o = o + out_proj(attn(q, k, v)); o = o + mlp(ln_2(o))      (original stream)
                      s = s + out_proj(attn(v, v, v))                           (V-V stream, no MLP)
                      q, k, v all come from ln_1(o)
    image feature     o[CLS] @ proj                                             (no ln_post)
    patch tokens      ln_post(s)[1:]  and  (ln_post(s) @ proj)[1:]
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import DEFAULT, MRADConfig
from .errors import MRADError, first_line


# precision -> autocast dtype of the whole encoder; "bf16-mlp" runs only the MLPs in bf16 (Backbone._mlp)
TORCH_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "bf16-mlp": None}


class WeightsError(MRADError):
    """A weights file that is missing, unreadable or of the wrong model; the message says which and why."""


@dataclass
class Encoding:
    """What the backbone computes once per image; every variant reads it. Shapes for B images,
    N = grid² patches (1369 at 518 px), W = vision width (1024), E = embedding dim (768)."""

    image_feature: torch.Tensor  # (B, E)    o[CLS] @ proj, not normalised
    patch_tokens: torch.Tensor  # (B, N, W)  ln_post(s)[1:]
    proj_tokens: torch.Tensor  # (B, N, E)   (ln_post(s) @ proj)[1:]
    patch_avg: torch.Tensor  # (B, N, W)     neighbour-averaged patch tokens, not normalised
    proj_avg: torch.Tensor  # (B, N, E)      neighbour-averaged projected tokens, not normalised

    def __len__(self):
        return self.image_feature.shape[0]

    def __getitem__(self, idx):
        idx = slice(idx, idx + 1) if isinstance(idx, int) else idx
        return Encoding(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def to(self, device):
        return Encoding(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @staticmethod
    def cat(encodings):
        return Encoding(**{f.name: torch.cat([getattr(e, f.name) for e in encodings]) for f in fields(Encoding)})


def neighbour_average(tokens: torch.Tensor, kernels=(1, 3, 5)) -> torch.Tensor:
    """(B, N, C) tokens on a square grid -> mean of stride-1 average pools (zero padding counted)."""
    b, n, c = tokens.shape
    g = int(round(n ** 0.5))
    grid = tokens.transpose(1, 2).reshape(b, c, g, g)
    pooled = sum(F.avg_pool2d(grid, k, stride=1, padding=k // 2, count_include_pad=True) for k in kernels)
    return (pooled / len(kernels)).reshape(b, c, n).transpose(1, 2)


def encoding_from_tokens(image_feature, patch_tokens, proj_tokens, kernels=(1, 3, 5)) -> Encoding:
    """The encoder's three outputs (float32) -> Encoding, with the neighbour averages computed here."""
    return Encoding(image_feature, patch_tokens, proj_tokens, neighbour_average(patch_tokens, kernels),
                    neighbour_average(proj_tokens, kernels))


def resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1 + g0², W) position embedding -> (1 + grid², W): bilinear on the grid, class position kept."""
    g0 = int(round((pos.shape[0] - 1) ** 0.5))
    if g0 == grid:
        return pos.clone()
    patch = pos[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(grid, grid), mode="bilinear", align_corners=False)
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(grid * grid, -1)])


def _heads(x, n_heads):
    b, n, d = x.shape
    return x.view(b, n, n_heads, d // n_heads).transpose(1, 2)


def _merge(x):
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def load_clip(weights=None, config: MRADConfig = DEFAULT):
    """open_clip model from a local state dict (safetensors, or a torch file read with weights_only)
    or, with weights=None, open_clip's own pretrained weights (fetched through its Hub mechanism)."""
    import open_clip

    if config.model_name.endswith(".json"):  # a custom open_clip model config file
        open_clip.add_model_config(config.model_name)
        config = replace(config, model_name=Path(config.model_name).stem)
    if weights is None:
        return open_clip.create_model(config.model_name, pretrained=config.pretrained)
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"backbone weights {path}: no such file")
    quiet = _DropRandomInitWarning()  # the weights are copied in next: open_clip's "initialized randomly" is untrue
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(config.model_name, pretrained=None)
    finally:
        logging.getLogger().removeFilter(quiet)
    if stream_weights(model, path):
        return model
    try:  # other layouts (prefixes, wrappers, third-party names): open_clip's own loader converts them
        open_clip.load_checkpoint(model, str(path))
    except Exception as e:  # open_clip raises RuntimeError/KeyError/pickle errors for foreign files
        raise WeightsError(f"backbone weights {path} cannot be loaded as {config.model_name} "
                           f"(OpenAI/open_clip parameter names expected): {first_line(e, 300)}") from e
    return model


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record):
        return "Model initialized randomly" not in record.getMessage()


def stream_weights(model: nn.Module, path: Path) -> bool:
    """Copy a state dict whose names and shapes are exactly the model's into it, one tensor at a time (safetensors)
    or from a memory-mapped torch file, so the weights are never held twice (open_clip's loader reads the whole
    file before copying: 2 x 1.7 GB for ViT-L/14). False when the file is laid out otherwise."""
    target = model.state_dict()
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
            if not _same_layout(target, shapes):
                return False
            with torch.no_grad():
                for name in shapes:  # the file is mapped while open: re-opened per tensor so pages do not pile up
                    with safe_open(str(path), framework="pt") as f:
                        target[name].copy_(f.get_tensor(name).reshape(target[name].shape))
        except Exception:  # unreadable: open_clip's loader reports it
            return False
        return True
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format torch file (no mmap), or unreadable: open_clip's loader decides
        return False
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()) or \
            not _same_layout(target, {k: v.shape for k, v in state.items()}):
        return False
    with torch.no_grad():
        for name in list(state):
            target[name].copy_(state.pop(name).reshape(target[name].shape))
    return True


def _same_layout(target: dict, shapes: dict) -> bool:
    """The same names and shapes (a one-element tensor such as logit_scale may be stored as () or (1,))."""
    def fits(shape, t):
        return tuple(shape) == tuple(t.shape) or (t.numel() == 1 and math.prod(shape) == 1)
    return shapes.keys() == target.keys() and all(fits(shapes[k], t) for k, t in target.items())


class Backbone(nn.Module):
    """Frozen CLIP with the dual-path encoder. `encode_image` -> Encoding; `encode_text` for prompts."""

    def __init__(self, clip_model: nn.Module, config: MRADConfig = DEFAULT):
        super().__init__()
        self.clip = clip_model.eval().requires_grad_(False)
        self.config = config
        visual = clip_model.visual
        self.patch = visual.conv1.kernel_size[0]
        self.grid = config.image_size // self.patch
        self.n_heads = visual.transformer.resblocks[0].attn.num_heads
        self.weights_path = None  # the file the weights came from (set by `load`; keys the engines' caches)
        self._image_dim, self._patch_dim = visual.proj.shape[1], visual.conv1.out_channels
        # resized once here, not per call
        self.register_buffer("pos_embed", resize_pos_embed(visual.positional_embedding.detach(), self.grid),
                             persistent=False)

    @classmethod
    def load(cls, weights=None, config: MRADConfig = DEFAULT):
        backbone = cls(load_clip(weights, config), config)
        backbone.weights_path = None if weights is None else str(weights)
        return backbone

    @property
    def image_dim(self):
        return self._image_dim

    @property
    def patch_dim(self):
        return self._patch_dim

    @property
    def has_vision(self) -> bool:
        """False once `release_vision` handed the image tower to another engine."""
        return self.clip.visual is not None

    def release_vision(self):
        """Free the PyTorch vision weights (an engine holds its own copy); the text tower stays."""
        self.clip.visual = None
        self.pos_embed = torch.empty(0)

    @staticmethod
    def _mlp(blk, x, mlp_dtype=None):
        """x + mlp(ln_2(x)); with mlp_dtype, the MLP alone runs under autocast (the residual stays fp32)."""
        if mlp_dtype is None:
            return x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        h = blk.ln_2(x)
        with torch.autocast(x.device.type, dtype=mlp_dtype):
            return x + blk.ls_2(blk.mlp(h)).to(x.dtype)

    def _dual_block(self, blk, o, s, cls_only=False, mlp_dtype=None):
        attn = blk.attn
        q, k, v = F.linear(blk.ln_1(o), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (_heads(t, self.n_heads) for t in (q, k, v))
        s = s + attn.out_proj(_merge(F.scaled_dot_product_attention(v, v, v)))
        if cls_only:  # the last block's original stream only feeds the class token
            o = o[:, :1]
            q = q[:, :, :1]
        o = o + blk.ls_1(attn.out_proj(_merge(F.scaled_dot_product_attention(q, k, v))))
        return self._mlp(blk, o, mlp_dtype), s

    def encode_image(self, pixels: torch.Tensor, mlp_dtype=None) -> Encoding:
        """(B, 3, S, S) normalised pixels, S = config.image_size -> Encoding.
        mlp_dtype (e.g. torch.bfloat16) runs only the MLPs in that precision: most of the compute, and the part
        where reduced precision costs the least accuracy (see bench/bench.py)."""
        if not self.has_vision:
            raise MRADError("this backbone's PyTorch vision weights were released to another engine "
                            "(e.g. OpenVINO); encode through the Detector, or load the backbone again")
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2] != pixels.shape[3] or \
                pixels.shape[2] // self.patch != self.grid:
            raise ValueError(f"expected pixels of shape (B, 3, {self.config.image_size}, "
                             f"{self.config.image_size}), got {tuple(pixels.shape)}")
        image_feature, post, proj = self.encode_tokens(pixels, mlp_dtype)
        return encoding_from_tokens(image_feature, post, proj, self.config.avg_kernels)

    def encode_tokens(self, pixels: torch.Tensor, mlp_dtype=None):
        """(B, 3, S, S) pixels -> image feature (B, E), patch tokens (B, N, W), projected tokens (B, N, E): the
        traceable core of `encode_image` (no checks, no Python-side shape logic; engines convert this)."""
        return self.encode_outputs(*self.encode_blocks(pixels, 1, mlp_dtype=mlp_dtype))

    def encode_blocks(self, start_state, start: int, stop: int | None = None, mlp_dtype=None):
        """Blocks start..stop (1-based, inclusive; stop=None: the last) -> the streams (o, s) after block stop.
        start=1 takes (B, 3, S, S) pixels (the patch embedding, then block 1, the ordinary one); a later start takes
        the streams (o, s) after block start-1. Splitting here lets parts of the encoder run in other precisions
        (bench/mixed_recipes.py); encode_tokens runs them all."""
        visual = self.clip.visual
        blocks = visual.transformer.resblocks
        stop = len(blocks) if stop is None else stop
        if start == 1:
            pixels = start_state
            x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
            x = x.flatten(2).transpose(1, 2)  # (B, N, W)
            cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)
            x = visual.ln_pre(visual.patch_dropout(x))
            first = blocks[0]  # the ordinary block, through open_clip's own attention
            o = s = self._mlp(first, x + first.ls_1(first.attention(first.ln_1(x))), mlp_dtype)
            start = 2
        else:
            o, s = start_state
        for i in range(start, stop + 1):
            o, s = self._dual_block(blocks[i - 1], o, s, cls_only=i == len(blocks), mlp_dtype=mlp_dtype)
        return o, s

    def encode_outputs(self, o, s):
        """The streams after the last block -> image feature o[CLS] @ proj, ln_post(s)[1:], (ln_post(s) @ proj)[1:]."""
        visual = self.clip.visual
        image_feature = o[:, 0] @ visual.proj
        post = visual.ln_post(s)[:, 1:]
        proj = post @ visual.proj
        return image_feature.float(), post.float(), proj.float()

    def encode_text(self, prompts: torch.Tensor, eot: torch.Tensor, compound=()) -> torch.Tensor:
        """Text features of prompt *embeddings* with deep compound prompts.

        prompts (P, T, D) token embeddings, eot (P,) index of each EOT token, compound: tensors (L, D)
        inserted after SOS before text layers 2, 3, … (rounded through fp16, as the reference does).
        Returns (P, E), L2-normalised."""
        clip = self.clip
        # the attention is causal, so nothing after the last EOT token reaches an EOT feature: the tokens after it
        # (most of the 77) are not computed (the same function, about 4x less text compute for MRAD's prompts)
        n = max(int(eot.max()) + 1, 1 + max((c.shape[0] for c in compound), default=0))
        x = prompts[:, :n] + clip.positional_embedding[:n].to(prompts.dtype)
        mask = None if clip.attn_mask is None else clip.attn_mask[:n, :n]
        blocks = clip.transformer.resblocks
        if len(compound) >= len(blocks):
            raise ValueError(f"{len(compound)} compound prompts need more than {len(blocks)} text layers")
        for i, blk in enumerate(blocks):
            if 1 <= i <= len(compound):
                deep = compound[i - 1].to(torch.float16).to(x.dtype).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], deep, x[:, 1 + deep.shape[1]:]], dim=1)
            x = blk(x, attn_mask=mask)
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot] @ clip.text_projection
        return F.normalize(x.float(), dim=-1)


@contextlib.contextmanager
def exact_fp32(device):
    """fp32 as the reference computes it: on CUDA, TF32 matmuls/convolutions (which round inputs to 10 mantissa bits
    and miss the parity bars) are off for the duration and restored afterwards. A no-op on the CPU."""
    if torch.device(device).type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class TorchEncoder:
    """The image encoder as the backbone's own PyTorch forward: `encode(pixels, precision) -> Encoding`, with
    precision an autocast dtype (TORCH_AUTOCAST) or "bf16-mlp" (the MLPs alone in bf16). The Detector's default
    engine; engines.py adds OpenVINO."""

    name = "torch"

    def __init__(self, backbone: Backbone, device):
        self.backbone, self.device = backbone, torch.device(device)

    @staticmethod
    def check(precision: str):
        if precision not in TORCH_AUTOCAST:
            raise MRADError(f"the PyTorch engine runs {', '.join(TORCH_AUTOCAST)}, not {precision!r}")

    def encode(self, pixels: torch.Tensor, precision: str = "fp32") -> Encoding:
        dtype = TORCH_AUTOCAST[precision]
        mlp_dtype = torch.bfloat16 if precision == "bf16-mlp" else None
        if dtype is None:
            ctx = exact_fp32(self.device) if precision == "fp32" else contextlib.nullcontext()
        else:
            ctx = torch.autocast(self.device.type, dtype=dtype)
        with ctx:
            return self.backbone.encode_image(pixels.to(self.device), mlp_dtype=mlp_dtype)

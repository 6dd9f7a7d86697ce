"""MRAD's trainable heads and the retrieval they feed.

    ImageProj   image_proj.mlp1 / mlp2   (E -> E)   query / key projections for image retrieval (FT)
    PatchProj   patch_proj.fc.0 / fc.1   (W -> E)   query / key projections for patch retrieval (FT)
    PromptProj  prompt_proj.mlp1 / mlp2  (E -> E)   regional prior -> bias of the normal / anomalous prompt
    PromptLearner                                   learnable context, deep compound prompts, fixed token
                                                    embeddings (SOS, suffix) and token ids, as in the checkpoint
Files: the official checkpoint (`{"prompt_learner", "prompt_proj", "image_proj", "patch_proj"}`, read with
torch.load(weights_only=True)) or our safetensors layout (`group.param` keys + string metadata).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import MRADError, first_line

GROUPS = ("image_proj", "patch_proj", "prompt_proj", "prompt_learner")
FT_GROUPS = ("image_proj", "patch_proj")
HEADS_FORMAT = "mrad-heads/1"


class HeadsError(MRADError):
    """A heads file that is missing, unreadable or of the wrong layout."""


def retrieve(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, temperature: float = 1.0):
    """Memory retrieval: softmax(Q Kᵀ / τ) V. query (..., D), keys (M, D), values (M, 2) -> (..., 2)."""
    return torch.softmax(query @ keys.T / temperature, dim=-1) @ values


class ImageProj(nn.Module):
    def __init__(self, dim=768):
        super().__init__()
        self.mlp1, self.mlp2 = nn.Linear(dim, dim), nn.Linear(dim, dim)


class PatchProj(nn.Module):
    def __init__(self, in_dim=1024, dim=768):
        super().__init__()
        self.fc = nn.ModuleList([nn.Linear(in_dim, dim), nn.Linear(in_dim, dim)])


class PromptProj(ImageProj):
    pass


class PromptLearner(nn.Module):
    """Prompts "X … X object." (normal, `_pos`) and "X … X damaged object." (anomalous, `_neg`)."""

    def __init__(self, n_ctx=12, dim=768, n_suffix=64, n_compound=8, compound_len=4, context=77):
        super().__init__()
        self.ctx_pos = nn.Parameter(torch.zeros(1, 1, n_ctx, dim))
        self.ctx_neg = nn.Parameter(torch.zeros(1, 1, n_ctx, dim))
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.zeros(compound_len, dim)) for _ in range(n_compound)])
        for side in ("pos", "neg"):
            self.register_buffer(f"token_prefix_{side}", torch.zeros(1, 1, 1, dim))
            self.register_buffer(f"token_suffix_{side}", torch.zeros(1, 1, n_suffix, dim))
            self.register_buffer(f"tokenized_prompts_{side}", torch.zeros(1, 1, context, dtype=torch.int32))

    def prompts(self, bias_normal: torch.Tensor, bias_anomalous: torch.Tensor):
        """Biases (B, D) -> prompt embeddings (2B, T, D) ordered [normal₀, anomalous₀, normal₁, …] and EOT indices."""
        b = bias_normal.shape[0]
        out = []
        for side, bias in (("pos", bias_normal), ("neg", bias_anomalous)):
            ctx = getattr(self, f"ctx_{side}")[0, 0] + bias[:, None, :]  # (B, n_ctx, D)
            prefix = getattr(self, f"token_prefix_{side}")[0, 0].expand(b, -1, -1)
            suffix = getattr(self, f"token_suffix_{side}")[0, 0].expand(b, -1, -1)
            out.append(torch.cat([prefix, ctx, suffix], dim=1))
        prompts = torch.stack(out, dim=1).flatten(0, 1)
        eot = torch.stack([self.tokenized_prompts_pos[0, 0].argmax(), self.tokenized_prompts_neg[0, 0].argmax()])
        return prompts, eot.repeat(b).long()


def _shapes_from(state):
    """Constructor arguments read off a (flat) state dict, so any width loads."""
    kw = {}
    if "image_proj.mlp1.weight" in state:
        kw["image"] = dict(dim=state["image_proj.mlp1.weight"].shape[0])
    if "patch_proj.fc.0.weight" in state:
        out_dim, in_dim = state["patch_proj.fc.0.weight"].shape
        kw["patch"] = dict(in_dim=in_dim, dim=out_dim)
    if "prompt_learner.ctx_pos" in state:
        n_compound = sum(1 for k in state if k.startswith("prompt_learner.compound_prompts_text."))
        comp = state.get("prompt_learner.compound_prompts_text.0")
        kw["prompt"] = dict(n_ctx=state["prompt_learner.ctx_pos"].shape[2],
                            dim=state["prompt_learner.ctx_pos"].shape[3],
                            n_suffix=state["prompt_learner.token_suffix_pos"].shape[2],
                            n_compound=n_compound, compound_len=comp.shape[0] if comp is not None else 4,
                            context=state["prompt_learner.tokenized_prompts_pos"].shape[2])
    return kw


class Heads(nn.Module):
    """The FT heads (image_proj, patch_proj) and, when present, the CLIP heads (prompt_proj, prompt_learner)."""

    def __init__(self, image=None, patch=None, prompt=None, meta=None):
        super().__init__()
        self.image_proj = ImageProj(**(image or {}))
        self.patch_proj = PatchProj(**(patch or {}))
        self.prompt_proj = PromptProj(self.image_proj.mlp1.in_features) if prompt is not None else None
        self.prompt_learner = PromptLearner(**prompt) if prompt is not None else None
        self.meta = dict(meta or {})

    @property
    def has_clip(self):
        return self.prompt_learner is not None

    @classmethod
    def from_state_dict(cls, state: dict, meta=None):
        """Flat `group.param` state dict (official extras like compound_prompt_projections are ignored)."""
        missing = [g for g in FT_GROUPS if not any(k.startswith(g + ".") for k in state)]
        if missing:
            raise HeadsError(f"heads lack {', '.join(missing)} (groups found: "
                             f"{sorted({k.split('.')[0] for k in state}) or 'none'})")
        kw = _shapes_from(state)
        heads = cls(kw["image"], kw["patch"], kw.get("prompt"), meta)
        own = heads.state_dict()
        try:
            heads.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        except RuntimeError as e:
            raise HeadsError(f"heads do not match the MRAD layout: {str(e).splitlines()[-1].strip()[:300]}") from e
        return heads

    @classmethod
    def load(cls, path):
        path = Path(path)
        if not path.is_file():
            raise HeadsError(f"heads {path}: no such file")
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open
                with safe_open(str(path), framework="pt") as f:
                    state = {k: f.get_tensor(k) for k in f.keys()}
                    meta = f.metadata() or {}
                if meta.get("format") != HEADS_FORMAT:
                    raise HeadsError(f"heads {path}: not an MRAD heads file (metadata format "
                                     f"{meta.get('format')!r}, expected {HEADS_FORMAT!r})")
                meta = {k: (json.loads(v) if k == "provenance" else v) for k, v in meta.items()}
            else:
                raw = torch.load(path, map_location="cpu", weights_only=True)
                state, meta = flatten_official(raw, path), {"format": "official", "file": path.name}
            return cls.from_state_dict(state, meta)
        except HeadsError as e:
            raise HeadsError(f"heads {path}: {e}" if str(path) not in str(e) else str(e)) from None
        except Exception as e:
            raise HeadsError(f"heads {path}: cannot be read ({first_line(e)})") from e

    def save(self, path, **meta):
        from safetensors.torch import save_file
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        info = {**{k: str(v) for k, v in self.meta.items() if k not in ("format", "provenance")},
                **{k: str(v) for k, v in meta.items()}, "format": HEADS_FORMAT,
                "variants": "ft,clip" if self.has_clip else "ft"}
        save_file(state, str(path), metadata=info)

    def official_state(self):
        """Our weights in the official nested layout (for the reference code)."""
        out = {}
        for k, v in self.state_dict().items():
            group, name = k.split(".", 1)
            out.setdefault(group, {})[name] = v.detach().cpu()
        return out


def flatten_official(raw, path=""):
    if not isinstance(raw, dict) or not any(g in raw for g in GROUPS):
        keys = list(raw)[:6] if isinstance(raw, dict) else type(raw).__name__
        raise HeadsError(f"not an MRAD checkpoint (expected groups {', '.join(GROUPS)}; found {keys})")
    state = {}
    for group in GROUPS:
        for k, v in (raw.get(group) or {}).items():
            if not isinstance(v, torch.Tensor):
                raise HeadsError(f"{group}.{k} is a {type(v).__name__}, not a tensor")
            state[f"{group}.{k}"] = v.float() if v.is_floating_point() else v
    return state


def regional_prior(tokens: torch.Tensor, anomalous: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, E) normalised projected tokens, anomalous (B, N) bool -> prior (B, 2, E) = [normal, anomalous]
    region means (zero for an empty region)."""
    masks = torch.stack([~anomalous, anomalous], dim=1).to(tokens.dtype)  # (B, 2, N)
    return (masks @ tokens) / masks.sum(-1, keepdim=True).clamp(min=1)


def clip_patch_probs(heads: Heads, backbone, tokens, prior, text_temperature=0.07):
    """MRAD-CLIP: prior (B, 2, E) -> dynamic prompts -> text features (B, 2, E) -> per-patch probs (B, N, 2).
    Differentiable (training uses it too). The compound prompts are expanded per prompt *before* the text encoder's
    fp16 rounding, as the reference does: the same forward values, and each prompt's gradient is rounded to fp16
    before the gradients are summed, which the training parity test needs."""
    bias_n = heads.prompt_proj.mlp1(prior[:, 0])
    bias_a = heads.prompt_proj.mlp2(prior[:, 1])
    prompts, eot = heads.prompt_learner.prompts(bias_n, bias_a)
    compound = [c.expand(prompts.shape[0], -1, -1) for c in heads.prompt_learner.compound_prompts_text]
    text = backbone.encode_text(prompts, eot, compound).view(prior.shape[0], 2, -1)
    probs = torch.softmax(tokens @ text.transpose(1, 2) / text_temperature, dim=-1)
    return probs, text

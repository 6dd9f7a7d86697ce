"""The dual-path encoder, checked against a plain re-derivation of its formulas on the tiny model."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mrad_core.backbone import Backbone, WeightsError, neighbour_average, resize_pos_embed


def test_resize_pos_embed_keeps_class_and_interpolates():
    pos = torch.randn(1 + 4, 8)
    out = resize_pos_embed(pos, 3)
    assert out.shape == (1 + 9, 8)
    assert torch.equal(out[0], pos[0])
    const = torch.cat([torch.zeros(1, 8), torch.ones(4, 8)])
    assert torch.allclose(resize_pos_embed(const, 5)[1:], torch.ones(25, 8))
    assert torch.equal(resize_pos_embed(pos, 2), pos)


def test_neighbour_average_counts_zero_padding():
    tokens = torch.ones(1, 25, 2)  # 5x5 grid of ones
    out = neighbour_average(tokens).view(5, 5, 2)
    assert torch.allclose(out[2, 2], torch.ones(2))  # centre: every window full
    corner = (1 + 4 / 9 + 9 / 25) / 3  # 1x1, 3x3 and 5x5 windows at a corner, padding counted as zeros
    assert torch.allclose(out[0, 0], torch.full((2,), corner))


def _reference_encode(clip, pixels, grid):
    """Straight from the parity README, written independently of Backbone (explicit softmax, no SDPA)."""
    v = clip.visual
    x = v.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + resize_pos_embed(v.positional_embedding, grid)
    x = v.ln_pre(x)
    blocks = v.transformer.resblocks
    o = s = blocks[0](x)
    for blk in blocks[1:]:
        a = blk.attn
        q, k, val = F.linear(blk.ln_1(o), a.in_proj_weight, a.in_proj_bias).chunk(3, -1)
        h = a.num_heads
        sp = lambda t: t.view(t.shape[0], t.shape[1], h, -1).transpose(1, 2)  # noqa: E731
        q, k, val = sp(q), sp(k), sp(val)
        d = q.shape[-1]
        att = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, -1) @ val
        vv = torch.softmax(val @ val.transpose(-1, -2) / d ** 0.5, -1) @ val
        merge = lambda t: t.transpose(1, 2).reshape(t.shape[0], -1, h * d)  # noqa: E731
        o = o + a.out_proj(merge(att))
        o = o + blk.mlp(blk.ln_2(o))
        s = s + a.out_proj(merge(vv))
    post = v.ln_post(s)
    return o[:, 0] @ v.proj, post[:, 1:], (post @ v.proj)[:, 1:], o


@pytest.fixture(scope="module")
def backbone(tiny_files, tiny_config):
    return Backbone.load(tiny_files["backbone"], tiny_config)


def test_dual_path_matches_the_formulas(backbone):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 518, 518)
    with torch.no_grad():
        enc = backbone.encode_image(pixels)
        feat, tokens, proj, _ = _reference_encode(backbone.clip, pixels, backbone.grid)
    assert enc.image_feature.shape == (2, 32) and enc.patch_tokens.shape == (2, 37 * 37, 64)
    assert torch.allclose(enc.image_feature, feat, atol=1e-5)
    assert torch.allclose(enc.patch_tokens, tokens, atol=1e-5)
    assert torch.allclose(enc.proj_tokens, proj, atol=1e-5)
    assert torch.allclose(enc.patch_avg, neighbour_average(tokens), atol=1e-5)


def test_encoder_split_into_parts_computes_the_same(backbone):
    """encode_blocks/encode_outputs in parts (as bench/mixed_recipes.py runs them) = the whole encoder, exactly."""
    torch.manual_seed(2)
    pixels = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        whole = backbone.encode_tokens(pixels)
        o, s = backbone.encode_blocks(pixels, 1, 2)
        parts = backbone.encode_outputs(*backbone.encode_blocks((o, s), 3))
        shorter = backbone.encode_outputs(*backbone.encode_blocks(pixels, 1, 2))
    for a, b in zip(whole, parts):
        assert torch.equal(a, b)
    assert (whole[1] - shorter[1]).abs().max() > 1e-2  # stopping early is a different encoder, on any CPU


def test_original_stream_is_the_ordinary_clip_forward(backbone):
    """o is CLIP's usual residual stream: running open_clip's own transformer gives the same class token."""
    pixels = torch.randn(1, 3, 518, 518)
    v = backbone.clip.visual
    with torch.no_grad():
        x = v.conv1(pixels).flatten(2).transpose(1, 2)
        x = v.ln_pre(torch.cat([v.class_embedding.expand(1, 1, -1), x], 1) + backbone.pos_embed)
        ordinary = v.transformer(x)[:, 0] @ v.proj
        assert torch.allclose(backbone.encode_image(pixels).image_feature, ordinary, atol=1e-5)


def test_position_embedding_is_resized_once(backbone):
    assert backbone.pos_embed.shape == (1 + 37 * 37, 64)
    assert backbone.grid == 37


def test_wrong_input_shape_is_a_clear_error(backbone):
    with pytest.raises(ValueError, match=r"\(B, 3, 518, 518\)"):
        backbone.encode_image(torch.zeros(1, 3, 224, 224))


def _same_model(a, b):
    sa, sb = a.state_dict(keep_vars=True), b.state_dict(keep_vars=True)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for (na, x), (nb, y) in zip(a.named_buffers(), b.named_buffers()):  # also the non-persistent ones (attn_mask)
        assert na == nb and torch.equal(x, y), na


@pytest.mark.parametrize("layout", ["safetensors", "logit_scale (1,)", "torch zip", "module. prefix"])
def test_weights_load_as_open_clip_loads_them(layout, tiny_files, tiny_config, tmp_path, monkeypatch):
    """Files with the model's own names are copied in tensor by tensor (never two copies of the weights in memory);
    other layouts go through open_clip's converting loader. Either way the model equals open_clip's own load."""
    import open_clip
    from safetensors.torch import load_file, save_file

    from mrad_core import backbone as B
    open_clip.add_model_config(tiny_config.model_name)
    name = Path(tiny_config.model_name).stem
    reference = open_clip.create_model(name, pretrained=str(tiny_files["backbone"]))
    state = load_file(str(tiny_files["backbone"]))
    if layout == "safetensors":
        path = tiny_files["backbone"]
    elif layout == "logit_scale (1,)":  # as the OpenAI-named files store it
        path = tmp_path / "w.safetensors"
        save_file({**state, "logit_scale": state["logit_scale"].reshape(1)}, str(path))
    elif layout == "torch zip":
        path = tmp_path / "w.pt"
        torch.save(state, path)
    else:
        path = tmp_path / "w.pt"
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    streamed = layout != "module. prefix"
    if streamed:  # the streaming path must not fall back on open_clip's whole-file loader
        monkeypatch.setattr(open_clip, "load_checkpoint", lambda *a, **k: pytest.fail("whole-file loader used"))
    assert B.stream_weights(open_clip.create_model(name, pretrained=None), Path(path)) is streamed
    _same_model(Backbone.load(path, tiny_config).clip, reference)


def test_foreign_weights_are_refused(tmp_path, tiny_config):
    from safetensors.torch import save_file
    save_file({"something.else": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="cannot be loaded"):
        Backbone.load(tmp_path / "bad.safetensors", tiny_config)
    with pytest.raises(WeightsError, match="no such file"):
        Backbone.load(tmp_path / "missing.safetensors", tiny_config)


def test_text_encoder_skips_only_what_cannot_reach_the_eot_token(backbone):
    """Tokens after the last EOT are not computed; the features equal the full 77-token causal forward."""
    torch.manual_seed(3)
    prompts, eot = torch.randn(2, 77, 32), torch.tensor([12, 17])
    compound = [torch.randn(4, 32) for _ in range(3)]
    clip = backbone.clip
    with torch.no_grad():
        x = prompts + clip.positional_embedding
        for i, blk in enumerate(clip.transformer.resblocks):  # the whole sequence, as CLIP runs it
            if 1 <= i <= len(compound):
                x = torch.cat([x[:, :1], compound[i - 1].half().float().expand(2, -1, -1), x[:, 5:]], dim=1)
            x = blk(x, attn_mask=clip.attn_mask)
        full = F.normalize(clip.ln_final(x)[torch.arange(2), eot] @ clip.text_projection, dim=-1)
        ours = backbone.encode_text(prompts, eot, compound)
        tail = prompts.clone()
        tail[:, 18:] = torch.randn(2, 59, 32)
        assert torch.equal(backbone.encode_text(tail, eot, compound), ours)
    assert torch.allclose(ours, full, atol=1e-6)


def test_text_encoder_inserts_compound_prompts_rounded_to_fp16(backbone):
    torch.manual_seed(0)
    prompts = torch.randn(2, 77, 32)
    eot = torch.tensor([20, 30])
    compound = [torch.randn(4, 32) * 3 for _ in range(3)]
    with torch.no_grad():
        a = backbone.encode_text(prompts, eot, compound)
        b = backbone.encode_text(prompts, eot, [c.half().float() for c in compound])
        c = backbone.encode_text(prompts, eot, [c + 1e-3 for c in compound])
    assert a.shape == (2, 32) and torch.allclose(a.norm(dim=-1), torch.ones(2))
    assert torch.equal(a, b)  # the fp16 rounding is part of the computation
    assert not torch.allclose(a, c)  # and the compound prompts really are used
    with pytest.raises(ValueError, match="text layers"):
        backbone.encode_text(prompts, eot, compound * 2)

#!/usr/bin/env python
"""Mixed OpenVINO precisions for the encoder: blocks 1..k-1 in bf16, blocks k..24 and the outputs in f32.

    python bench/mixed_recipes.py [--f32-from 25 24 19 13] [--repeats 2]

The CPU plugin ignores per-node f32 marks inside a bf16 model, so a mixed recipe is built by splitting the encoder
(Backbone.encode_blocks / encode_outputs) into two converted parts: pixels -> the streams (o, s) after block k-1,
compiled with INFERENCE_PRECISION_HINT=bf16; the streams -> the three outputs through blocks k..24, compiled with f32.
k = 25 runs only ln_post and the projections in f32. For each k: encoder time per image (median over the three
parity queries after a warm-up) and the accuracy of all three variants' maps against PyTorch fp32 (worst over
3 queries x 3 variants; the bounds of `--precision auto`: 1e-2 max abs, correlation >= 0.999). Conversions are not
cached (about 30-60 s per recipe). Prints a table; writes bench/results/mixed_recipes.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench import BOUND_CORR, BOUND_MAX_ABS, QUERIES, VARIANTS, load  # noqa: E402
from mrad_core.backbone import encoding_from_tokens  # noqa: E402


class Part(nn.Module):
    """Blocks start..stop of the encoder (start=1 takes pixels); with outputs=True it ends in the three outputs."""

    def __init__(self, backbone, start, stop, outputs):
        super().__init__()
        self.backbone, self.start, self.stop, self.outputs = backbone, start, stop, outputs

    def forward(self, *state):
        if self.start > self.stop:  # no blocks: only the outputs
            return self.backbone.encode_outputs(*state)
        o, s = self.backbone.encode_blocks(state[0] if self.start == 1 else state, self.start, self.stop)
        return self.backbone.encode_outputs(o, s) if self.outputs else (o, s)


def compile_recipe(ov, core, backbone, k, example):
    """Two compiled parts for split k: (bf16 head part, f32 tail part)."""
    layers = len(backbone.clip.visual.transformer.resblocks)
    head = Part(backbone, 1, k - 1, outputs=False).eval()
    tail = Part(backbone, k, layers, outputs=True).eval()
    with torch.no_grad():
        streams = head(example)
        models = (ov.convert_model(head, example_input=(example,)), ov.convert_model(tail, example_input=streams))
    hints = ("bf16", "f32")
    return [core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": h, "PERFORMANCE_HINT": "LATENCY"})
            for m, h in zip(models, hints)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("MRAD_SHARED", ROOT.parent / "shared")))
    ap.add_argument("--f32-from", type=int, nargs="+", default=[25, 24, 19, 13],
                    help="first block run in f32 (25: only the outputs)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mixed_recipes.json")
    args = ap.parse_args()
    import openvino as ov

    parity = args.shared / "parity"
    det = load(parity, args.shared, "cpu", "torch")
    pixels = {q: det.pixels([parity / "images" / f"{q}.png"]) for q in QUERIES}
    with torch.inference_mode():
        ref = {q: {v: r.map[0] for v, r in det.predict([parity / "images" / f"{q}.png"]).items()} for q in QUERIES}
    core = ov.Core()
    rows = []
    for k in args.f32_from:
        t = time.perf_counter()
        head, tail = compile_recipe(ov, core, det.backbone, k, pixels[QUERIES[0]])
        prepare_s = time.perf_counter() - t
        rh, rt = head.create_infer_request(), tail.create_infer_request()

        def encode(x, rh=rh, rt=rt):  # this recipe's requests (bound now: the loop deletes the names below)
            streams = rh.infer({0: x.numpy()})
            out = rt.infer({i: streams[i] for i in range(len(streams))})
            return encoding_from_tokens(*(torch.from_numpy(out[i].copy()) for i in range(3)), det.config.avg_kernels)

        encode(pixels[QUERIES[0]])  # warm-up
        times, worst_abs, worst_corr = [], 0.0, 1.0
        for _ in range(args.repeats):
            for q in QUERIES:
                t = time.perf_counter()
                enc = encode(pixels[q])
                times.append(time.perf_counter() - t)
                with torch.inference_mode():
                    for v in VARIANTS:
                        a, b = ref[q][v].ravel(), det.score(enc, v).map[0].ravel()
                        worst_abs = max(worst_abs, float(np.abs(a - b).max()))
                        worst_corr = min(worst_corr, float(np.corrcoef(a, b)[0, 1]))
        rows.append({"f32_from_block": k, "encode_s": statistics.median(times), "prepare_s": prepare_s,
                     "max_abs_map_diff": worst_abs, "min_map_correlation": worst_corr,
                     "within_bounds": worst_abs <= BOUND_MAX_ABS and worst_corr >= BOUND_CORR})
        print(json.dumps(rows[-1]), flush=True)
        del head, tail, rh, rt, encode
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"\n{'f32 from block':>14s} {'encode s':>9s} {'max|dmap|':>10s} {'min corr':>9s} {'bounds':>6s}")
    for r in rows:
        print(f"{r['f32_from_block']:>14d} {r['encode_s']:9.2f} {r['max_abs_map_diff']:10.1e} "
              f"{r['min_map_correlation']:9.5f} {'ok' if r['within_bounds'] else 'OUT':>6s}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

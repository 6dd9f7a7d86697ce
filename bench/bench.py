#!/usr/bin/env python
"""MRAD benchmark on the full-size parity fixture: prints a table of ratios and writes JSON.

    python bench/bench.py [--device cpu|cuda] [--repeats 3] [--batch 4] [--out bench/results/bench.json]

Measured inside one run (the machines are noisy, so compare ratios, not seconds across runs):
  1. all three variants on one image: one encode per variant (naive, like three reference runs) vs one shared encode;
     also against the reference's own timings on this CPU (../shared/parity/timing.json)
  2. fp32 vs bf16 / bf16-mlp (only the MLPs in bf16) / fp16: encode time, and the accuracy cost on the three parity
     queries (max abs map difference and map correlation against fp32; the bound for a default is 1e-2 and 0.999)
  3. batch 1 vs batch N encode throughput
  4. slider re-render: three 518x518 overlays from cached maps (no model call)
  5. bank building: images/s with one encode per image vs the reference (two encodes per image)
  6. peak memory (RSS, and CUDA when used)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mrad_core import BankBuilder, load_mask  # noqa: E402
from mrad_core.loading import load_detector  # noqa: E402

VARIANTS = ("tf", "ft", "clip")
PRECISIONS = ("fp32", "bf16", "bf16-mlp", "fp16")  # fp32 first: the others are compared with it
QUERIES = ("query_good", "query_bad", "query_bad_small")
BOUND_MAX_ABS, BOUND_CORR = 1e-2, 0.999


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def fixture_backbone(shared: Path) -> Path:
    cache = Path(os.environ.get("MRAD_FIXTURE_CACHE", Path.home() / ".cache" / "mrad" / "parity-fixture"))
    path = cache / "backbone_openai_vitl14_336.safetensors"
    if not path.is_file():
        subprocess.run([sys.executable, str(shared / "parity" / "make_fixture.py"), "--out", str(cache)], check=True)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("MRAD_SHARED", ROOT.parent / "shared")))
    ap.add_argument("--device", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bench.json")
    args = ap.parse_args()
    parity = args.shared / "parity"
    det = load_detector(fixture_backbone(args.shared), parity / "heads_official.pth",
                        parity / "cache_model_fixture.pt", parity / "cache_patch_model_fixture.pt", device=args.device)
    cuda = det.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    query = [parity / "images" / "query_bad.png"]
    res = {"device": str(det.device), "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    ref = json.loads((parity / "timing.json").read_text())
    det.encode(query)  # warm-up

    # 1. three variants: naive (an encode per variant) vs shared (one encode)
    def naive():
        for v in VARIANTS:
            det.score(det.encode(query), v)
        sync()

    def shared():
        enc = det.encode(query)
        for v in VARIANTS:
            det.score(enc, v)
        sync()

    rows = {}
    for precision in PRECISIONS:
        det.precision = precision
        det.encode(query)
        t_shared, _ = timed(shared, args.repeats)
        rows[precision] = {"shared_s": t_shared}
    det.precision = "fp32"
    t_naive, _ = timed(naive, args.repeats)
    ref_three = 3 * (statistics.median(ref["encode_s"])) + sum(
        statistics.median(ref[f"{h}_head_s"]) for h in VARIANTS)
    res["three_variants"] = {
        "naive_fp32_s": t_naive, "reference_three_runs_s": ref_three,
        **{f"shared_{p}_s": r["shared_s"] for p, r in rows.items()},
        "speedup_shared_vs_naive_fp32": t_naive / rows["fp32"]["shared_s"],
        **{f"speedup_{p}_vs_reference": ref_three / r["shared_s"] for p, r in rows.items()},
    }

    # 2. precision: accuracy against fp32 on every parity query
    acc = {}
    for precision in PRECISIONS:
        det.precision = precision
        acc[precision] = {q: det.predict([parity / "images" / f"{q}.png"]) for q in QUERIES}
    det.precision = "fp32"
    res["precision"] = {}
    for precision in PRECISIONS[1:]:
        worst_abs, worst_corr = 0.0, 1.0
        for q in QUERIES:
            for v in VARIANTS:
                a, b = acc["fp32"][q][v].map.ravel(), acc[precision][q][v].map.ravel()
                worst_abs = max(worst_abs, float(np.abs(a - b).max()))
                worst_corr = min(worst_corr, float(np.corrcoef(a, b)[0, 1]))
        res["precision"][precision] = {
            "max_abs_map_diff": worst_abs, "min_map_correlation": worst_corr,
            "within_bounds": worst_abs <= BOUND_MAX_ABS and worst_corr >= BOUND_CORR,
            "encode_speedup_vs_fp32": rows["fp32"]["shared_s"] / rows[precision]["shared_s"]}

    # 3. batch 1 vs batch N
    images = [parity / "images" / f"bank_{k}_{i}.png" for k in ("good", "bad") for i in range(3)][: args.batch]
    pixels = det.pixels(images)
    det.batch_size = 1
    t1, _ = timed(lambda: (det.encode(pixels), sync()), 1)
    det.batch_size = len(images)
    tn, _ = timed(lambda: (det.encode(pixels), sync()), 1)
    res["batch"] = {"n": len(images), "batch1_images_per_s": len(images) / t1,
                    f"batch{len(images)}_images_per_s": len(images) / tn, "speedup": t1 / tn}

    # 4. slider re-render from cached maps
    try:
        from mrad_core import viz
        base = np.asarray(det.pixels(query)[0].permute(1, 2, 0).mul(60).add(128).clamp(0, 255).byte())
        maps = [acc["fp32"]["query_bad"][v].map[0] for v in VARIANTS]
        t_render, _ = timed(lambda: [viz.render(base, m) for m in maps], 10)
        res["rerender_three_views_ms"] = t_render * 1000
    except (ImportError, AttributeError, TypeError) as e:
        res["rerender_three_views_ms"] = f"not measured: {e}"

    # 5. bank building
    names = [f"bank_{k}_{i}" for k in ("good", "bad") for i in range(3)]
    det.batch_size = 8

    def build():
        enc = det.encode([parity / "images" / f"{n}.png" for n in names])
        b = BankBuilder(source="bench")
        b.add(enc, [int("bad" in n) for n in names], torch.stack([load_mask(parity / "masks" / f"{n}.png")
                                                                  for n in names]), names)
        return b.build()
    t_bank, _ = timed(build, 1)
    ref_rate = 6 / ref["bank_build_s_for_6_images_2x_encode"]
    res["bank_building"] = {"images_per_s": 6 / t_bank, "reference_images_per_s": ref_rate,
                            "speedup_vs_reference": (6 / t_bank) / ref_rate}

    # 6. memory
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    report(res)
    print(f"\nwrote {args.out}")


def report(r):
    t = r["three_variants"]
    print(f"MRAD benchmark on {r['device']} ({r['cpu']}, {r['threads']} threads, torch {r['torch']})\n")
    print(f"{'measure':58s} {'value':>12s}")
    line = lambda k, v: print(f"{k:58s} {v:>12s}")  # noqa: E731
    line("three variants, naive (3 encodes, fp32) s", f"{t['naive_fp32_s']:.2f}")
    for p in PRECISIONS:
        line(f"three variants, shared encode ({p}) s", f"{t[f'shared_{p}_s']:.2f}")
    line("reference, three runs (timing.json) s", f"{t['reference_three_runs_s']:.2f}")
    line("speed-up shared vs naive (fp32)", f"{t['speedup_shared_vs_naive_fp32']:.1f}x")
    for p in PRECISIONS:
        line(f"speed-up shared ({p}) vs three reference runs", f"{t[f'speedup_{p}_vs_reference']:.1f}x")
    for p, a in r["precision"].items():
        ok = "ok" if a["within_bounds"] else "OUT"
        line(f"{p}: max |map - fp32| / min corr / within bounds",
             f"{a['max_abs_map_diff']:.1e} {a['min_map_correlation']:.5f} {ok}")
    b = r["batch"]
    batched = b["batch%d_images_per_s" % b["n"]]
    line(f"encode throughput batch 1 vs batch {b['n']} (images/s)", f"{b['batch1_images_per_s']:.2f}/{batched:.2f}")
    rr = r["rerender_three_views_ms"]
    line("slider re-render, three 518x518 views (ms)", f"{rr:.1f}" if isinstance(rr, float) else "n/a")
    k = r["bank_building"]
    line("bank building images/s (ours / reference)", f"{k['images_per_s']:.3f}/{k['reference_images_per_s']:.3f}")
    line("bank building speed-up vs reference", f"{k['speedup_vs_reference']:.1f}x")
    line("peak RSS (MB)", f"{r['peak_rss_mb']:.0f}")
    if "peak_cuda_mb" in r:
        line("peak CUDA memory (MB)", f"{r['peak_cuda_mb']:.0f}")


if __name__ == "__main__":
    main()

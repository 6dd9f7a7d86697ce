#!/usr/bin/env python
"""MRAD benchmark on the full-size parity fixture: prints a table of ratios and writes JSON.

    python bench/bench.py [--device cpu|cuda] [--repeats 3] [--batch 4] [--out bench/results/bench.json]
                          [--cold] [--record]

Measured inside one run (the machines are noisy, so compare ratios, not seconds across runs):
  1. engines x precisions side by side (PyTorch fp32 / bf16-mlp / bf16 (/ fp16 on CUDA), OpenVINO fp32 / bf16), each
     pair in its own process: all three variants on one image with one shared encode (marginal cost: median over
     the three parity queries after a warm-up), against the reference's three runs on this CPU
     (../shared/parity/timing.json); first start (load, and the OpenVINO conversion: --cold forces it in a fresh
     cache); peak RSS of that process; also one encode per variant (naive) with the default engine
  2. accuracy of every pair against PyTorch fp32 on the three parity queries x three variants (max abs map
     difference and map correlation; the bound for a default is 1e-2 and 0.999); --record writes these facts for
     this CPU class into mrad_core/engine_facts.json, from which `--precision auto` picks its engine and precision
  3. batch 1 vs batch N encode throughput
  4. slider re-render: three 518x518 overlays from cached maps (no model call)
  5. bank building: images/s with one encode per image vs the reference (two encodes per image)
  6. peak memory (RSS, and CUDA when used)
  7. int8 (--int8, or --int8-only for this section alone; needs NNCF): each recipe of mrad_core/quantize.py
     (transformer preset, SmoothQuant 0.5, attention kept in f32, last blocks kept in f32, weight-only) quantised
     from the fp32 IR with the six bank images as calibration, then measured by autotune.measure next to PyTorch
     fp32, OpenVINO fp32 and (native bf16 only) OpenVINO bf16 in the same process: encode s per image (median
     after the first query) and the worst map difference / correlation against PyTorch fp32 over the three
     queries x variants. Measured, never assumed: a recipe is within the bounds only if these figures say so
  8. cold start (--cold-start, alone): no IR cached, the backbone file local: the first three-variant result
     served by PyTorch while the encoder converts in the background (mrad_core/warmup.py), the time until
     OpenVINO serves, a result after the switch, and the peak RSS of serving and converting at once
  and the fp32 floor: the encoder's operation count over PyTorch's fp32 matmul rate on this device (close to its
  fp32 peak), i.e. about the fastest any exact-fp32 engine could encode here, and the speed-up over the reference
  that allows
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
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mrad_core import BankBuilder, autotune, engines, load_mask, quantize, runtime  # noqa: E402
from mrad_core.config import VARIANTS  # noqa: E402
from mrad_core.artefacts.resolve import load_detector  # noqa: E402

QUERIES = ("query_good", "query_bad", "query_bad_small")
BOUND_MAX_ABS, BOUND_CORR = 1e-2, 0.999


def combos(device: str) -> dict:
    """engine -> precisions to measure; fp32 first (the others are compared with PyTorch fp32)."""
    if device.startswith("cuda"):
        return {"torch": ("fp32", "bf16", "fp16")}
    out = {"torch": ("fp32", "bf16-mlp", "bf16")}
    if engines.openvino_available():
        out["openvino"] = ("fp32", "bf16")
    return out


def encoder_flops(image_size=518, patch=14, width=1024, layers=24, mlp=4096, embed=768) -> float:
    """Floating-point operations (a multiply-add = 2) of one image through MRAD's dual-path encoder as
    Backbone.encode_tokens computes it: block 1 ordinary; blocks 2..L both streams (the V-V one without MLP); the
    last block's original stream for the class token only; ln_post(s) @ proj."""
    g2 = (image_size // patch) ** 2
    n, w = g2 + 1, width
    conv = 2 * g2 * 3 * patch * patch * w
    qkv, attn, out, ffn = 2 * n * w * 3 * w, 4 * n * n * w, 2 * n * w * w, 4 * n * w * mlp
    ordinary = qkv + attn + out + ffn
    vv = attn + out
    last = qkv + vv + 4 * n * w + 2 * w * w + 4 * w * mlp  # the original stream: one query (CLS), its MLP
    return conv + ordinary + (layers - 2) * (ordinary + vv) + last + 2 * n * w * embed


def fp32_matmul_gflops(device="cpu", n=1370, width=1024, mlp=4096, repeats=10) -> float:
    """PyTorch's fp32 matmul rate on this device for the encoder's largest matmul shape (its MLP; median of
    `repeats`): close to the hardware's fp32 peak, so no exact-fp32 encoder runs its arithmetic faster."""
    a, b = torch.randn(n, width, device=device), torch.randn(width, mlp, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t, _ = timed(lambda: (a @ b, sync()), repeats)
    return 2 * n * width * mlp / t / 1e9


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


def load(parity: Path, shared: Path, device=None, engine=None, precision="fp32"):
    return load_detector(fixture_backbone(shared), parity / "heads_official.pth", parity / "cache_model_fixture.pt",
                         parity / "cache_patch_model_fixture.pt", device=device, engine=engine, precision=precision)


def worker(args):
    """One engine in this process: start time, then per precision the three-variant time (median over the three
    queries, after a warm-up) and every query's maps (to args.maps, .npz); JSON on stdout's last line."""
    parity = args.shared / "parity"
    t = time.perf_counter()
    det = load(parity, args.shared, args.device, args.worker, args.precisions.split(",")[0])
    res = {"engine": args.worker, "start_s": time.perf_counter() - t,
           "engine_info": getattr(det.engine, "info", {}), "precisions": {}}
    sync = torch.cuda.synchronize if det.device.type == "cuda" else (lambda: None)
    maps = {}
    for precision in args.precisions.split(","):
        det.precision = precision
        det.predict([parity / "images" / "query_bad.png"])  # warm-up (and OpenVINO's compile for this precision)
        times = []
        for _ in range(args.repeats):
            for q in QUERIES:
                t = time.perf_counter()
                out = det.predict([parity / "images" / f"{q}.png"])
                sync()
                times.append(time.perf_counter() - t)
                maps.update({f"{precision}.{q}.{v}": r.map[0] for v, r in out.items()})
        res["precisions"][precision] = {"three_variants_s": statistics.median(times)}
    np.savez(args.maps, **maps)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if det.device.type == "cuda":
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print(json.dumps(res))


def run_worker(engine, precisions, args, tmp: Path, cold: bool):
    env = dict(os.environ)
    if cold:  # a fresh cache for this engine's workers: the first of them converts
        env["MRAD_CACHE_DIR"] = str(tmp / f"cache-{engine}")
    maps = tmp / f"{engine}-{'-'.join(precisions)}.npz"
    cmd = [sys.executable, __file__, "--worker", engine, "--precisions", ",".join(precisions), "--maps",
           str(maps), "--repeats", str(args.repeats), "--shared", str(args.shared)]
    if args.device:
        cmd += ["--device", args.device]
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), dict(np.load(maps))


def accuracy(base: dict, maps: dict, precision: str) -> dict:
    worst_abs, worst_corr = 0.0, 1.0
    for q in QUERIES:
        for v in VARIANTS:
            a, b = base[f"fp32.{q}.{v}"].ravel(), maps[f"{precision}.{q}.{v}"].ravel()
            worst_abs = max(worst_abs, float(np.abs(a - b).max()))
            worst_corr = min(worst_corr, float(np.corrcoef(a, b)[0, 1]))
    return {"max_abs_map_diff": worst_abs, "min_map_correlation": worst_corr,
            "within_bounds": worst_abs <= BOUND_MAX_ABS and worst_corr >= BOUND_CORR}


def record(pairs: list, path: Path = runtime.FACTS):
    """Write this CPU class's measured pairs into the facts `--precision auto` reads."""
    facts = runtime.recorded_facts(path)
    keys = ("engine", "precision", "three_variants_s", "max_abs_map_diff", "min_map_correlation", "within_bounds")
    facts[runtime.cpu_class()] = [{k: float(f"{r[k]:.6g}") if isinstance(r[k], float) else r[k] for k in keys}
                                  for r in pairs]
    path.write_text(json.dumps(facts, indent=1) + "\n")


def int8_section(det, queries, calibration, cache_dir: Path, recipes=tuple(quantize.RECIPES),
                 measure=autotune.measure, flags=None, progress=None) -> list:
    """int8 recipes measured side by side with the exact and bf16 pairs (section 7). det: a PyTorch detector with
    banks (its vision weights kept); queries: the images measured; calibration: the images NNCF calibrates on.
    Every recipe goes through `measure` (autotune.measure): its row holds its own timing and accuracy."""
    flags = runtime.cpu_flags() if flags is None else flags
    px = {str(q): det.pixels([q]) for q in queries}
    cal = det.pixels(calibration)
    cands = [autotune.Candidate("torch", "fp32"), autotune.Candidate("openvino", "fp32")]
    if autotune.native_bf16(flags):
        cands.append(autotune.Candidate("openvino", "bf16"))
    cands += [autotune.Candidate("openvino", r) for r in recipes]
    built, info = {}, {}

    def engine_of(c):
        if c not in built:
            built.clear()  # one engine alive at a time (each holds its own copy of the weights)
            if c.engine == "torch":
                built[c] = engines.TorchEngine(det.backbone, det.device)
            elif c.precision in quantize.RECIPES:
                built[c] = quantize.Int8Engine(det.backbone, c.precision, cal, cache_dir)
            else:
                built[c] = engines.OpenVINOEngine(det.backbone, cache_dir, release=False, precision=c.precision)
            info[c.pair] = dict(getattr(built[c], "info", {}))
        return built[c]

    def encode_fn(c, q):
        return engine_of(c).encode(px[q], "int8" if c.precision in quantize.RECIPES else c.precision)

    def maps_fn(enc):
        return [det.score(enc, v).map[0] for v in det.variants]

    with torch.inference_mode():
        rows = measure(cands, [str(q) for q in queries], encode_fn, maps_fn, progress=progress,
                       stop_when_out=False)  # every query timed, in bounds or not
    built.clear()
    fp32 = next(r for r in rows if r["engine"] == "torch")["s_per_image"]
    for r in rows:
        r["recipe"] = quantize.RECIPES.get(r["precision"])
        r.update({k: v for k, v in info.get((r["engine"], r["precision"]), {}).items() if k.endswith("_s")})
        r["speedup_vs_torch_fp32"] = fp32 / r["s_per_image"] if r.get("s_per_image") else None
    return rows


def run_int8(parity: Path, shared: Path, cache_dir: Path) -> dict:
    det = load(parity, shared, "cpu", "torch")
    queries = [parity / "images" / f"{q}.png" for q in QUERIES]
    calibration = [parity / "images" / f"bank_{k}_{i}.png" for k in ("good", "bad") for i in range(3)]
    rows = int8_section(det, queries, calibration, cache_dir,
                        progress=lambda f, text: print(f"[{f:4.0%}] {text}", file=sys.stderr, flush=True))
    kept = [r["precision"] for r in rows if r["precision"] in quantize.RECIPES and r["within_bounds"]]
    return {"rows": rows, "in_bounds_recipes": kept, "cpu_class": runtime.cpu_class(),
            "versions": autotune.library_versions()}


def report_int8(res: dict):
    print(f"\nint8 recipes (NNCF) on CPU class {res['cpu_class']}, encode s per image, maps vs PyTorch fp32")
    print(autotune.rows_table(res["rows"]))
    print("in bounds: " + (", ".join(res["in_bounds_recipes"]) or "none of the int8 recipes"))


def run_cold_start(parity: Path, shared: Path, cache_dir: Path) -> dict:
    """Section 8, in this process: load (PyTorch), WarmEngine converting into an empty cache, the first predict
    (PyTorch), then wait for the switch and predict again (OpenVINO); maps compared within the fp32 tolerance."""
    from mrad_core import warmup
    t0 = time.perf_counter()
    det = load(parity, shared, "cpu", "torch")
    load_s = time.perf_counter() - t0
    det.engine = warmup.WarmEngine(det.backbone, "cpu", "fp32", cache_dir)
    query = [parity / "images" / "query_bad.png"]
    t = time.perf_counter()
    first = det.predict(query)
    first_s, first_served = time.perf_counter() - t, det.engine.served()
    first_result_s = time.perf_counter() - t0
    det.engine.wait()
    switched_s = time.perf_counter() - t0
    det.engine.join()
    t = time.perf_counter()
    after = det.predict(query)
    after_s, after_served = time.perf_counter() - t, det.engine.served()
    return {"load_s": load_s, "first_predict_s": first_s, "first_result_after_start_s": first_result_s,
            "first_served": first_served, "openvino_serving_after_start_s": switched_s,
            "background": {k: v for k, v in det.engine.info.items() if k.endswith("_s")},
            "after_switch_predict_s": after_s, "after_served": after_served, "error": det.engine.error,
            "max_abs_map_diff_before_after": max(float(np.abs(first[v].map - after[v].map).max()) for v in first),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("MRAD_SHARED", ROOT.parent / "shared")))
    ap.add_argument("--device", default=None)
    ap.add_argument("--repeats", type=int, default=1, help="passes over the three queries per pair (default 1)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bench.json")
    ap.add_argument("--cold", action="store_true", help="convert the OpenVINO encoder again, in a fresh cache")
    ap.add_argument("--record", action="store_true", help="write the facts for --precision auto (engine_facts.json)")
    ap.add_argument("--int8", action="store_true", help="also measure the int8 recipes (section 7; needs NNCF)")
    ap.add_argument("--int8-only", action="store_true", help="measure only the int8 section")
    ap.add_argument("--int8-cache", type=Path, default=None,
                    help="where the int8 section keeps its IRs (default: a temporary directory)")
    ap.add_argument("--cold-start", action="store_true",
                    help="measure only the cold start (section 8: PyTorch first, OpenVINO converting meanwhile)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--precisions", help=argparse.SUPPRESS)
    ap.add_argument("--maps", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    parity = args.shared / "parity"
    if args.cold_start:
        with tempfile.TemporaryDirectory(prefix="mrad-cold-") as tmp:
            res = run_cold_start(parity, args.shared, Path(tmp))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
        return
    if args.int8_only:
        with tempfile.TemporaryDirectory(prefix="mrad-int8-") as tmp:
            res = run_int8(parity, args.shared, args.int8_cache or Path(tmp))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
        report_int8(res)
        print(f"\nwrote {args.out}")
        return
    ref = json.loads((parity / "timing.json").read_text())
    ref_three = 3 * (statistics.median(ref["encode_s"])) + sum(
        statistics.median(ref[f"{h}_head_s"]) for h in VARIANTS)
    res = {"cpu": platform.processor() or platform.machine(), "cpu_class": runtime.cpu_class(),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "openvino": engines.require_openvino().__version__ if engines.openvino_available() else None,
           "reference_three_runs_s": ref_three}

    # 1.-2. engines x precisions, each pair in its own process (its peak RSS is what `mrad predict` with that engine
    # and precision needs; its start includes the OpenVINO compile for that precision)
    pairs, base = [], None
    with tempfile.TemporaryDirectory(prefix="mrad-bench-") as tmp:
        for engine, precision in [(e, p) for e, ps in combos(args.device or "cpu").items() for p in ps]:
            out, maps = run_worker(engine, [precision], args, Path(tmp), args.cold and engine == "openvino")
            base = maps if base is None else base  # the first pair is PyTorch fp32
            for precision, r in out["precisions"].items():
                pairs.append({"engine": engine, "precision": precision, **r,
                              "speedup_vs_reference": ref_three / r["three_variants_s"],
                              **accuracy(base, maps, precision),
                              "start_s": out["start_s"], "peak_rss_mb": out["peak_rss_mb"],
                              "converted": out["engine_info"].get("converted"),
                              "convert_s": out["engine_info"].get("convert_s")})
    res["pairs"] = pairs
    torch_fp32 = next(r for r in pairs if r["engine"] == "torch" and r["precision"] == "fp32")
    for r in pairs:
        r["speedup_vs_torch_fp32"] = torch_fp32["three_variants_s"] / r["three_variants_s"]
    facts = {runtime.cpu_class(): pairs}
    default_engine = runtime.resolve("predict", args.device or "cpu").engine  # mrad predict's exact engine
    res["default"] = {"engine": default_engine, "precision": "fp32"}
    res["auto"] = dict(zip(("engine", "precision"), runtime.resolve_auto(args.device or "cpu", facts=facts)))
    if args.record:
        record(pairs)

    det = load(parity, args.shared, args.device, default_engine)
    res["device"] = str(det.device)
    cuda = det.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    query = [parity / "images" / "query_bad.png"]
    det.encode(query)  # warm-up

    def naive():  # an encode per variant, like three reference runs
        for v in VARIANTS:
            det.score(det.encode(query), v)
        sync()

    t_naive, _ = timed(naive, 1)
    res["three_variants"] = {"naive_default_engine_fp32_s": t_naive, "reference_three_runs_s": ref_three}

    # the fp32 floor: what the encoder's arithmetic alone takes at this device's fp32 matmul rate
    flops, gflops = encoder_flops(), fp32_matmul_gflops(det.device)
    res["fp32_floor"] = {"encoder_gflop": flops / 1e9, "fp32_matmul_gflops": gflops,
                         "encoder_floor_s": flops / gflops / 1e9,
                         "best_possible_fp32_speedup": ref_three / (flops / gflops / 1e9)}

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
        maps = [r.map[0] for r in det.predict(query).values()]
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

    # 7. int8 recipes (in this process, after the default engine's sections)
    if args.int8:
        with tempfile.TemporaryDirectory(prefix="mrad-int8-") as tmp:
            res["int8"] = run_int8(parity, args.shared, args.int8_cache or Path(tmp))

    # 6. memory (of this process: the default engine, after the sections above)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    report(res)
    print(f"\nwrote {args.out}")


def report(r):
    t = r["three_variants"]
    print(f"MRAD benchmark on {r['device']} ({r['cpu']}, class {r['cpu_class']}, {r['threads']} threads, "
          f"torch {r['torch']}, openvino {r['openvino']})\n")
    print("all three variants on one image, shared encode (marginal cost), vs the reference's three runs "
          f"({r['reference_three_runs_s']:.1f} s) and vs PyTorch fp32; accuracy vs PyTorch fp32 (bounds 1e-2 / 0.999)")
    print(f"{'engine':9s} {'precision':9s} {'s/image':>8s} {'vs ref':>7s} {'vs fp32':>8s} {'max|dmap|':>9s} "
          f"{'min corr':>9s} {'bounds':>6s} {'start s':>8s} {'peak RSS MB':>11s}")
    for p in r["pairs"]:
        tag = " <- default" if (p["engine"], p["precision"]) == tuple(r["default"].values()) else ""
        tag += " <- auto" if (p["engine"], p["precision"]) == tuple(r["auto"].values()) else ""
        start = f"{p['start_s']:.1f}" + ("*" if p["converted"] else "")
        print(f"{p['engine']:9s} {p['precision']:9s} {p['three_variants_s']:8.2f} {p['speedup_vs_reference']:6.1f}x "
              f"{p['speedup_vs_torch_fp32']:7.2f}x {p['max_abs_map_diff']:9.1e} {p['min_map_correlation']:9.5f} "
              f"{'ok' if p['within_bounds'] else 'OUT':>6s} {start:>8s} {p['peak_rss_mb']:11.0f}{tag}")
    print("(* = this start converted the encoder to OpenVINO IR; later starts load it from the cache)\n")
    print(f"{'measure':58s} {'value':>12s}")
    line = lambda k, v: print(f"{k:58s} {v:>12s}")  # noqa: E731
    line("three variants, naive (3 encodes, default engine, fp32) s", f"{t['naive_default_engine_fp32_s']:.2f}")
    f = r["fp32_floor"]
    line(f"fp32 floor: {f['encoder_gflop']:.0f} GFLOP / {f['fp32_matmul_gflops']:.0f} GFLOP/s (fp32 matmul rate) s",
         f"{f['encoder_floor_s']:.2f}")
    line("  best possible fp32 speed-up vs the reference's three runs", f"{f['best_possible_fp32_speedup']:.1f}x")
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
    if "int8" in r:
        report_int8(r["int8"])


if __name__ == "__main__":
    main()

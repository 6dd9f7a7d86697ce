#!/usr/bin/env python
"""Monitor throughput: frames/s of the monitor loop per engine and precision next to the encode-only rate.

    python bench/bench_monitor.py [--tiny] [--device cpu|cuda] [--frames 20] [--variants tf ft clip]
                                  [--out bench/results/bench_monitor.json] [model options as in `mrad monitor`]

Per engine x precision (PyTorch fp32 / bf16-mlp / bf16 (/ fp16 on CUDA), OpenVINO fp32 / bf16 where installed), on
the same synthetic frames (a textured part, some with a defect), after two warm-up frames, medians per frame of:
  encode   the image encoder alone on preprocessed pixels (what any use of the model pays once per frame)
  frame    the whole monitor step: preprocess + one encode + every variant scored + measure (defect area) + the
           Monitor's bookkeeping (EWMA, state, alarms) + the frames.csv row
  own      the monitor's own part: measure + bookkeeping + CSV row (goal: under 5 % of `frame`)
and frames/s = 1 / frame, encode-only frames/s = 1 / encode. `--tiny` uses the tests' tiny model (seconds, for a
smoke run on shared CPUs); without it the model options / MRAD_* variables choose the files (the full-size model).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from mrad_core import engines  # noqa: E402
from mrad_core.config import VARIANTS  # noqa: E402
from mrad_core.runtime import resolve_device, synchronize  # noqa: E402
from mrad_core.loading import load_detector  # noqa: E402
from mrad_core.monitor import CsvWriter, DriftRule, Monitor, measure  # noqa: E402


def combos(device) -> list:
    if device.type == "cuda":
        return [("torch", p) for p in ("fp32", "bf16", "fp16")]
    out = [("torch", p) for p in ("fp32", "bf16-mlp", "bf16")]
    if engines.openvino_available():
        out += [("openvino", "fp32"), ("openvino", "bf16")]
    return out


def frames(n: int) -> list:
    from tiny_model import synthetic_image
    return [np.asarray(synthetic_image(500 + i, size=(480, 640), defect=i % 4 == 3)[0]) for i in range(n)]


def run_pair(files, engine, precision, device, images, variants) -> dict:
    det = load_detector(files.get("backbone"), files.get("heads"), files.get("image_bank"), files.get("patch_bank"),
                        model=files["model"], device=device, precision=precision, engine=engine, batch_size=1,
                        require=variants)
    mon = Monitor.create(variants, None, 0.5, DriftRule(baseline=5))
    csv_path = Path(tempfile.mkstemp(suffix=".csv")[1])
    writer = CsvWriter(csv_path, variants)
    enc_t, frame_t, own_t = [], [], []
    for i, image in enumerate(images):
        pixels = det.pixels([image])
        t0 = time.perf_counter()
        det.encode(pixels)
        synchronize(det.device)
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()  # the monitor step, as mrad monitor runs it
        pix = det.pixels([image])
        e = det.encode(pix)
        results = {v: det.score(e, v) for v in variants}
        t1 = time.perf_counter()
        record = mon.add(measure(i, i / 10, results, {v: 1000 * (t1 - t0) for v in variants}))
        writer.write(record)
        t2 = time.perf_counter()
        if i >= 2:  # warm-up
            enc_t.append(enc)
            frame_t.append(t2 - t0)
            own_t.append(t2 - t1)
    writer.close()
    csv_path.unlink()
    enc, frame, own = (statistics.median(x) for x in (enc_t, frame_t, own_t))
    return {"engine": det.run_info["engine"], "precision": precision, "encode_ms": 1000 * enc,
            "frame_ms": 1000 * frame, "own_ms": 1000 * own, "frames_per_s": 1 / frame, "encode_only_per_s": 1 / enc,
            "own_share": own / frame, "model_outside_encode_share": (frame - own - enc) / frame}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny model (a smoke run)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--model", default=None)
    for name in ("backbone", "heads", "image-bank", "patch-bank"):
        ap.add_argument(f"--{name}", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bench_monitor.json")
    args = ap.parse_args()
    if args.tiny:
        from tiny_model import make_tiny_files
        files = make_tiny_files(tempfile.mkdtemp(prefix="mrad-bench-tiny-"))
    else:
        from mrad_core.config import DEFAULT
        files = {"model": args.model or DEFAULT.model_name, "backbone": args.backbone, "heads": args.heads,
                 "image_bank": args.image_bank, "patch_bank": args.patch_bank}
    device = resolve_device(args.device)
    images = frames(args.frames + 2)
    rows = []
    for engine, precision in combos(device):
        try:
            rows.append(run_pair(files, engine, precision, device, images, tuple(args.variants)))
        except Exception as e:  # a pair this machine cannot run (e.g. bf16 without native support)
            rows.append({"engine": engine, "precision": precision, "error": f"{type(e).__name__}: {e}"})
    print(f"monitor on {device} ({'tiny model' if args.tiny else files['model']}), {len(args.variants)} variant(s), "
          f"{args.frames} frames, medians per frame")
    print(f"{'engine':9} {'precision':9} {'frames/s':>9} {'encode-only/s':>14} {'frame ms':>9} {'own ms':>8} "
          f"{'own share':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['engine']:9} {r['precision']:9} {r['error']}")
            continue
        print(f"{r['engine']:9} {r['precision']:9} {r['frames_per_s']:9.2f} {r['encode_only_per_s']:14.2f} "
              f"{r['frame_ms']:9.2f} {r['own_ms']:8.2f} {100 * r['own_share']:8.2f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "tiny": args.tiny, "variants": args.variants,
                                    "frames": args.frames, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

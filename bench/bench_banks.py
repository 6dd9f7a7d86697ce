#!/usr/bin/env python
"""Retrieval time and peak memory against bank size: plain softmax(Q Kᵀ) V vs the chunked exact retrieval.

    python bench/bench_banks.py [--sizes 1e3 1e4 1e5 1e6] [--dim 1024] [--queries 1369] [--device cpu|cuda]
                                [--repeats 3] [--plain-max-gb 6] [--out bench/results/bench_banks.json]

One image's patch retrieval (1369 queries of 1024 dims, as MRAD-TF against a patch bank) on random unit keys. Each
(size, method) runs in its own process so that its peak memory is its own: "extra" is the peak during retrieval
above what the process held with the bank loaded (CPU: max RSS; CUDA: max allocated). The plain path is skipped
where its score matrices alone would exceed --plain-max-gb.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(size: int, method: str, dim: int, queries: int, device: str, repeats: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from mrad_core.heads import retrieve
    from mrad_core.retrieval import retrieve_chunked

    torch.manual_seed(0)
    dev = torch.device(device)
    keys = torch.empty(size, dim, device=dev)
    for s in range(0, size, 65536):  # filled in place: no temporary copies of the bank
        block = keys[s:s + 65536]
        block.normal_()
        block.div_(block.norm(dim=1, keepdim=True))
    values = torch.zeros(size, 2, device=dev)
    values[torch.arange(size), torch.randint(0, 2, (size,))] = 1
    query = torch.nn.functional.normalize(torch.randn(1, queries, dim, device=dev), dim=-1)
    fn = retrieve if method == "plain" else retrieve_chunked
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mb()
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            sync()
            t = time.perf_counter()
            fn(query, keys, values)
            sync()
            times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"size": size, "method": method, "seconds": statistics.median(times), "extra_mb": max(0.0, peak - base),
            "bank_mb": keys.numel() * 4 / 2**20}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=1369)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plain-max-gb", type=float, default=6.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bench_banks.json")
    ap.add_argument("--child", nargs=2, metavar=("SIZE", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.dim, args.queries, args.device,
                               args.repeats)))
        return
    rows = []
    print(f"patch retrieval, {args.queries} queries x {args.dim} dims, {args.device}")
    print(f"{'bank size':>10} {'bank MB':>9} {'method':>8} {'seconds':>9} {'extra MB':>9}")
    for size in (int(s) for s in args.sizes):
        for method in ("plain", "chunked"):
            if method == "plain" and 2 * args.queries * size * 4 / 2**30 > args.plain_max_gb:
                bank_mb = size * args.dim * 4 / 2**20
                print(f"{size:>10} {bank_mb:>9.0f} {method:>8} skipped (score matrix too big)")
                continue
            cmd = [sys.executable, __file__, "--child", str(size), method, "--dim", str(args.dim), "--queries",
                   str(args.queries), "--device", args.device, "--repeats", str(args.repeats)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                print(f"{size:>10} {method:>8} failed: {r.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{size:>10} {row['bank_mb']:>9.0f} {method:>8} {row['seconds']:>9.3f} {row['extra_mb']:>9.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": args.device, "dim": args.dim, "queries": args.queries, "rows": rows},
                                   indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

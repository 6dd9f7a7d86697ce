"""Sharding with torch.distributed: 2 CPU processes (gloo, launched by torchrun) give the banks and the metrics of
one process (the same images in the same order exactly; float values within TOL, since GEMM kernels may block
other batch splits differently); an error on one rank stops all of them."""
import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from mrad_core.cli import main
from mrad_core.distributed import Shard, gather_rows, rounds
from synthetic_datasets import make_dataset

TOL = 1e-6


def test_rounds_cover_items_in_order_with_whole_batches():
    for n, batch, world in [(8, 3, 2), (5, 2, 3), (1, 4, 2), (12, 2, 2)]:
        per_rank = [rounds(0, n, batch, Shard(rank=r, world=world)) for r in range(world)]
        assert len({len(p) for p in per_rank}) == 1  # every rank takes part in every round
        order = [i for k in range(len(per_rank[0])) for r in range(world) for i in per_rank[r][k]]
        assert order == list(range(n))
        single = rounds(0, n, batch, Shard())
        assert sorted(tuple(b) for p in per_rank for b in p if b) == sorted(tuple(b) for b in single)
    assert rounds(10, 15, 2, Shard(rank=1, world=2)) == [[12, 13], []]


def test_gather_rows_single_process_is_identity():
    spec = {"a": ((2,), torch.float32), "b": ((), torch.int64)}
    local = {"a": torch.ones(3, 2), "b": torch.arange(3)}
    out = gather_rows(local, spec, Shard())
    assert torch.equal(out["a"], local["a"]) and torch.equal(out["b"], local["b"])


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_port()), "-m", "mrad_core", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    make_dataset("mvtec", root, n_normal=2, n_bad=1)  # 8 images: rounds of 2 x 3 leave rank 1 idle at the end
    return root


def _model(f, heads=True):
    args = ["--model", f["model"], "--backbone", f["backbone"], "--device", "cpu", "--workers", "0",
            "--batch-size", "3"]
    if heads:
        args += ["--heads", f["heads"], "--image-bank", f["image_bank"], "--patch-bank", f["patch_bank"]]
    return args


def test_build_bank_two_processes_agree(mvtec, tiny_files, tmp_path):
    common = ["build-bank", "--dataset", "mvtec", "--data-path", str(mvtec), *_model(tiny_files, heads=False)]
    run = _torchrun([*common, "--out", str(tmp_path / "two")])
    assert run.returncode == 0, run.stderr[-3000:]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    from safetensors import safe_open
    for name in ("image_bank.safetensors", "patch_bank.safetensors"):
        with safe_open(str(tmp_path / "one" / name), "pt") as a, safe_open(str(tmp_path / "two" / name), "pt") as b:
            assert torch.equal(a.get_tensor("values"), b.get_tensor("values")), name  # labels: exact
            torch.testing.assert_close(a.get_tensor("keys"), b.get_tensor("keys"), rtol=0, atol=TOL)
            assert a.metadata()["image_ids"] == b.metadata()["image_ids"]


def test_eval_two_processes_agree(mvtec, tiny_files, tmp_path):
    common = ["eval", "--dataset", "mvtec", "--data-path", str(mvtec), *_model(tiny_files)]
    run = _torchrun([*common, "--out", str(tmp_path / "two")])
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("MRAD-CLIP on mvtec") == 1  # only rank 0 prints
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["processes"] == 2 and one["processes"] == 1
    assert _close(one["metrics"], two["metrics"])
    one_rows, two_rows = (list(csv.reader(open(tmp_path / d / "scores.csv"))) for d in ("one", "two"))
    assert len(one_rows) == len(two_rows) and one_rows[0] == two_rows[0]
    for a, b in zip(one_rows[1:], two_rows[1:]):  # the same images, classes and labels in the same order
        assert _close([_number(x) for x in a], [_number(x) for x in b]), (a, b)


def _number(text):
    """A CSV cell as a float where it is a number, else the text itself."""
    try:
        return float(text)
    except ValueError:
        return text


def _close(a, b):
    """Nested dicts/lists of numbers equal in structure, numbers within TOL (NaN equals NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return (a != a and b != b) or abs(a - b) <= TOL
    return a == b


def test_error_on_one_rank_stops_all(mvtec, tiny_files, tmp_path):
    root = tmp_path / "broken"
    make_dataset("mpdd", root, n_normal=2, n_bad=1)  # 4 test images; the last (rank 1's in batches of 3) is bad
    (root / "tubes/test/hole/000.png").write_bytes(b"not a png")
    run = _torchrun(["eval", "--dataset", "mpdd", "--data-path", str(root), "--out", str(tmp_path / "o"),
                     *_model(tiny_files)], timeout=240)
    assert run.returncode != 0
    assert "not an image format" in run.stderr
    assert not (tmp_path / "o/metrics.json").exists()

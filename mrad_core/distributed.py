"""Sharding work across processes with torch.distributed (gloo on CPU, nccl on GPU), results identical to one
process.

Launch any sharded command with torchrun, e.g. `torchrun --nproc_per_node 2 -m mrad_core build-bank ...`.
Items 0..n-1 are processed in rounds of `world * batch` items; in each round rank r takes the contiguous block
[round_start + r * batch, round_start + (r + 1) * batch) — so every rank sees exactly the batches one process
would see — and the per-item outputs (rows of tensors) are gathered to rank 0 in rank order, i.e. in item order.
Tensors travel through `all_gather` (no pickling). Only rank 0 writes files and shows progress.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import MRADError

TIMEOUT_HOURS = 3  # collectives' timeout: rank 0 computes metrics meanwhile (Settings.dist_timeout_hours,
# MRAD_DIST_TIMEOUT_HOURS)


@dataclass
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    comm_device: torch.device = torch.device("cpu")  # where collectives run (cuda for nccl)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device=None, timeout_hours: float = TIMEOUT_HOURS) -> tuple[Shard, str | None]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a one-process Shard.
    Returns (shard, device for this rank): with CUDA each rank uses cuda:LOCAL_RANK and nccl, else gloo.
    torchrun's own WORLD_SIZE / LOCAL_RANK are read here, where the process group is set up."""
    timeout = timedelta(hours=timeout_hours)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":  # like no device: each rank then takes its own GPU, not cuda:0 for all
        device = None
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        if use_cuda:  # binds the group to this rank's GPU (nccl needs it for barriers)
            dist.init_process_group("nccl", timeout=timeout, device_id=torch.device(device))
        else:
            dist.init_process_group("gloo", timeout=timeout)
    comm = torch.device(device) if use_cuda else torch.device("cpu")
    return Shard(dist.get_rank(), dist.get_world_size(), local_rank, comm), device


def teardown(shard: Shard, ok: bool = True):
    """Leave the process group (after a barrier when all went well, so no rank exits before rank 0 wrote)."""
    if shard.distributed and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def rounds(start: int, stop: int, batch: int, shard: Shard) -> list[list[int]]:
    """Items [start, stop) -> for every round, the indices this rank processes (possibly empty)."""
    step = batch * shard.world
    out = []
    for r0 in range(start, stop, step):
        lo = r0 + shard.rank * batch
        out.append(list(range(lo, min(lo + batch, stop))) if lo < stop else [])
    return out


def empty(spec: dict) -> dict:
    """Zero rows of every tensor in spec {name: (row shape, dtype)}."""
    return {k: torch.zeros((0, *shape), dtype=dtype) for k, (shape, dtype) in spec.items()}


def gather_rows(local: dict, spec: dict, shard: Shard) -> dict | None:
    """Concatenate each rank's rows of every tensor in `spec` ({name: (row shape, dtype)}) in rank order.
    Every rank must call it (one per round); rank 0 gets the result (on CPU), the others None."""
    if not shard.distributed:
        return {k: local[k].cpu() for k in spec}
    dev = shard.comm_device
    counts = torch.tensor([local[k].shape[0] for k in spec], dtype=torch.int64, device=dev)
    all_counts = [torch.zeros_like(counts) for _ in range(shard.world)]
    dist.all_gather(all_counts, counts)
    all_counts = torch.stack(all_counts).cpu()
    out = {}
    for i, (k, (shape, dtype)) in enumerate(spec.items()):
        rows = int(all_counts[:, i].max())
        buf = torch.zeros((rows, *shape), dtype=dtype, device=dev)
        buf[:local[k].shape[0]] = local[k].to(dev, dtype)
        parts = [torch.empty_like(buf) for _ in range(shard.world)]
        dist.all_gather(parts, buf)
        if shard.main:
            out[k] = torch.cat([p[:int(c)] for p, c in zip(parts, all_counts[:, i])]).cpu()
    return out if shard.main else None


def broadcast_flags(flags: list[bool], shard: Shard) -> list[bool]:
    """Rank 0's list of booleans, on every rank."""
    if not shard.distributed:
        return list(flags)
    t = torch.tensor([bool(f) for f in flags], dtype=torch.uint8, device=shard.comm_device)
    dist.broadcast(t, 0)
    return [bool(x) for x in t.cpu()]


def any_rank(flag: bool, shard: Shard) -> bool:
    """True on every rank if `flag` is true on any rank (to stop all ranks together after an error)."""
    if not shard.distributed:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=shard.comm_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def run_rounds(dataset, my_rounds: list[list[int]], produce, spec: dict, shard: Shard, workers: int = 0):
    """For each round: this rank loads its batch (a DataLoader over its non-empty rounds, `workers` processes),
    `produce(batch) -> {name: rows}` computes its rows, and the rows of all ranks are gathered.
    Yields the gathered dict on rank 0 and None elsewhere. An error on any rank stops every rank."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_sampler=[r for r in my_rounds if r], num_workers=workers)
    it = iter(loader)
    for indices in my_rounds:
        error = None
        try:
            local = produce(next(it)) if indices else empty(spec)
        except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error, local = e, empty(spec)
        if any_rank(error is not None, shard):
            if error is not None:
                raise error
            raise MRADError("another process of this distributed run failed; see its error message")
        yield gather_rows(local, spec, shard)


def barrier(shard: Shard):
    """Wait for every rank (no-op in one process)."""
    if shard.distributed:
        dist.barrier()


def sum_ranks(values: list[int], shard: Shard) -> list[int]:
    """Element-wise sum of every rank's list of integers, on every rank (one collective: e.g. [failed, done])."""
    if not shard.distributed:
        return [int(v) for v in values]
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=shard.comm_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(x) for x in t.cpu()]


def launched_world() -> int:
    """How many processes torchrun started for this run (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))

"""Exact memory retrieval for banks of any size, and the retrieval's own attention weights.

`heads.retrieve` (softmax(Q Kᵀ / τ) V in one matmul) stays the path for training and small banks. For large banks
`retrieve_chunked` streams over the keys with a running log-sum-exp, so memory is O(Q · chunk) instead of O(Q · M):
a 1369-patch query against a 10⁶-entry patch bank needs ~0.3 GB of scores instead of ~11 GB. Same result up to
float rounding (tests/test_retrieval.py: 1e-6).
"""
from __future__ import annotations

import torch

from .heads import retrieve

# score-matrix elements (queries x keys) up to which one plain matmul is used: 2^24 floats = 64 MB
PLAIN_LIMIT = 1 << 24


def retrieve_chunked(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, temperature: float = 1.0,
                     chunk: int | None = None) -> torch.Tensor:
    """softmax(Q Kᵀ / τ) V over key chunks of `chunk` rows (default: PLAIN_LIMIT // queries).
    query (..., D), keys (M, D), values (M, C) -> (..., C). For inference (no gradient is needed or kept)."""
    lead = query.shape[:-1]
    q = query.reshape(-1, query.shape[-1])
    chunk = chunk or max(1, PLAIN_LIMIT // max(1, q.shape[0]))
    dtype = torch.promote_types(q.dtype, keys.dtype)
    # the running max / sums are (Q, 1) and (Q, C): kept in float64 so that many chunks add no rounding drift
    run_max = torch.full((q.shape[0], 1), float("-inf"), dtype=torch.float64, device=q.device)
    denom = torch.zeros((q.shape[0], 1), dtype=torch.float64, device=q.device)
    acc = torch.zeros((q.shape[0], values.shape[1]), dtype=torch.float64, device=q.device)
    for start in range(0, keys.shape[0], chunk):
        s = (q @ keys[start:start + chunk].T) / temperature  # (Q, chunk)
        new_max = torch.maximum(run_max, s.amax(dim=1, keepdim=True).double())
        rescale = torch.exp(run_max - new_max)
        e = torch.exp(s - new_max.to(s.dtype))
        denom = denom * rescale + e.sum(dim=1, keepdim=True, dtype=torch.float64)
        acc = acc * rescale + (e @ values[start:start + chunk].to(e.dtype)).double()
        run_max = new_max
    return (acc / denom).to(dtype).reshape(*lead, values.shape[1])


def retrieve_any(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, temperature: float = 1.0,
                 limit: int | None = None) -> torch.Tensor:
    """Inference retrieval: `heads.retrieve` (bit-identical to training's) when the score matrix has at most
    `limit` (default PLAIN_LIMIT) elements, else `retrieve_chunked`. Shapes as `heads.retrieve`."""
    if query[..., 0].numel() * keys.shape[0] <= (PLAIN_LIMIT if limit is None else limit):
        return retrieve(query, keys, values, temperature)
    return retrieve_chunked(query, keys, values, temperature)


def attention_weights(query: torch.Tensor, keys: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The retrieval's softmax weights: query (Q, D), keys (M, D) -> (Q, M), rows sum to 1 (meant for a few
    queries: the full (Q, M) matrix is built)."""
    return torch.softmax(query @ keys.T / temperature, dim=-1)


def top_weights(query: torch.Tensor, keys: torch.Tensor, k: int, temperature: float = 1.0):
    """query (Q, D), keys (M, D) -> (weights (Q, k'), indices (Q, k')) of the k' = min(k, M) largest softmax
    weights per query, descending."""
    w = attention_weights(query, keys, temperature)
    return torch.topk(w, min(k, keys.shape[0]), dim=-1, sorted=True)

"""Chunked retrieval is the plain softmax(Q Kᵀ / τ) V at any chunk size (tolerance 1e-5: with logits up to 128
the float32 plain path itself is ~3e-6 off the float64 result); the detector
takes the chunked path for large banks and gives the same scores."""
import pytest
import torch
import torch.nn.functional as F

from mrad_core import retrieval
from mrad_core.bank import one_hot
from mrad_core.heads import retrieve
from mrad_core.retrieval import attention_weights, retrieve_any, retrieve_chunked, top_weights


def _data(q=37, m=1000, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(2, q, d, generator=g), dim=-1) * 8  # sharp, as trained projections are
    keys = F.normalize(torch.randn(m, d, generator=g), dim=-1) * 8
    values = one_hot(torch.randint(0, 2, (m,), generator=g))
    return query, keys, values


@pytest.mark.parametrize("chunk", [1, 7, 128, 999, 1000, 5000])
def test_chunked_equals_plain(chunk):
    query, keys, values = _data()
    plain = retrieve(query, keys, values, 0.5)
    chunked = retrieve_chunked(query, keys, values, 0.5, chunk=chunk)
    assert chunked.shape == plain.shape == (2, 37, 2)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=0)


def test_default_chunking_and_dispatch(monkeypatch):
    query, keys, values = _data(m=3000)
    plain = retrieve(query, keys, values)
    assert torch.equal(retrieve_any(query, keys, values), plain)  # small: exactly the training path
    monkeypatch.setattr(retrieval, "PLAIN_LIMIT", 500)  # forces ~6 keys per chunk by default
    torch.testing.assert_close(retrieve_chunked(query, keys, values), plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(retrieve_any(query, keys, values), plain, atol=1e-5, rtol=0)


def test_top_weights_are_the_softmax_weights():
    query, keys, _ = _data(q=3, m=50)
    w = torch.softmax(query[0] @ keys.T, dim=-1)
    torch.testing.assert_close(attention_weights(query[0], keys), w)
    top, idx = top_weights(query[0], keys, 5)
    assert torch.equal(idx, torch.argsort(w, dim=-1, descending=True)[:, :5])
    assert torch.all(top[:, :-1] >= top[:, 1:])
    assert top_weights(query[0], keys[:3], 5)[0].shape == (3, 3)


def test_detector_chunked_path_gives_the_same_scores(tiny_detector, tiny_files, monkeypatch):
    enc = tiny_detector.encode(tiny_files["images"])
    before = {v: tiny_detector.score(enc, v) for v in tiny_detector.variants}
    monkeypatch.setattr(retrieval, "PLAIN_LIMIT", 3)
    for v, r in before.items():
        after = tiny_detector.score(enc, v)
        assert abs(after.score - r.score).max() < 1e-5 and abs(after.map - r.map).max() < 1e-5

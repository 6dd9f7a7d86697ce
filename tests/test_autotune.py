"""`auto` measured where it runs (issue 23): the rule (fake timer, fake accuracies), the candidates per CPU, the
cache key, and on the tiny model: measured once, cached, the fastest pair inside the bounds."""
import json

import numpy as np
import pytest

from mrad_core import Detector, autotune, engines, runtime
from mrad_core.autotune import Candidate
from mrad_core.settings import ASSETS

AVX2 = frozenset({"fpu", "sse2", "avx2"})
BF16 = AVX2 | {"avx512f", "avx512_bf16"}
VERSIONS = {"torch": "2.14.1", "openvino": "2026.4.1", "open_clip": "3.3.0", "nncf": None}


class FakeClock:
    """A timer that only moves when a fake encode says it took `cost` seconds."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_run(costs: dict, noise: dict, clock: FakeClock, images=3, size=16, seed=0):
    """encode_fn / maps_fn of candidates with given seconds per image and map noise (0 = exact)."""
    rng = np.random.default_rng(seed)
    truth = {i: rng.random((size, size)) for i in range(images)}

    def encode_fn(cand, image):
        clock.now += costs[cand.pair] + (5.0 if image == 0 else 0.0)  # a first encode pays a one-time cost
        return cand, image

    def maps_fn(enc):
        cand, image = enc
        eps = noise[cand.pair]
        jitter = np.random.default_rng(hash(cand.pair) % 1000 + image).standard_normal((size, size))
        return [truth[image] + eps * jitter, truth[image] * (1 + eps)]
    return encode_fn, maps_fn, list(range(images))


PAIRS = [("torch", "fp32"), ("torch", "bf16-mlp"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16")]


def run_rule(costs, noise, engine=None):
    clock = FakeClock()
    encode_fn, maps_fn, images = fake_run(costs, noise, clock)
    rows = autotune.measure([Candidate(*p) for p in PAIRS], images, encode_fn, maps_fn, timer=clock)
    return rows, autotune.select(rows, engine)


def test_rule_picks_the_fastest_pair_inside_the_bounds():
    costs = {("torch", "fp32"): 10.0, ("torch", "bf16-mlp"): 7.0, ("torch", "bf16"): 3.0,
             ("openvino", "fp32"): 8.0, ("openvino", "bf16"): 4.0}
    noise = {("torch", "fp32"): 0.0, ("torch", "bf16-mlp"): 1e-4, ("torch", "bf16"): 5e-2,
             ("openvino", "fp32"): 1e-7, ("openvino", "bf16"): 1e-3}
    rows, choice = run_rule(costs, noise)
    by = {(r["engine"], r["precision"]): r for r in rows}
    assert [tuple(p) for p in by] == PAIRS  # all measured, the reference first
    assert by["torch", "fp32"]["s_per_image"] == pytest.approx(10.0)  # the first image's one-time cost left out
    assert by["torch", "fp32"]["max_abs"] == 0.0 and by["torch", "fp32"]["min_corr"] == 1.0
    assert not by["torch", "bf16"]["within_bounds"]  # the fastest, but out of bounds
    assert by["torch", "bf16"]["max_abs"] > autotune.BOUND_MAX_ABS
    assert by["openvino", "bf16"]["within_bounds"]
    assert choice == ("openvino", "bf16")
    assert by["torch", "bf16"]["images"] == 1 and by["openvino", "bf16"]["images"] == 3  # out: not encoded again
    assert run_rule(costs, noise, engine="torch")[1] == ("torch", "bf16-mlp")


def test_rule_when_nothing_but_fp32_is_in_bounds():
    noise = {p: (0.0 if p[1] == "fp32" else 3e-2) for p in PAIRS}
    costs = {("torch", "fp32"): 10.0, ("torch", "bf16-mlp"): 6.0, ("torch", "bf16"): 3.0,
             ("openvino", "fp32"): 8.0, ("openvino", "bf16"): 2.0}
    rows, choice = run_rule(costs, noise)
    assert [r["within_bounds"] for r in rows] == [r["precision"] == "fp32" for r in rows]
    assert choice == ("openvino", "fp32")  # the faster exact one
    costs[("openvino", "fp32")] = 12.0
    assert run_rule(costs, noise)[1] == ("torch", "fp32")


def test_rule_correlation_bound_alone_rejects():
    """A map within 1e-2 everywhere that does not follow fp32's shape (correlation < 0.999) is out."""
    ref, flat = [np.linspace(0, 1e-3, 100)], [np.full(100, 5e-4) + np.random.default_rng(0).random(100) * 1e-4]
    max_abs, corr = autotune.accuracy(ref, flat)
    assert max_abs <= autotune.BOUND_MAX_ABS and corr < autotune.BOUND_CORR
    assert not autotune.within_bounds(max_abs, corr)


def test_a_candidate_that_fails_is_a_row_out_of_bounds():
    clock = FakeClock()
    costs = {p: 1.0 for p in PAIRS}
    encode_fn, maps_fn, images = fake_run(costs, {p: 0.0 for p in PAIRS}, clock)

    def failing(cand, image):
        if cand.pair == ("openvino", "bf16"):
            raise engines.EngineError("cannot compile here")
        return encode_fn(cand, image)
    rows = autotune.measure([Candidate(*p) for p in PAIRS], images, failing, maps_fn, timer=clock)
    bad = rows[-1]
    assert bad["error"].endswith("cannot compile here") and not bad["within_bounds"] and bad["s_per_image"] is None
    assert autotune.select(rows) in {p for p in PAIRS if p != ("openvino", "bf16")}
    with pytest.raises(ValueError, match="reference"):
        autotune.measure([Candidate("openvino", "fp32")], images, encode_fn, maps_fn, timer=clock)


def test_candidates_follow_the_cpu():
    pairs = lambda c: [x.pair for x in c]  # noqa: E731
    assert pairs(autotune.candidates(AVX2, openvino=True)) == [("torch", "fp32"), ("openvino", "fp32")]
    assert pairs(autotune.candidates(AVX2, openvino=False)) == [("torch", "fp32")]
    assert pairs(autotune.candidates(BF16, openvino=True)) == PAIRS
    assert pairs(autotune.candidates({"amx_bf16", "avx2"}, openvino=True, int8=True))[-1] == ("openvino", "int8")
    assert ("openvino", "int8") not in pairs(autotune.candidates(BF16, openvino=True))  # no kept recipe
    assert pairs(autotune.candidates(BF16, True, engine="openvino")) == [("torch", "fp32"), ("openvino", "fp32"),
                                                                         ("openvino", "bf16")]
    assert runtime.cpu_class(BF16) == "avx512_bf16" and runtime.cpu_class(AVX2) == "avx2"
    info = "processor : 0\ncpu MHz\t\t: 2400.118\nflags\t\t: fpu avx2 avx512_bf16\nbogomips : 4800.23\n"
    assert runtime.cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}  # only the flags: a stable cache key
    assert autotune.cpu_flags is runtime.cpu_flags and autotune.cpu_class is runtime.cpu_class  # one copy


def test_cache_key_changes_with_flags_versions_and_backbone():
    key = autotune.cache_key(AVX2, VERSIONS, "b1")
    assert key == autotune.cache_key(set(AVX2), dict(VERSIONS), "b1")  # order does not matter
    assert key != autotune.cache_key(AVX2 | {"avx512_bf16"}, VERSIONS, "b1")
    for lib in VERSIONS:
        assert key != autotune.cache_key(AVX2, {**VERSIONS, lib: "9.9"}, "b1"), lib
    assert key != autotune.cache_key(AVX2, VERSIONS, "b2")
    assert set(autotune.library_versions()) == {"torch", "openvino", "open_clip", "nncf"}


def test_auto_before_and_after_measuring(tmp_path, monkeypatch):
    """runtime.resolve is the one decision: unmeasured and unrecorded, what is exact; recorded facts for a known
    class (the fast path); once this machine was measured (autotune.measured for its key), the fastest measured pair
    inside the bounds."""
    facts = {"amx": [{"engine": "openvino", "precision": "bf16", "three_variants_s": 1.0, "within_bounds": True}]}
    ov = engines.openvino_available()
    exact = ("openvino" if ov else "torch", "fp32")

    real_class = runtime.cpu_class

    def auto(flags, backbone_id, engine=None):  # as on a CPU with these flags
        monkeypatch.setattr(runtime, "cpu_class", lambda f=None: real_class(flags if f is None else f))
        rows = autotune.measured(tmp_path, backbone_id, flags=flags, versions=VERSIONS)
        rt = runtime.resolve("app", "cpu", engine, "auto", facts=facts, measured=rows)
        return (rt.engine, rt.precision), rt.why
    assert autotune.measured(tmp_path, "b1", flags=AVX2, versions=VERSIONS) is None
    assert auto(AVX2, "b1")[0] == exact  # unmeasured, unrecorded: what is exact
    assert autotune.needs_measuring(tmp_path, "b1", flags=AVX2, versions=VERSIONS, facts=facts)
    assert auto({"amx_bf16"}, "b1")[0] == (("openvino", "bf16") if ov else exact)  # recorded: the fast path
    assert not autotune.needs_measuring(tmp_path, "b1", flags={"amx_bf16"}, versions=VERSIONS, facts=facts)
    assert not autotune.needs_measuring(tmp_path, "b1", device="cuda", flags=AVX2, versions=VERSIONS, facts=facts)
    rows = [{"engine": "torch", "precision": "fp32", "s_per_image": 9.0, "max_abs": 0.0, "min_corr": 1.0,
             "within_bounds": True},
            {"engine": "torch", "precision": "bf16-mlp", "s_per_image": 5.0, "max_abs": 1e-3, "min_corr": 0.9999,
             "within_bounds": True},
            {"engine": "torch", "precision": "bf16", "s_per_image": 2.0, "max_abs": 5e-2, "min_corr": 0.99,
             "within_bounds": False},
            {"engine": "openvino", "precision": "bf16", "s_per_image": 3.0, "max_abs": 2e-3, "min_corr": 0.9999,
             "within_bounds": True},
            {"engine": "openvino", "precision": "fp32", "s_per_image": None, "max_abs": None, "min_corr": None,
             "within_bounds": False, "error": "cannot compile here"}]
    key = autotune.cache_key(AVX2, VERSIONS, "b1")
    autotune.save_decision(tmp_path, {"format": autotune.FORMAT, "key": key, "cpu_class": "avx2",
                                      "choice": {"engine": "openvino", "precision": "bf16"}, "candidates": rows})
    measured = autotune.measured(tmp_path, "b1", flags=AVX2, versions=VERSIONS)
    assert [(r["engine"], r["precision"], r["three_variants_s"]) for r in measured] == \
        [(r["engine"], r["precision"], r["s_per_image"]) for r in rows[:4]]  # facts' shape; the failed row left out
    choice, why = auto(AVX2, "b1")
    assert choice == (("openvino", "bf16") if ov else ("torch", "bf16-mlp")) and "measured" in why
    assert auto(AVX2, "b1", engine="torch")[0] == ("torch", "bf16-mlp")
    assert not autotune.needs_measuring(tmp_path, "b1", flags=AVX2, versions=VERSIONS, facts=facts)
    assert autotune.measured(tmp_path, "b2", flags=AVX2, versions=VERSIONS) is None  # another backbone
    assert autotune.measured(tmp_path, "b1", flags=AVX2, versions={**VERSIONS, "torch": "9"}) is None


def test_measured_for_hashes_nothing_until_something_was_measured(tmp_path, monkeypatch):
    from mrad_core.artefacts import digest
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"w" * 100)
    monkeypatch.setattr(digest, "file_sha256", lambda *a, **k: (_ for _ in ()).throw(AssertionError("hashed")))
    assert autotune.measured_for(tmp_path, weights, "ViT-L-14-336-quickgelu", 336) is None
    monkeypatch.undo()
    backbone_id = autotune.backbone_identity(digest.file_sha256(weights, tmp_path), "ViT-L-14-336-quickgelu", 336)
    key = autotune.cache_key(runtime.cpu_flags(), autotune.library_versions(), backbone_id)
    row = {"engine": "torch", "precision": "fp32", "s_per_image": 1.0, "max_abs": 0.0, "min_corr": 1.0,
           "within_bounds": True}
    autotune.save_decision(tmp_path, {"format": autotune.FORMAT, "key": key, "cpu_class": "x",
                                      "choice": {"engine": "torch", "precision": "fp32"}, "candidates": [row]})
    assert autotune.measured_for(tmp_path, weights, "ViT-L-14-336-quickgelu", 336)[0]["three_variants_s"] == 1.0
    assert autotune.measured_for(tmp_path, weights, "ViT-L-14-336-quickgelu", 224) is None  # another backbone


@pytest.fixture
def fresh_detector(tiny_files, tiny_config):
    f = tiny_files
    return Detector.from_files(f["backbone"], f["heads"], f["image_bank"], f["patch_bank"], config=tiny_config,
                               device="cpu", engine="torch")


def test_tune_measures_once_caches_and_picks_the_fastest_in_bounds(fresh_detector, tmp_path, monkeypatch):
    det, calls = fresh_detector, []
    real = autotune.measure
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    images = autotune.bundled_images(ASSETS, 2)
    assert len(images) == 2 and {"good" in p.stem for p in images} == {True, False}
    first = autotune.tune(det, images, tmp_path, flags=BF16)
    assert calls == [1] and not first["from_cache"] and first["cpu_class"] == "avx512_bf16"
    pairs = [(r["engine"], r["precision"]) for r in first["candidates"]]
    assert pairs == [c.pair for c in autotune.candidates(BF16, engines.openvino_available())]
    for r in first["candidates"]:
        assert r["s_per_image"] > 0 and "error" not in r, r
        assert r["within_bounds"] == (r["max_abs"] <= 1e-2 and r["min_corr"] >= 0.999)
    ref = first["candidates"][0]
    assert (ref["max_abs"], ref["min_corr"], ref["within_bounds"]) == (0.0, 1.0, True)
    if engines.openvino_available():
        ov = next(r for r in first["candidates"] if r["precision"] == "fp32" and r["engine"] == "openvino")
        assert ov["within_bounds"] and ov["max_abs"] <= 1e-4  # OpenVINO fp32 is exact
    inside = [r for r in first["candidates"] if r["within_bounds"]]
    best = min(inside, key=lambda r: r["s_per_image"])
    assert tuple(first["choice"].values()) == (best["engine"], best["precision"])
    assert det.backbone.has_vision  # measuring never releases the PyTorch weights
    saved = json.loads(autotune.cache_path(tmp_path, first["key"]).read_text())
    assert saved["choice"] == first["choice"] and saved["versions"] == autotune.library_versions()

    second = autotune.tune(det, images, tmp_path, flags=BF16)  # from the cache: no measuring
    assert calls == [1] and second["from_cache"] and second["choice"] == first["choice"]
    backbone_id = autotune.identity_of(det.backbone, tmp_path)
    assert backbone_id == first["backbone"]
    rows = autotune.measured(tmp_path, backbone_id, flags=BF16)
    best = min((r for r in rows if r["within_bounds"]), key=lambda r: r["three_variants_s"])
    assert (best["engine"], best["precision"]) == tuple(first["choice"].values())
    other = autotune.tune(det, images[:1], tmp_path, flags=AVX2)  # other CPU flags: measured again
    assert calls == [1, 1] and [r["precision"] for r in other["candidates"]] == \
        ["fp32"] * (2 if engines.openvino_available() else 1)


def test_each_int8_recipe_in_the_bench_is_measured(fresh_detector, tiny_files, tmp_path):
    """bench/bench.py's int8 section runs every recipe of mrad_core/quantize.py through autotune.measure (real
    NNCF on the tiny model): each row carries its own timing and accuracy, nothing is assumed."""
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    import sys

    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "bench"))
    import bench
    from mrad_core import quantize

    measured = []

    def spy(cands, *a, **k):
        cands = list(cands)
        measured.extend(c.precision for c in cands)
        return autotune.measure(cands, *a, **k)
    calibration = [tiny_files["images"][0], *sorted(str(p) for p in (ASSETS / "bank").glob("*normal_0.png"))]
    rows = bench.int8_section(fresh_detector, tiny_files["images"], calibration, tmp_path, measure=spy,
                              flags=AVX2)
    assert set(quantize.RECIPES) <= set(measured)
    by = {r["precision"]: r for r in rows}
    assert [(r["engine"], r["precision"]) for r in rows[:2]] == [("torch", "fp32"), ("openvino", "fp32")]
    assert "convert_s" not in rows[0] and "convert_s" in rows[1]  # each row carries its own engine's figures
    for name, recipe in quantize.RECIPES.items():
        r = by[name]
        assert "error" not in r, r
        assert r["s_per_image"] > 0 and r["recipe"] == recipe and r["speedup_vs_torch_fp32"] > 0
        assert r["within_bounds"] == (r["max_abs"] <= 1e-2 and r["min_corr"] >= 0.999)
        assert r["max_abs"] > 0  # quantised: not bit-identical to fp32, i.e. the int8 model really ran
    assert fresh_detector.backbone.has_vision
    assert quantize.KEPT_RECIPE is None or quantize.KEPT_RECIPE in quantize.RECIPES


def test_tune_in_background_reports_its_decision(fresh_detector, tmp_path):
    import threading
    done, errors = threading.Event(), []
    got = {}
    thread = autotune.tune_in_background(lambda: fresh_detector, autotune.bundled_images(ASSETS, 1), tmp_path,
                                         on_done=lambda d: (got.update(d), done.set()),
                                         on_error=lambda e: (errors.append(e), done.set()))
    assert done.wait(300) and not errors
    thread.join(60)
    assert got["choice"] and autotune.load_decision(tmp_path, got["key"])["choice"] == got["choice"]
    failed = threading.Event()
    autotune.tune_in_background(lambda: 1 / 0, [], tmp_path, on_error=lambda e: failed.set())
    assert failed.wait(60)

"""`--precision auto` measured where it runs: each engine x precision this CPU runs natively, timed on a few
bundled images and compared with fp32's maps on the same images; the fastest pair inside the bounds wins.

The bounds are bench/bench.py's: the worst max abs map difference <= 1e-2 and the worst map correlation >= 0.999
against PyTorch fp32, over every image x variant. The decision and its figures are cached as JSON under
<cache dir>/autotune/<key>.json (Settings.cache_dir), the key made of the CPU's flags, the library versions (torch,
openvino, open_clip, nncf) and the backbone's identity: a new CPU, a library upgrade or other weights measure again.

    rows = measure(candidates(flags), images, encode_fn, maps_fn)      # the pure measuring loop
    best = select(rows)                                                 # the pure rule
    decision = tune(detector, images, cache_dir)                        # measure once, cache, answer later
    rows = measured(cache_dir, backbone_id)                             # runtime.resolve(..., measured=rows)

The decision itself is runtime.resolve's (the one place that decides): callers pass `measured(...)` (or
`measured_for(...)`, which hashes nothing while no measurement is cached) as `measured=`. It never measures (a first
start must not get slower): this machine's cached measurement wins, then the benchmark's recorded facts for the
CPU class (engine_facts.json, the fast path for known classes), then what is exact (OpenVINO fp32 where
installed), until `tune` has run: on the first `mrad doctor`, or at idle time (`tune_in_background`).
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import engines
from .runtime import cpu_class, cpu_flags, recorded_facts

BOUND_MAX_ABS, BOUND_CORR = 1e-2, 0.999
REFERENCE = ("torch", "fp32")  # the exact pair every other one is compared with
IMAGES = 2  # bundled images measured per candidate (the doctor's 3-minute target on 2 cores)
FORMAT = 1  # of the cached JSON


@dataclass(frozen=True)
class Candidate:
    engine: str
    precision: str

    @property
    def pair(self) -> tuple:
        return self.engine, self.precision


# ---------------------------------------------------------------------------------------------------- the machine

def native_bf16(flags) -> bool:
    """bf16 arithmetic in hardware (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and only slower."""
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def library_versions() -> dict:
    """The versions the measured speeds and accuracies depend on (None: not installed)."""
    out = {}
    for name, module in (("torch", "torch"), ("openvino", "openvino"), ("open_clip", "open_clip"), ("nncf", "nncf")):
        try:
            out[name] = __import__(module).__version__
        except ImportError:
            out[name] = None
        except AttributeError:
            out[name] = "unknown"
    return out


def backbone_identity(weights_digest: str | None = None, model_name: str = "", image_size: int = 0) -> str:
    """The backbone a decision was measured with: the weights file's sha256 (artefacts.digest.file_sha256; None:
    open_clip's pretrained weights), the model (a config .json by its contents) and the input size."""
    model = model_name
    if model_name.endswith(".json") and Path(model_name).is_file():
        model = hashlib.sha256(Path(model_name).read_bytes()).hexdigest()
    return hashlib.sha256(f"{weights_digest or 'pretrained'}|{model}|{image_size}".encode()).hexdigest()[:32]


def weights_digest(weights_path, cache_dir) -> str | None:
    """The sha256 of a backbone file (hashed once, cached in <cache_dir>/verified.json), None without a file."""
    from .artefacts.digest import file_sha256
    return file_sha256(weights_path, cache_dir) if weights_path and Path(weights_path).is_file() else None


def identity_of(backbone, cache_dir) -> str:
    return backbone_identity(weights_digest(backbone.weights_path, cache_dir), backbone.config.model_name,
                             backbone.config.image_size)


def cache_key(flags, versions: dict, backbone_id: str) -> str:
    """What a decision depends on; any change (a CPU flag, a library version, the backbone) is another key."""
    text = json.dumps({"flags": sorted(flags), "versions": versions, "backbone": backbone_id, "format": FORMAT},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cache_path(cache_dir, key: str) -> Path:
    return Path(cache_dir).expanduser() / "autotune" / f"{key}.json"


# ------------------------------------------------------------------------------------------------- the candidates

def candidates(flags, openvino: bool, int8: bool = False, engine: str | None = None) -> list:
    """The engine x precision pairs this machine runs natively, PyTorch fp32 (the reference) first: fp32 on each
    engine; bf16 (PyTorch's whole-backbone autocast and its bf16 MLPs, OpenVINO's bf16 hint) only with native bf16;
    OpenVINO int8 only when an int8 recipe was kept (quantize.KEPT_RECIPE). `engine` keeps one engine's pairs (and
    the reference)."""
    out = [Candidate(*REFERENCE)]
    bf16 = native_bf16(flags)
    if bf16:
        out += [Candidate("torch", "bf16-mlp"), Candidate("torch", "bf16")]
    if openvino:
        out.append(Candidate("openvino", "fp32"))
        if bf16:
            out.append(Candidate("openvino", "bf16"))
        if int8:
            out.append(Candidate("openvino", "int8"))
    return [c for c in out if engine is None or c.engine == engine or c.pair == REFERENCE]


# ------------------------------------------------------------------------------------------------ measuring, rule

def accuracy(reference: list, maps: list) -> tuple:
    """Worst (max abs difference, correlation) over paired maps (numpy arrays)."""
    worst_abs, worst_corr = 0.0, 1.0
    for a, b in zip(reference, maps):
        a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        worst_abs = max(worst_abs, float(np.abs(a - b).max()))
        if np.array_equal(a, b):
            corr = 1.0
        elif a.std() == 0 or b.std() == 0:
            corr = 0.0  # one of them is flat and they differ: no agreement to speak of
        else:
            corr = float(np.corrcoef(a, b)[0, 1])
        worst_corr = min(worst_corr, corr)
    return worst_abs, worst_corr


def within_bounds(max_abs: float, min_corr: float) -> bool:
    return max_abs <= BOUND_MAX_ABS and min_corr >= BOUND_CORR


def measure(candidates, images, encode_fn, maps_fn, timer=time.perf_counter, progress=None,
            stop_when_out: bool = True) -> list:
    """Time and check each candidate on the same images.

    encode_fn(candidate, image) -> encoding (timed: what differs between candidates); maps_fn(encoding) -> list of
    maps (one per variant; not timed: the scoring is the same for every engine). The first image's encode also
    pays any one-time cost (a compile, a first allocation), so s_per_image is the median of the others (of the only
    one with one image). The reference pair (PyTorch fp32) is measured first, whatever the order given; its maps
    are what every other candidate's are compared with. With stop_when_out, a candidate whose maps already left
    the bounds is not encoded on the remaining images (its time is then its first image's). A candidate that fails
    (EngineError, a missing package) is a row with "error" and out of bounds. Returns rows: {"engine", "precision", "s_per_image", "max_abs",
    "min_corr", "within_bounds", "images"} (+ "error")."""
    cands = sorted(candidates, key=lambda c: c.pair != REFERENCE)
    if not cands or cands[0].pair != REFERENCE:
        raise ValueError("the candidates must include the reference, PyTorch fp32")
    rows, reference = [], None
    for n, cand in enumerate(cands):
        if progress:
            progress(n / len(cands), f"measuring {cand.engine} {cand.precision}")
        times, maps = [], []
        try:
            for image in images:
                t = timer()
                enc = encode_fn(cand, image)
                times.append(timer() - t)
                maps.extend(maps_fn(enc))
                if stop_when_out and reference is not None and not within_bounds(*accuracy(reference, maps)):
                    break  # already out of bounds: its other images cannot bring it back in
        except Exception as e:  # noqa: BLE001 (a candidate that cannot run here is a row saying so)
            from .errors import first_line
            rows.append({"engine": cand.engine, "precision": cand.precision, "s_per_image": None, "max_abs": None,
                         "min_corr": None, "within_bounds": False, "error": first_line(e)})
            if reference is None:
                raise
            continue
        if reference is None:
            reference = maps
        max_abs, min_corr = accuracy(reference, maps)
        timed = times[1:] or times
        rows.append({"engine": cand.engine, "precision": cand.precision, "s_per_image": statistics.median(timed),
                     "max_abs": max_abs, "min_corr": min_corr, "within_bounds": within_bounds(max_abs, min_corr),
                     "images": len(times)})
    if progress:
        progress(1.0, "measured")
    return rows


def select(rows: list, engine: str | None = None) -> tuple:
    """The rule: the fastest measured pair inside the bounds (among `engine`'s when one is given); ties go to the
    exact pairs (fp32), then to the order measured. Nothing measured in bounds: PyTorch fp32 (exact)."""
    inside = [r for r in rows if r.get("within_bounds") and r.get("s_per_image") is not None
              and (engine is None or r["engine"] == engine)]
    if not inside:
        return REFERENCE if engine in (None, "torch") else (engine, "fp32")
    best = min(enumerate(inside), key=lambda ir: (ir[1]["s_per_image"], ir[1]["precision"] != "fp32", ir[0]))[1]
    return best["engine"], best["precision"]


# -------------------------------------------------------------------------------------------------------- cache

def load_decision(cache_dir, key: str) -> dict | None:
    try:
        data = json.loads(cache_path(cache_dir, key).read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("key") == key and data.get("format") == FORMAT else None


def save_decision(cache_dir, decision: dict) -> Path:
    """Written next to its place, then renamed: a reader never sees half a file."""
    path = cache_path(cache_dir, decision["key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".autotune-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(decision, f, indent=1)
    os.replace(tmp, path)
    return path


def doctor_json(decision: dict) -> dict:
    """The contract of `mrad doctor --json`: exactly these keys."""
    keys = ("engine", "precision", "s_per_image", "max_abs", "min_corr", "within_bounds")
    return {"cpu_class": decision["cpu_class"], "choice": dict(decision["choice"]),
            "candidates": [{k: r.get(k) for k in keys} for r in decision["candidates"]]}


# ------------------------------------------------------------------------------------------------ the real thing

def bundled_images(assets: Path, n: int = IMAGES) -> list:
    """A few of the bundled example images (assets/examples), a normal and an anomalous one first."""
    found = sorted(Path(assets, "examples").glob("*.png"))
    if not found:
        from .errors import MRADError
        raise MRADError(f"no example images to measure with in {Path(assets, 'examples')}")
    good = [p for p in found if "good" in p.stem]
    bad = [p for p in found if "good" not in p.stem]
    mixed = [p for pair in zip(bad, good) for p in pair] + bad[len(good):] + good[len(bad):]
    return mixed[:n]


class EngineSet:
    """One engine alive at a time (the full-size model's compiled copies are ~1.2 GB each): built on a candidate's
    first encode, dropped when another candidate's begins. The PyTorch vision weights are never released here.
    The OpenVINO candidates compile the IR cached under <cache_dir>/openvino (converted once, as the app's)."""

    def __init__(self, backbone, cache_dir, weights_digest: str | None = None, int8_factory=None):
        self.backbone, self.cache_dir, self.weights_digest = backbone, cache_dir, weights_digest
        self.int8_factory = int8_factory
        self.current, self.engine = None, None

    def get(self, cand: Candidate):
        import torch

        if self.current != cand:
            self.engine = None
            if cand.engine == "torch":
                self.engine = engines.TorchEngine(self.backbone, torch.device("cpu"))
                self.engine.check(cand.precision)
            elif cand.precision == "int8":
                if self.int8_factory is None:
                    raise engines.EngineError("no int8 recipe was kept (see docs/auto.md)")
                self.engine = self.int8_factory(self.backbone)
            else:
                self.engine = engines.OpenVINOEngine(self.backbone, self.cache_dir, release=False,
                                                     precision=cand.precision, weights_digest=self.weights_digest)
            self.current = cand
        return self.engine

    def close(self):
        self.current = self.engine = None


def tune(detector, images, cache_dir, backbone_id: str | None = None, flags=None, versions=None,
         engine: str | None = None, force: bool = False, int8_factory=None, progress=None,
         timer=time.perf_counter) -> dict:
    """This machine's decision: from the cache when measured before (same key), else measured now on `images`
    and cached under cache_dir (Settings.cache_dir). `detector` is a Detector whose backbone still has its PyTorch
    vision weights (engine "torch") and which has banks (its variants' maps are what the bounds compare). Returns
    {"key", "cpu_class", "flags", "versions", "backbone", "choice": {"engine", "precision"}, "candidates": rows,
    "measured_at", "measure_s", "images", "from_cache": bool}."""
    import torch

    from .errors import MRADError

    flags = cpu_flags() if flags is None else frozenset(flags)
    versions = library_versions() if versions is None else versions
    digest = weights_digest(detector.backbone.weights_path, cache_dir)
    backbone_id = backbone_id or backbone_identity(digest, detector.backbone.config.model_name,
                                                   detector.backbone.config.image_size)
    key = cache_key(flags, versions, backbone_id)
    if not force:
        cached = load_decision(cache_dir, key)
        if cached is not None:
            return {**cached, "from_cache": True}
    if not detector.backbone.has_vision:
        raise MRADError("measuring needs the PyTorch vision weights: load the detector with engine torch")
    if not detector.variants:
        raise MRADError("measuring compares anomaly maps: the detector needs its memory banks")
    openvino = versions.get("openvino") is not None and engines.openvino_available()
    cands = candidates(flags, openvino, int8=int8_factory is not None, engine=engine)
    pixels = {str(p): detector.pixels([p]) for p in images}
    pool = EngineSet(detector.backbone, cache_dir, digest, int8_factory)

    def encode_fn(cand, image):
        return pool.get(cand).encode(pixels[str(image)], cand.precision)

    def maps_fn(enc):
        return [detector.score(enc, v).map[0] for v in detector.variants]

    t = time.perf_counter()
    try:
        with torch.inference_mode():
            rows = measure(cands, [str(p) for p in images], encode_fn, maps_fn, timer=timer, progress=progress)
    finally:
        pool.close()
    choice = select(rows, engine)
    decision = {"format": FORMAT, "key": key, "cpu_class": cpu_class(flags), "flags": sorted(flags),
                "versions": versions, "backbone": backbone_id,
                "choice": {"engine": choice[0], "precision": choice[1]}, "candidates": rows,
                "images": [Path(p).name for p in images], "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                       time.gmtime()),
                "measure_s": time.perf_counter() - t}
    save_decision(cache_dir, decision)
    return {**decision, "from_cache": False}


def as_facts(rows: list) -> list:
    """Measured rows -> rows shaped as recorded facts (runtime.resolve's `measured=`): {"engine", "precision",
    "three_variants_s", "max_abs_map_diff", "min_map_correlation", "within_bounds"}; failed rows are left out."""
    return [{"engine": r["engine"], "precision": r["precision"], "three_variants_s": r["s_per_image"],
             "max_abs_map_diff": r["max_abs"], "min_map_correlation": r["min_corr"],
             "within_bounds": bool(r["within_bounds"])} for r in rows if r.get("s_per_image") is not None]


def measured(cache_dir, backbone_id: str, flags=None, versions=None) -> list | None:
    """This machine's cached measurement for this backbone as rows for runtime.resolve(..., measured=...), or None
    when it was not measured (then `auto` uses the recorded facts, else what is exact). Never measures."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    versions = library_versions() if versions is None else versions
    cached = load_decision(cache_dir, cache_key(flags, versions, backbone_id))
    return None if cached is None else as_facts(cached["candidates"])


def any_measured(cache_dir) -> bool:
    """Whether any decision is cached at all (a cheap look before anything is hashed)."""
    return cache_dir is not None and any((Path(cache_dir).expanduser() / "autotune").glob("*.json"))


def measured_for(cache_dir, weights_path, model_name: str, image_size: int, flags=None, versions=None) \
        -> list | None:
    """`measured` for a backbone file; nothing is hashed while no measurement at all is cached (a first start
    stays as fast as before)."""
    if not any_measured(cache_dir):
        return None
    backbone_id = backbone_identity(weights_digest(weights_path, cache_dir), model_name, image_size)
    return measured(cache_dir, backbone_id, flags, versions)


def needs_measuring(cache_dir, backbone_id: str, device="cpu", flags=None, versions=None,
                    facts: dict | None = None) -> bool:
    """Whether an idle-time `tune` would teach `auto` anything: a CPU without a cached decision for this key and
    without recorded facts for its class (known classes keep the fast path)."""
    import torch

    if torch.device(device).type == "cuda":
        return False
    flags = cpu_flags() if flags is None else frozenset(flags)
    versions = library_versions() if versions is None else versions
    if load_decision(cache_dir, cache_key(flags, versions, backbone_id)) is not None:
        return False
    return not (recorded_facts() if facts is None else facts).get(cpu_class(flags))


def tune_in_background(load_torch_detector, images, cache_dir, backbone_id: str | None = None, on_done=None,
                       on_error=None):
    """For idle time: a daemon thread that loads a PyTorch fp32 detector with banks
    (`load_torch_detector()`; the serving one may have released its vision weights to OpenVINO), runs `tune`,
    drops the detector, then calls on_done(decision) (e.g. to tell the status line and re-resolve `auto` at the
    next start) or on_error(exception). Returns the started thread."""
    import threading

    def work():
        try:
            det = load_torch_detector()
            decision = tune(det, images, cache_dir, backbone_id=backbone_id)
            del det
        except Exception as e:  # noqa: BLE001 (idle work: report, never crash the app)
            if on_error is not None:
                on_error(e)
            return
        if on_done is not None:
            on_done(decision)
    thread = threading.Thread(target=work, name="mrad-autotune", daemon=True)
    thread.start()
    return thread


def as_candidates(pairs) -> list:
    return [c if isinstance(c, Candidate) else Candidate(*c) for c in pairs]


def rows_table(rows: list, choice: tuple | None = None) -> str:
    """A plain-text table of measured rows (for `mrad doctor` and the benchmark)."""
    lines = [f"{'engine':9s} {'precision':10s} {'s/image':>8s} {'max|dmap|':>10s} {'min corr':>9s} {'bounds':>6s}"]
    for r in rows:
        if r.get("s_per_image") is None:
            lines.append(f"{r['engine']:9s} {r['precision']:10s} {'-':>8s} {'-':>10s} {'-':>9s} {'n/a':>6s}  "
                         f"{r.get('error', '')}")
            continue
        tag = "  <- auto" if choice and (r["engine"], r["precision"]) == tuple(choice) else ""
        if not r["within_bounds"] and r.get("images") == 1:
            tag += "  (stopped after one image: out of bounds; its time includes one-time costs)"
        lines.append(f"{r['engine']:9s} {r['precision']:10s} {r['s_per_image']:8.2f} {r['max_abs']:10.1e} "
                     f"{r['min_corr']:9.5f} {'ok' if r['within_bounds'] else 'OUT':>6s}{tag}")
    return "\n".join(lines)


__all__ = ["BOUND_CORR", "BOUND_MAX_ABS", "Candidate", "accuracy", "as_facts", "backbone_identity",
           "bundled_images", "cache_key", "candidates", "cpu_class", "cpu_flags", "doctor_json", "library_versions",
           "load_decision", "measure", "measured", "measured_for", "native_bf16", "needs_measuring", "rows_table",
           "save_decision", "select", "tune"]

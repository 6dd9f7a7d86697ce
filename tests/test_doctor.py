"""`mrad doctor [--json]` (issue 23): this machine's table, the JSON contract, a second call from the cache."""
import json

import pytest

from mrad_core import autotune, runtime
from mrad_core.cli import build_parser, main
from mrad_core.cli.common import runtime_from_args
from mrad_core.settings import Settings

CANDIDATE_KEYS = {"engine", "precision", "s_per_image", "max_abs", "min_corr", "within_bounds"}


def model_args(f):
    return ["--model", f["model"], "--backbone", f["backbone"], "--heads", f["heads"], "--image-bank",
            f["image_bank"], "--patch-bank", f["patch_bank"], "--device", "cpu"]


def test_doctor_json_contract_then_from_the_cache(tiny_files, tmp_path, capsys, monkeypatch):
    args = ["doctor", "--json", "--cache-dir", str(tmp_path), *model_args(tiny_files)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"cpu_class", "choice", "candidates"}
    assert set(out["choice"]) == {"engine", "precision"}
    assert out["cpu_class"] == runtime.cpu_class(runtime.cpu_flags())
    expected = autotune.candidates(runtime.cpu_flags(), autotune.library_versions()["openvino"] is not None)
    assert [(c["engine"], c["precision"]) for c in out["candidates"]] == [c.pair for c in expected]
    for c in out["candidates"]:
        assert set(c) == CANDIDATE_KEYS and c["s_per_image"] > 0
        assert c["within_bounds"] == (c["max_abs"] <= 1e-2 and c["min_corr"] >= 0.999)
    inside = [c for c in out["candidates"] if c["within_bounds"]]
    best = min(inside, key=lambda c: c["s_per_image"])
    assert out["choice"] == {"engine": best["engine"], "precision": best["precision"]}
    assert len(list((tmp_path / "autotune").glob("*.json"))) == 1

    def no_measuring(*a, **k):
        raise AssertionError("measured again although the decision is cached")
    monkeypatch.setattr(autotune, "measure", no_measuring)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == out  # the same answer, from the cache
    assert main(["doctor", "--cache-dir", str(tmp_path), *model_args(tiny_files)]) == 0
    text = capsys.readouterr().out
    assert "from the cache" in text and f"auto: {out['choice']['engine']} {out['choice']['precision']}" in text
    assert "<- auto" in text and "max|dmap|" in text

    # `mrad predict --precision auto` resolves to the measured choice (the same cache, Settings.cache_dir)
    settings = Settings.from_env(cache_dir=tmp_path)
    out_dir = ["--out", str(tmp_path / "o")]
    predict = build_parser().parse_args(["predict", "x.png", *out_dir, "--precision", "auto", *model_args(tiny_files)])
    predict.settings = settings
    rt = runtime_from_args(predict)
    assert (rt.engine, rt.precision) == (out["choice"]["engine"], out["choice"]["precision"])
    assert "measured" in rt.why
    exact = build_parser().parse_args(["predict", "x.png", *out_dir, *model_args(tiny_files)])  # fp32 unless auto
    exact.settings = settings
    assert runtime_from_args(exact).precision == "fp32"


def test_doctor_refuses_what_it_cannot_measure(tiny_files, tmp_path, capsys):
    assert main(["doctor", "--cache-dir", str(tmp_path), "--images", "0", *model_args(tiny_files)]) == 2
    assert "--images" in capsys.readouterr().err
    assert main(["doctor", "--cache-dir", str(tmp_path), *model_args(tiny_files)[:-2], "--device", "cuda"]) == 2
    assert "CPU" in capsys.readouterr().err


def test_doctor_is_a_command():
    from mrad_core.cli import commands
    assert "doctor" in commands()
    with pytest.raises(SystemExit):
        main(["doctor", "--help"])

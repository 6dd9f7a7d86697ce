"""Calibration profiles on the tiny model: thresholds are the quantiles of the normal scores / map pixels, the
calibrated scale, save / load round trip and clear errors, `mrad calibrate` and `mrad predict --profile`."""
import json

import numpy as np
import pytest

from mrad_core.cli import main
from mrad_core.profile import PROFILE_FORMAT, Profile, ProfileError, calibrate, thresholds
from tiny_model import synthetic_image


@pytest.fixture(scope="module")
def normals(tmp_path_factory):
    d = tmp_path_factory.mktemp("normals")
    paths = []
    for i in range(6):
        synthetic_image(300 + i, size=(80, 80))[0].save(d / f"good_{i}.png")
        paths.append(str(d / f"good_{i}.png"))
    return paths


@pytest.fixture
def model_args(tiny_files):
    f = tiny_files
    return ["--model", f["model"], "--backbone", f["backbone"], "--heads", f["heads"], "--image-bank",
            f["image_bank"], "--patch-bank", f["patch_bank"], "--device", "cpu"]


def test_thresholds_are_the_quantiles_of_the_normal_scores(tiny_detector, normals):
    profile = calibrate(tiny_detector, normals, rate=0.2, name="p")
    results = tiny_detector.predict(normals)  # the same images, scored independently
    assert set(profile.variants) == {"tf", "ft", "clip"}
    for v, p in profile.variants.items():
        np.testing.assert_allclose(p.normal_scores, results[v].score, atol=1e-6)  # in the order given
        assert p.image_threshold == np.quantile(np.asarray(p.normal_scores), 0.8)
        np.testing.assert_allclose(p.pixel_threshold, np.quantile(results[v].map, 0.8), atol=1e-6)
        np.testing.assert_allclose(p.pixel_median, np.median(results[v].map), atol=1e-6)
        assert profile.is_anomalous(v, p.image_threshold) and not profile.is_anomalous(v, p.image_threshold - 1e-6)
        # about `rate` of the normal images are flagged: the rule flags scores that reach the threshold, so a normal
        # image whose score is the quantile itself counts too (at most one more than rate x n)
        assert profile.is_anomalous(v, results[v].score).sum() <= 0.2 * len(normals) + 1
    assert profile.bank["image"]["digest_of"] == "tensors" and len(profile.bank["image"]["sha256"]) == 64


def test_calibrated_scale_and_rule():
    rng = np.random.default_rng(0)
    scores, maps = rng.random(10), rng.random((10, 8, 8)).astype(np.float32)
    p = thresholds(scores, maps, 0.01)
    assert p.image_threshold == np.quantile(scores, 0.99) and p.pixel_threshold == np.quantile(maps, 0.99)
    prof = Profile("x", 0.01, {"tf": p})
    np.testing.assert_allclose(prof.calibrated_map("tf", np.array([p.pixel_median, p.pixel_threshold])), [0, 1],
                               atol=1e-5)
    with pytest.raises(ProfileError, match="no thresholds for MRAD-FT"):
        prof.variant("ft")


def test_profile_round_trips_and_bad_files_are_clear(tmp_path):
    rng = np.random.default_rng(1)
    prof = Profile("mine", 0.05, {"tf": thresholds(rng.random(7), rng.random((7, 4, 4)), 0.05)},
                   bank={"image": {"name": "b", "sha256": "0" * 64, "digest_of": "file"}}, images=["a.png"],
                   created="2026-01-01T00:00:00+00:00")
    loaded = Profile.load(prof.save(tmp_path / "p.json"))
    assert loaded == prof and loaded.to_json()["format"] == PROFILE_FORMAT
    cases = {"not json": ("not a JSON file", "{oops"),
             "old": ("format mrad-profile/0 is not supported",
                     json.dumps({**prof.to_json(), "format": "mrad-profile/0"})),
             "other": ("not an MRAD profile", json.dumps({"variants": {}})),
             "rate": ("rate must be", json.dumps({**prof.to_json(), "rate": 1.5})),
             "scores": ("normal_scores must be", json.dumps({**prof.to_json(), "variants": {"tf": {
                 "image_threshold": 0.5, "pixel_threshold": 0.5, "pixel_median": 0.1, "normal_scores": []}}})),
             "variant": ("unknown variant 'xx'", json.dumps({**prof.to_json(), "variants": {"xx": {}}}))}
    for name, (message, text) in cases.items():
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ProfileError, match=message):
            Profile.load(tmp_path / "bad.json")
    with pytest.raises(ProfileError, match="no such file"):
        Profile.load(tmp_path / "missing.json")


def test_cli_calibrate_then_predict_with_profile(tiny_files, normals, model_args, tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["calibrate", *normals, "--out", str(out), "--rate", "0.1", *model_args]) == 0
    data = json.loads(out.read_text())
    assert data["rate"] == 0.1 and data["name"] == "profile" and data["bank"]["image"]["digest_of"] == "file"
    for v, p in data["variants"].items():
        assert set(p) >= {"image_threshold", "pixel_threshold", "normal_scores"} and len(p["normal_scores"]) == 6
        assert p["image_threshold"] == np.quantile(np.asarray(p["normal_scores"]), 0.9)
    pred = tmp_path / "pred"
    assert main(["predict", *normals[:2], *tiny_files["images"], "--profile", str(out), "--out", str(pred),
                 *model_args]) == 0
    scores = json.loads((pred / "scores.json").read_text())
    for stem, per in scores.items():
        for v, s in per.items():
            assert s["anomalous"] == (s["score"] > data["variants"][v]["image_threshold"])
    np.testing.assert_allclose([scores["good_0"][v]["score"] for v in data["variants"]],
                               [p["normal_scores"][0] for p in data["variants"].values()], atol=1e-5)
    capsys.readouterr()
    (tmp_path / "bad.json").write_text("[]")
    assert main(["predict", normals[0], "--profile", str(tmp_path / "bad.json"), "--out", str(pred),
                 *model_args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not an MRAD profile" in err
    assert main(["calibrate", normals[0], "--out", str(out), "--rate", "2", *model_args]) == 2
    assert "--rate must be between 0 and 1" in capsys.readouterr().err


def test_setup_identity_follows_the_banks(tiny_files):
    from mrad_core.artefacts.resolve import load_detector
    from mrad_core.profile import setup_identity
    f = tiny_files
    det = load_detector(f["backbone"], f["heads"], f["image_bank"], f["patch_bank"], model=f["model"], device="cpu")
    ident = setup_identity(det)
    assert ident["bank"]["image"]["digest_of"] == "file" and ident["heads"]["digest_of"] == "file"
    edited = setup_identity(det.with_banks(det.image_bank, det.patch_bank))
    assert edited["bank"]["image"]["digest_of"] == "tensors" and edited["heads"] == ident["heads"]


def test_mismatches_name_what_differs_from_the_calibration(tiny_detector, normals):
    """A profile made with one bank and heads, checked against a setup with another: each differing part is named;
    the same setup gives nothing; identities of different kinds (file vs tensors) are not compared."""
    from mrad_core.profile import mismatches, setup_identity

    profile = calibrate(tiny_detector, normals[:2], variants=("tf",), rate=0.2, name="p")
    same = setup_identity(tiny_detector)
    assert mismatches(profile, same) == []
    changed = {"bank": {"image": {**same["bank"]["image"], "sha256": "0" * 64}, "patch": same["bank"]["patch"]},
               "heads": {**same["heads"], "sha256": "1" * 64}}
    lines = mismatches(profile, changed)
    assert len(lines) == 2
    assert lines[0].startswith("the image bank differs") and lines[1].startswith("the heads differ")
    other_kind = {"bank": {"image": {**changed["bank"]["image"], "digest_of": "file"}, "patch": same["bank"]["patch"]},
                  "heads": same["heads"]}
    assert mismatches(profile, other_kind) == []  # a file digest and a tensor digest are not comparable

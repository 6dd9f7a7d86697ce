"""The authors' files by Drive file id (drive.py; the resolver's last step) against a stand-in Drive on 127.0.0.1
(tests/drive_server.py). The served files are the tiny model's heads and banks in the authors' layout, so their
digests differ from the registry's real table: tests accept them (ArtefactOptions.accept_digests, the setting of
MRAD_ACCEPT_DIGESTS), as a user would. The library gets its settings as an ArtefactOptions; the CLI reads them
from the environment."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from drive_server import StandInDrive
from mrad_core import Heads, MemoryBank, progress
from mrad_core.artefacts import ArtefactOptions, digest, drive, hub, registry
from mrad_core.cli import main

ART = registry.REGISTRY["heads", "visa"]
ID = {key: off.drive_id for key, off in registry.OFFICIAL.items()}


@pytest.fixture(scope="module")
def official(tiny_files, tmp_path_factory):
    """The six authors' files (by official name) made from the tiny model; the MVTec ones differ from VisA's."""
    from tiny_model import random_heads
    d = tmp_path_factory.mktemp("authors")
    torch.save(Heads.load(tiny_files["heads"]).official_state(), d / registry.OFFICIAL_NAMES["heads", "visa"])
    torch.save(random_heads(seed=1).official_state(), d / registry.OFFICIAL_NAMES["heads", "mvtec"])
    for kind in ("image", "patch"):
        bank = MemoryBank.load(tiny_files[f"{kind}_bank"], kind)
        torch.save({"keys": bank.keys, "values": bank.values}, d / registry.OFFICIAL_NAMES[f"{kind}_bank", "visa"])
        torch.save({"keys": bank.keys.flip(0), "values": bank.values.flip(0)},
                   d / registry.OFFICIAL_NAMES[f"{kind}_bank", "mvtec"])
    return {key: (d / name).read_bytes() for key, name in registry.OFFICIAL_NAMES.items()}, d


def digests(files) -> str:
    return ",".join(hashlib.sha256(b).hexdigest() for b in files.values())


@pytest.fixture
def served(official):
    files, _ = official
    with StandInDrive({ID[key]: data for key, data in files.items()}) as server:
        yield server


@pytest.fixture
def env(monkeypatch, tmp_path, served, official):
    """Empty cache and project, Drive = the stand-in, its digests accepted, no Hub mirror: (tmp_path, options)."""
    monkeypatch.setattr(hub, "download", lambda *a, **k: pytest.fail("the Hub was asked without a mirror"))
    options = ArtefactOptions(cache_dir=tmp_path / "mrad", project_dir=tmp_path / "proj",
                              drive_url=served.url + "/{id}", accept_digests=digests(official[0]).split(","))
    return tmp_path, options


def as_environment(monkeypatch, options):
    """The same settings as the CLI reads them: the environment (its entry point)."""
    for name in ("MRAD_HUB_REPO", "MRAD_HUB_REVISION", "MRAD_HEADS", "MRAD_IMAGE_BANK", "MRAD_PATCH_BANK",
                 "MRAD_SOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MRAD_CACHE_DIR", str(options.cache_dir))
    monkeypatch.setenv("MRAD_PROJECT_DIR", str(options.project_dir))
    monkeypatch.setenv("MRAD_DRIVE_URL", options.drive_url)
    monkeypatch.setenv("MRAD_ACCEPT_DIGESTS", ",".join(options.accept_digests))


def cache_files(tmp_path) -> list:
    root = tmp_path / "mrad"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def test_first_use_downloads_verifies_and_converts_once(env, served, official, monkeypatch):
    tmp, options = env
    found = hub.resolve(ART, options=options)
    assert found.origin == "drive" and "sha256 verified" in found.check
    assert Path(found.path) == drive.cache_dir(options) / "mrad_heads_visa.safetensors"
    assert str(tmp / "mrad" / "drive") in found.path  # under the cache directory, not in the project
    original = drive.cache_dir(options) / "test_on_mvtec.pth"
    assert original.read_bytes() == official[0]["heads", "visa"]
    heads = Heads.load(found.path)
    assert heads.meta["training_source"] == "visa" and heads.meta["provenance"]["file"] == "test_on_mvtec.pth"
    reference = Heads.load(original).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in heads.state_dict().items())
    assert served.hits(ID["heads", "visa"]) == 1
    monkeypatch.setattr(digest.hashlib, "file_digest", lambda *a: pytest.fail("hashed again"))
    monkeypatch.setattr(drive, "_download", lambda *a: pytest.fail("downloaded again"))
    again = hub.resolve(ART, options=options)
    assert again.origin == "drive-cache" and again.path == found.path
    assert served.hits(ID["heads", "visa"]) == 1


def test_the_real_table_is_enforced_and_a_wrong_file_leaves_nothing(env, served, official):
    tmp, options = env
    with pytest.raises(drive.DriveError) as e:
        hub.resolve(ART, options=replace(options, accept_digests=()))
    got = hashlib.sha256(official[0]["heads", "visa"]).hexdigest()
    msg = str(e.value)
    assert f"has sha256 {got} but {registry.OFFICIAL['heads', 'visa'].sha256} is expected" in msg
    assert f"MRAD_ACCEPT_DIGESTS={got}" in msg and "test_on_mvtec.pth" in msg and "nothing was kept" in msg
    assert cache_files(tmp) == []


def _bad_drive(official, entry):
    files, _ = official
    return StandInDrive({ID["heads", "visa"]: entry(files["heads", "visa"])})


@pytest.mark.parametrize("case, entry, words", [
    ("quota", lambda d: ("quota", b""), ["quota page", "instead of test_on_mvtec.pth"]),
    ("quota429", lambda d: ("quota429", b""), ["HTTP 429: its quota page", "test_on_mvtec.pth"]),
    ("truncated", lambda d: ("truncated", d), ["test_on_mvtec.pth", "was interrupted", "nothing was kept"]),
    ("wrong", lambda d: d[:-1] + bytes([d[-1] ^ 1]), ["test_on_mvtec.pth", "but", "is expected", "nothing was kept"]),
    ("missing", lambda d: None, ["HTTP 404", "test_on_mvtec.pth"]),
])
def test_bad_downloads_give_one_message_and_leave_nothing(env, official, case, entry, words):
    tmp, options = env
    with _bad_drive(official, entry) as bad:
        if entry(b"x") is None:
            bad.files.clear()
        with pytest.raises(drive.DriveError) as e:
            hub.resolve(ART, options=replace(options, drive_url=bad.url + "/{id}"))
    msg = str(e.value)
    for w in words + ["https://drive.google.com/file/d/1EdqTDU3NSeW1fQIkdZNdlH6iHcOjqQlC/view",
                      str(tmp / "proj" / "checkpoints" / "test_on_mvtec.pth")]:
        assert w in msg, (w, msg)
    assert cache_files(tmp) == []


def test_virus_scan_page_is_confirmed(env, official):
    files, _ = official
    with StandInDrive({ID["heads", "visa"]: ("virus", files["heads", "visa"])}) as server:
        options = replace(env[1], drive_url=server.url + "/{id}")
        found = hub.resolve(ART, options=options)
        assert any(r.startswith("/download?") and "confirm=t" in r and "uuid=" in r for r in server.requests)
    assert found.origin == "drive"
    assert (drive.cache_dir(options) / "test_on_mvtec.pth").read_bytes() == files["heads", "visa"]


def test_two_threads_one_download_with_progress(env, official):
    files, _ = official
    data = files["heads", "visa"]
    seen = []
    listener = seen.append
    progress.add_listener(listener)
    with StandInDrive({ID["heads", "visa"]: ("slow", data)}) as server:
        options = replace(env[1], drive_url=server.url + "/{id}")
        results = []
        threads = [threading.Thread(target=lambda: results.append(hub.resolve(ART, options=options)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        during = []
        deadline = time.monotonic() + 30
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            during += progress.current_downloads()
            time.sleep(0.05)
        for t in threads:
            t.join()
        assert server.hits(ID["heads", "visa"]) == 1
    progress.remove_listener(listener)
    assert len(results) == 2 and results[0].path == results[1].path
    assert during, "no download was visible while it ran"
    d = during[-1]
    assert d["file"] == "test_on_mvtec.pth" and d["label"] == ART.label and d["total_bytes"] == len(data)
    assert d["source"].startswith(server.url) and 0 < d["done_bytes"] <= len(data)
    assert "test_on_mvtec.pth from http://127.0.0.1" in progress.describe([d]) and "%" in progress.describe([d])
    assert any(s and s[0]["done_bytes"] == len(data) for s in seen) and seen[-1] == []
    assert progress.current_downloads() == []


def test_drive_off_or_offline_is_a_clear_message(env):
    options = env[1]
    with pytest.raises(hub.HubError, match="Google Drive downloads are off") as e:
        hub.resolve(ART, options=replace(options, drive_url="off"))
    assert registry.OFFICIAL["heads", "visa"].link in str(e.value)
    with pytest.raises(hub.HubError, match=r"no \{id\} placeholder"):
        hub.resolve(ART, options=replace(options, drive_url="http://127.0.0.1:1/file"))
    offline = replace(options, drive_url="http://127.0.0.1:1/{id}", hub_offline=True)  # the settings' offline
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE=1 is set") as e:  # (huggingface_hub's own is not set)
        hub.resolve(ART, options=offline)
    assert "is not available" in str(e.value) and "MRAD_HUB_REPO" in str(e.value)
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE=1 is set and the file is not in the Hugging Face cache"):
        hub.resolve(ART.at("some/mirror"), options=offline)  # a mirror is not asked either (download would fail)


def test_authors_file_in_project_is_checked_against_the_table(env, official):
    files, _ = official
    tmp, options = env
    path = tmp / "proj" / "cache" / "cache_model_visa.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(files["image_bank", "visa"])
    art = registry.REGISTRY["image_bank", "visa"]
    assert hub.resolve(art, options=options).check == "sha256 accepted (MRAD_ACCEPT_DIGESTS)"
    digest._MEMO.clear()
    with pytest.raises(hub.HubError, match="is not the authors' cache_model_visa.pt"):
        hub.resolve(art, options=replace(options, accept_digests=()))


# ---------------------------------------------------------------- fetch-official
def test_fetch_official_per_file_then_verify(env, served, official, capsys, monkeypatch):
    files, _ = official
    tmp, options = env
    as_environment(monkeypatch, options)  # the command reads its settings from the environment
    root = tmp / "proj"
    assert main(["fetch-official", "--verify"]) == 1
    out = capsys.readouterr().out
    assert out.count("MISSING") == 6 and registry.OFFICIAL["patch_bank", "mvtec"].link in out
    assert main(["fetch-official", "--source", "visa"]) == 0
    for kind in registry.ARTEFACT_KINDS:
        name = registry.OFFICIAL_NAMES[kind, "visa"]
        assert (root / registry.LOCAL_DIRS[kind] / name).read_bytes() == files[kind, "visa"]
    assert not (root / "checkpoints" / "test_on_visa.pth").exists()
    assert sum(served.hits(i) for i in ID.values()) == 3  # by file id, one request each, no folder listing
    capsys.readouterr()
    assert main(["fetch-official", "--verify", "--source", "visa"]) == 0
    out = capsys.readouterr().out
    assert out.count("accepted sha256") == 6  # project copy and cache original of each file
    (root / "cache" / "cache_model_visa.pt").write_bytes(b"not the file")
    assert main(["fetch-official", "--verify", "--source", "visa"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


# ---------------------------------------------------------------- done when: `mrad predict` with nothing local
def _predict(args, env_extra, tmp, tiny_files):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MRAD_"))}
    env.update({"HF_HOME": str(tmp / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]), **env_extra})
    r = subprocess.run([sys.executable, "-m", "mrad_core", "predict", *tiny_files["images"], "--variant", "all",
                        "--backbone", tiny_files["backbone"], "--model", tiny_files["model"], "--device", "cpu",
                        *args], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_predict_from_drive_equals_the_same_files_by_path(official, tiny_files, tmp_path):
    files, d = official
    (tmp_path / "mrad").mkdir()
    (tmp_path / "proj").mkdir()
    with StandInDrive({ID[key]: data for key, data in files.items()}) as server:
        env = {"MRAD_DRIVE_URL": server.url + "/{id}", "MRAD_CACHE_DIR": str(tmp_path / "mrad"),
               "MRAD_PROJECT_DIR": str(tmp_path / "proj"), "MRAD_ACCEPT_DIGESTS": digests(files)}
        _predict(["--source", "visa", "--out", str(tmp_path / "drive")], env, tmp_path, tiny_files)
        assert {i for i in ID.values() if server.hits(i)} == {ID[k, "visa"] for k in registry.ARTEFACT_KINDS}  # lazily
        _predict(["--source", "visa", "--out", str(tmp_path / "again")], env, tmp_path, tiny_files)
        assert len(server.requests) == 3  # the second run loads the converted files
    by_path = ["--heads", str(d / "test_on_mvtec.pth"), "--image-bank", str(d / "cache_model_visa.pt"),
               "--patch-bank", str(d / "cache_patch_model_visa.pt")]
    _predict([*by_path, "--out", str(tmp_path / "path")], {"MRAD_DRIVE_URL": "off"}, tmp_path, tiny_files)
    ref = json.loads((tmp_path / "path" / "scores.json").read_text())
    assert {v for s in ref.values() for v in s} == {"tf", "ft", "clip"}
    for run in ("drive", "again"):
        got = json.loads((tmp_path / run / "scores.json").read_text())
        assert got.keys() == ref.keys()
        for stem, per in ref.items():
            for v, numbers in per.items():  # tolerance 1e-6: converted tensors are identical, so is the maths
                assert got[stem][v]["score"] == pytest.approx(numbers["score"], abs=1e-6)
                a, b = np.load(tmp_path / run / f"{stem}.{v}.npy"), np.load(tmp_path / "path" / f"{stem}.{v}.npy")
                assert np.allclose(a, b, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "mrad" / "drive").iterdir()) == sorted(
        [registry.our_name(k, "visa") for k in registry.ARTEFACT_KINDS] + [registry.OFFICIAL_NAMES[k, "visa"]
                                                                    for k in registry.ARTEFACT_KINDS])
    assert not any((tmp_path / "proj").iterdir())  # nothing written into the project


def test_backbone_download_is_announced(tmp_path, monkeypatch):
    """While open_clip fetches the backbone, progress lists it with its repo and the bytes of the partial file."""
    from huggingface_hub import constants
    from open_clip import pretrained

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "find_in_cache", lambda *a, **k: None)
    monkeypatch.setattr(hub, "_probe", lambda repo, name, rev: 3000 if name == registry.BACKBONE.filename else None)
    blobs = tmp_path / f"models--{registry.BACKBONE.repo.replace('/', '--')}" / "blobs"
    seen = []

    def fetch(cfg, *a, **k):
        blobs.mkdir(parents=True)
        (blobs / "abc.incomplete").write_bytes(b"x" * 1200)  # what huggingface_hub writes while downloading
        seen.extend(progress.current_downloads())
        (tmp_path / "weights.bin").write_bytes(b"w")
        return str(tmp_path / "weights.bin")
    monkeypatch.setattr(pretrained, "download_pretrained", fetch)
    assert hub.backbone_weights("ViT-L-14-336-quickgelu", "openai") == str(tmp_path / "weights.bin")
    assert len(seen) == 1 and progress.current_downloads() == []
    d = seen[0]
    assert d["label"] == "the CLIP backbone" and d["file"] == registry.BACKBONE.filename
    assert d["source"].endswith(registry.BACKBONE.repo) and (d["done_bytes"], d["total_bytes"]) == (1200, 3000)
    assert "downloading the CLIP backbone: open_clip_pytorch_model.bin from " in progress.describe(seen)
    assert "(40%)" in progress.describe(seen)


def test_registry_table_matches_the_shared_record_of_the_authors_files():
    """The ids and digests in registry.OFFICIAL are those of ../shared/OFFICIAL_FILES.md (no typo in 6 x 2 strings)."""
    from conftest import SHARED
    record = SHARED / "OFFICIAL_FILES.md"
    if not record.is_file():
        pytest.skip(f"{record} not found")
    rows = re.findall(r"^\| (\S+\.pth?) \| [^|]+ \| ([\w-]{20,}) \| ([0-9a-f]{64}) \|$", record.read_text(), re.M)
    table = {name: (drive_id, sha) for name, drive_id, sha in rows}
    assert len(table) == 6
    assert {off.name: (off.drive_id, off.sha256) for off in registry.OFFICIAL.values()} == table


def test_confirm_url_follows_drives_forms():
    page = ('<html><body>Google Drive can&#39;t scan this file for viruses.<form id="download-form" '
            'action="https://drive.usercontent.google.com/download" method="get"><input type="submit" value="x">'
            '<input type="hidden" name="id" value="ABC"><input type="hidden" name="export" value="download">'
            '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1"></form>')
    url = drive.confirm_url(page, "https://drive.usercontent.google.com/download?id=ABC&export=download")
    assert url == "https://drive.usercontent.google.com/download?id=ABC&export=download&confirm=t&uuid=u-1"
    legacy = '<a id="uc-download-link" href="/uc?export=download&amp;confirm=Xy_1&amp;id=ABC">Download anyway</a>'
    assert drive.confirm_url(legacy, "https://drive.google.com/uc?export=download&id=ABC") == \
        "https://drive.google.com/uc?export=download&confirm=Xy_1&id=ABC"
    assert drive.confirm_url("<html>Too many users have viewed or downloaded this file</html>", "http://x") is None


def test_unwritable_cache_is_one_message(env):
    tmp, options = env
    blocker = tmp / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    with pytest.raises(drive.DriveError, match="cannot be saved in") as e:
        hub.resolve(ART, options=replace(options, cache_dir=blocker))
    assert "set MRAD_CACHE_DIR to a writable directory" in str(e.value) and "test_on_mvtec.pth" in str(e.value)

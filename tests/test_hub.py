"""Delivery through a stand-in Hub (tests/hub_server.py): the real hf_hub_download path in subprocesses that get
HF_ENDPOINT / HF_HUB_OFFLINE / HF_HOME before huggingface_hub is imported, as a user's process would; our own
settings (cache, project, Drive, mirror) reach the code as an ArtefactOptions, not through the environment."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hub_server import StandInHub
from mrad_core.artefacts import ArtefactOptions, digest, hub, registry
from mrad_core.artefacts.resolve import artefacts_for
from mrad_core.errors import MRADError
from mrad_core.settings import Settings

REPO = "test-org/mrad"
OPTIONS = r"""
import json, sys
from mrad_core.artefacts import ArtefactOptions
options = ArtefactOptions(**json.loads(sys.argv[2]))  # the settings, passed explicitly
"""
CLIENT = OPTIONS + r"""
from mrad_core.artefacts import hub
from mrad_core.artefacts.registry import Artefact
out = []
for spec in json.loads(sys.argv[1]):
    spec["local_names"] = tuple(spec.get("local_names", ()))
    try:
        r = hub.resolve(Artefact(**spec), options=options)
        out.append({"ok": True, "path": r.path, "origin": r.origin, "check": r.check})
    except Exception as e:
        out.append({"ok": False, "type": type(e).__name__, "error": str(e)})
print("RESULT " + json.dumps(out))
"""
E2E = OPTIONS + r"""
from mrad_core.artefacts.resolve import load_detector, resolve_artefacts
a = json.loads(sys.argv[1])
det = load_detector(a["backbone"], model=a["model"], device="cpu", source="visa", repo_id=a["repo"], options=options)
res = det.predict(a["images"], det.variants)
other = resolve_artefacts(a["backbone"], model=a["model"], source="mvtec", repo_id=a["repo"], options=options)
try:
    resolve_artefacts(a["backbone"], model=a["model"], source="mvtec", repo_id=a["repo"], require=("tf",),
                      options=options)
    required = None
except Exception as e:
    required = f"{type(e).__name__}: {e}"
print("RESULT " + json.dumps({"variants": list(det.variants), "origins": [s.origin for s in det.delivery.statuses],
      "scores": {v: r.score.tolist() for v, r in res.items()}, "maps": {v: float(r.map.sum()) for v, r in res.items()},
      "mvtec": other.report(), "mvtec_missing": [s.kind for s in other.missing], "required": required}))
"""


def spec(filename, repo=REPO, **kw):
    return {"kind": "heads", "source": "visa", "filename": filename, "repo_id": repo, "revision": "main", **kw}


def run_client(code, arg, env_extra, tmp, options=None):
    """Run `code` in a fresh process: huggingface_hub's variables (HF_*) in its environment, before it is imported;
    no MRAD_* variable at all (the code gets ArtefactOptions(**options) as argv[2]). HF_HUB_OFFLINE=1 in env_extra
    also sets options' hub_offline, as Settings.from_env would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MRAD_"))}
    env.update({"HF_HOME": str(tmp / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", **env_extra})
    options = {"cache_dir": str(tmp / "mrad"), "project_dir": str(tmp / "proj"), "drive_url": "off",  # Drive:
               "hub_offline": env_extra.get("HF_HUB_OFFLINE") == "1", **(options or {})}  # test_drive.py
    r = subprocess.run([sys.executable, "-c", code, json.dumps(arg), json.dumps(options)], env=env,
                       capture_output=True, text=True, timeout=240)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, f"client failed (rc {r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}"
    return json.loads(line[len("RESULT "):]), r.stderr


@pytest.fixture(scope="module")
def payload():
    """Distinct random files (the HF cache shares blobs by etag, so equal bytes would hide downloads)."""
    g = torch.Generator().manual_seed(7)
    names = ["good.bin", "pinned.bin", "wrong_pin.bin", "corrupt.bin", "short.bin", "drop_once.bin", "drop.bin"]
    return {n: bytes(torch.randint(0, 256, (200_000 + i,), generator=g, dtype=torch.uint8).tolist())
            for i, n in enumerate(names)}


@pytest.fixture(scope="module")
def stand_in(payload):
    with StandInHub() as server:
        server.add_repo(REPO, payload, faults={"corrupt.bin": "corrupt", "short.bin": "short",
                                               "drop_once.bin": "drop-once", "drop.bin": "drop"})
        server.add_repo("test-org/gated", {"good.bin": payload["good.bin"]}, access="gated")
        server.add_repo("test-org/private", {"good.bin": payload["good.bin"]}, access="forbidden")
        yield server


@pytest.fixture(scope="module")
def online(stand_in, payload, tmp_path_factory):
    """Every scenario resolved once, online, with an empty cache; returns ({name: result}, tmp dir)."""
    tmp = tmp_path_factory.mktemp("hub")
    sha = lambda n: hashlib.sha256(payload[n]).hexdigest()  # noqa: E731
    cases = {
        "good": spec("good.bin"),
        "pinned": spec("pinned.bin", sha256=sha("pinned.bin"), size=len(payload["pinned.bin"])),
        "wrong_pin": spec("wrong_pin.bin", sha256="0" * 64),
        "corrupt": spec("corrupt.bin"),
        "short": spec("short.bin"),
        "drop_once": spec("drop_once.bin"),
        "drop": spec("drop.bin"),
        "no_file": spec("absent.bin"),
        "no_repo": spec("good.bin", repo="test-org/nothing"),
        "no_revision": {**spec("good.bin"), "revision": "v9"},
        "gated": spec("good.bin", repo="test-org/gated"),
        "forbidden": spec("good.bin", repo="test-org/private"),
    }
    results, _ = run_client(CLIENT, list(cases.values()), {"HF_ENDPOINT": stand_in.url}, tmp)
    return dict(zip(cases, results)), tmp


def test_first_use_downloads_through_hf_hub_download_and_verifies(online, stand_in, payload):
    results, tmp = online
    good = results["good"]
    assert good["ok"] and good["origin"] == "hub" and good["check"] == "sha256 verified"
    assert Path(good["path"]).read_bytes() == payload["good.bin"]
    assert str(tmp / "hf") in good["path"]  # in the HF cache named by HF_HOME
    assert stand_in.hits("HEAD", f"/{REPO}/resolve/main/good.bin") and stand_in.hits("GET", "good.bin")
    assert results["pinned"]["ok"] and results["pinned"]["check"] == "sha256 verified"


def test_second_use_offline_from_cache(online, stand_in):
    results, tmp = online
    before = len(stand_in.requests)
    again, _ = run_client(CLIENT, [spec("good.bin"), spec("pinned.bin"), spec("never_fetched.bin")],
                          {"HF_ENDPOINT": stand_in.url, "HF_HUB_OFFLINE": "1"}, tmp)
    assert again[0]["ok"] and again[0]["origin"] == "hf-cache" and again[0]["path"] == results["good"]["path"]
    assert again[0]["check"] == "sha256 verified" and again[1]["ok"]
    assert not again[2]["ok"] and "HF_HUB_OFFLINE=1 is set" in again[2]["error"]
    assert "never_fetched.bin" in again[2]["error"] and "mrad fetch-official" in again[2]["error"]
    assert "checkpoints" in again[2]["error"] and "MRAD_HUB_REPO" in again[2]["error"]
    assert len(stand_in.requests) == before  # not one request to the Hub


@pytest.mark.parametrize("case, words", [
    ("no_file", ["has no file absent.bin", REPO]),
    ("no_repo", ["test-org/nothing does not exist", "MRAD_HUB_REPO"]),
    ("no_revision", ["no revision 'v9'", "MRAD_HUB_REVISION"]),
    ("gated", ["test-org/gated is gated", "hf auth login"]),
    ("forbidden", ["refused (HTTP 403)"]),
    ("short", ["download was incomplete", "should be of size"]),
    ("drop", ["download was interrupted"]),
])
def test_hub_failures_give_one_actionable_message(online, case, words):
    result = online[0][case]
    assert not result["ok"] and result["type"] == "HubError"
    for w in words + ["To fix:", "mrad fetch-official", "--heads / MRAD_HEADS"]:
        assert w in result["error"], (w, result["error"])


def test_corrupt_download_names_both_digests(online, payload):
    results = online[0]
    err = results["corrupt"]["error"]
    good = hashlib.sha256(payload["corrupt.bin"]).hexdigest()
    bad = hashlib.sha256(payload["corrupt.bin"][:-1] + bytes([payload["corrupt.bin"][-1] ^ 0xFF])).hexdigest()
    assert not results["corrupt"]["ok"] and f"sha256 is {bad} but {good} is expected" in err
    assert "Hub's LFS record" in err and "delete" in err
    wrong = results["wrong_pin"]["error"]
    assert "0" * 64 in wrong and hashlib.sha256(payload["wrong_pin.bin"]).hexdigest() in wrong
    assert "from the registry" in wrong


def test_interrupted_download_resumes_and_verifies(online, stand_in, payload):
    result = online[0]["drop_once"]
    assert result["ok"] and result["check"] == "sha256 verified"
    assert Path(result["path"]).read_bytes() == payload["drop_once.bin"]
    assert len(stand_in.hits("GET", "drop_once.bin")) == 2  # cut off once, fetched again


def test_no_network_fails_fast_with_clear_message(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    results, _ = run_client(CLIENT, [spec("good.bin")], {"HF_ENDPOINT": f"http://127.0.0.1:{port}"}, tmp_path)
    assert time.monotonic() - start < 20  # no half-minute retry loop
    assert not results[0]["ok"] and "could not be reached" in results[0]["error"]
    assert "HF_HUB_OFFLINE=1" in results[0]["error"] and "To fix:" in results[0]["error"]


def test_detector_end_to_end_from_stand_in_hub_then_offline(tiny_files, tiny_detector, tmp_path):
    """load_detector with nothing but the backbone: heads and banks come from the Hub, then from the cache."""
    files = {registry.our_name(k, "visa"): Path(tiny_files[k]).read_bytes() for k in registry.ARTEFACT_KINDS}
    arg = {"backbone": tiny_files["backbone"], "model": tiny_files["model"], "images": tiny_files["images"],
           "repo": REPO}
    expected = tiny_detector.predict(tiny_files["images"], ("tf", "ft", "clip"))
    with StandInHub() as server:
        server.add_repo(REPO, files)
        first, _ = run_client(E2E, arg, {"HF_ENDPOINT": server.url}, tmp_path)
        n = len(server.requests)
        second, _ = run_client(E2E, arg, {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "1"}, tmp_path)
        assert len(server.requests) == n
    assert first["origins"] == ["explicit", "hub", "hub", "hub"]
    assert second["origins"] == ["explicit", "hf-cache", "hf-cache", "hf-cache"]
    for run in (first, second):
        assert run["variants"] == ["tf", "ft", "clip"]
        for v, r in expected.items():
            assert run["scores"][v] == r.score.tolist()
            assert run["maps"][v] == pytest.approx(float(r.map.sum()), rel=1e-6)
        assert run["mvtec_missing"] == ["heads", "image_bank", "patch_bank"]
        assert "missing: heads (trained on MVTec AD)" in run["mvtec"]
        assert run["required"].startswith("HubError") and "mrad_image_bank_mvtec.safetensors" in run["required"]
    assert "has no file mrad_heads_mvtec.safetensors" in first["mvtec"]
    assert "HF_HUB_OFFLINE=1 is set" in second["mvtec"]


BACKBONE_CLIENT = r"""
import json, sys
from mrad_core.artefacts import hub
out = []
for model in ("ViT-L-14-336-quickgelu", "ViT-B-32"):
    try:
        out.append({"ok": True, "path": hub.backbone_weights(model, "openai")})
    except Exception as e:
        out.append({"ok": False, "type": type(e).__name__, "error": str(e)})
print("RESULT " + json.dumps(out))
"""


def test_backbone_through_open_clip_hub_mechanism(tmp_path, payload):
    """open_clip's own download of ViT-L-14-336-quickgelu/openai goes to the stand-in Hub, is verified against
    the Hub's sha256, and is used offline afterwards; a model never fetched gives the backbone message."""
    weights = payload["good.bin"]
    with StandInHub() as server:
        server.add_repo(registry.BACKBONE.repo, {"open_clip_model.safetensors": weights})
        first, _ = run_client(BACKBONE_CLIENT, None, {"HF_ENDPOINT": server.url}, tmp_path)
        assert server.hits("GET", f"/{registry.BACKBONE.repo}/resolve/main/open_clip_model.safetensors")
        n = len(server.requests)
        second, _ = run_client(BACKBONE_CLIENT, None, {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "1"}, tmp_path)
        assert len(server.requests) == n
    assert first[0]["ok"] and Path(first[0]["path"]).read_bytes() == weights
    assert second[0] == first[0]
    assert not first[1]["ok"] and "timm/vit_base_patch32_clip_224.openai does not exist" in first[1]["error"]
    err = second[1]["error"]
    assert second[1]["type"] == "HubError" and "HF_HUB_OFFLINE=1 is set" in err and "--backbone / MRAD_BACKBONE" in err


# ---------------------------------------------------------------- local files (no Hub involved)
def test_project_files_found_and_verified_once(tiny_files, tmp_path, monkeypatch):
    options = ArtefactOptions(cache_dir=tmp_path / "mrad")
    data = Path(tiny_files["heads"]).read_bytes()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "mrad_heads_visa.safetensors").write_bytes(data)
    art = registry.REGISTRY["heads", "visa"]
    pinned = replace(art, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    found = hub.resolve(pinned, roots=[tmp_path], allow_download=False, options=options)
    assert found.origin == "project" and found.check == "sha256 verified"
    assert json.loads((tmp_path / "mrad" / "verified.json").read_text())  # the verdict is cached ...
    monkeypatch.setattr(digest, "_MEMO", {})  # a new process: only the file on disk remembers
    monkeypatch.setattr(digest.hashlib, "file_digest", lambda *a: pytest.fail("hashed twice"))
    again = hub.resolve(pinned, roots=[tmp_path], allow_download=False, options=options)
    assert again.check == "sha256 verified"  # ... and used
    unpinned = hub.resolve(art, roots=[tmp_path], allow_download=False, options=options)
    assert unpinned.check == "unverified (no published digest)"


def test_truncated_or_corrupt_project_file_is_an_error(tiny_files, tmp_path):
    options = ArtefactOptions(cache_dir=tmp_path / "mrad")
    data = Path(tiny_files["heads"]).read_bytes()
    art = registry.REGISTRY["heads", "visa"]
    pinned = replace(art, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    path = tmp_path / "checkpoints" / "mrad_heads_visa.safetensors"
    path.parent.mkdir()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(hub.HubError, match=f"has {len(data) // 2} bytes but {len(data)} are expected") as e:
        hub.resolve(pinned, roots=[tmp_path], allow_download=False, options=options)
    assert f"delete {path}" in str(e.value)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(bad))
    with pytest.raises(hub.HubError, match=f"sha256 is {hashlib.sha256(bad).hexdigest()} but {pinned.sha256}"):
        hub.resolve(pinned, roots=[tmp_path], allow_download=False, options=options)


def test_official_name_in_checkpoints_is_found_and_checked(tmp_path):
    options = ArtefactOptions(cache_dir=tmp_path / "mrad")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cache_patch_model_mvtec.pt").write_bytes(b"x")
    art = registry.REGISTRY["patch_bank", "mvtec"]
    with pytest.raises(hub.HubError, match="is not the authors' cache_patch_model_mvtec.pt") as e:
        hub.resolve(art, roots=[tmp_path], allow_download=False, options=options)
    assert art.official.sha256 in str(e.value) and hashlib.sha256(b"x").hexdigest() in str(e.value)
    accepting = replace(options, accept_digests=(hashlib.sha256(b"x").hexdigest().upper(),))  # any case
    found = hub.resolve(art, roots=[tmp_path], allow_download=False, options=accepting)
    assert found.path == str(tmp_path / "cache" / "cache_patch_model_mvtec.pt") and "MRAD_ACCEPT_DIGESTS" in found.check


def test_registry_pairing_and_sources():
    assert registry.source_for_dataset("MVTec") == "visa" and registry.source_for_dataset("visa") == "mvtec"
    assert registry.source_for_dataset("mpdd") == "visa" and registry.source_for_dataset(None) == "visa"
    arts = registry.artefacts("mvtec")
    assert arts["heads"].local_names == ("mrad_heads_mvtec.safetensors", "test_on_visa.pth")
    assert registry.artefacts("mvtec", repo_id="a/b")["patch_bank"].repo == "a/b"
    assert registry.artefacts()["heads"].source == "visa"  # no source: visa
    assert all(a.sha256 is None or len(a.sha256) == 64 for a in registry.REGISTRY.values())
    with pytest.raises(MRADError, match="unknown training source"):
        registry.artefacts("btad")


def test_the_resolver_takes_mirror_revision_and_source_from_the_settings(monkeypatch):
    """The Hub mirror, its revision and the training source: explicit > settings (MRAD_HUB_REPO,
    MRAD_HUB_REVISION, MRAD_SOURCE) > the registry's defaults; a library call without settings reads no
    environment."""
    for name, value in (("MRAD_HUB_REPO", "env/repo"), ("MRAD_HUB_REVISION", "env-rev"), ("MRAD_SOURCE", "mvtec")):
        monkeypatch.setenv(name, value)
    bare = artefacts_for()  # no settings: the defaults, whatever the environment says
    assert bare["heads"].source == "visa" and bare["heads"].mirror is None and bare["heads"].rev == "main"
    assert bare["heads"].repo == registry.DEFAULT_REPO
    settings = Settings.from_env()  # an entry point reads the environment, once
    arts = artefacts_for(options=settings.artefacts)
    assert arts["heads"].source == "mvtec" and arts["heads"].mirror == "env/repo" and arts["heads"].rev == "env-rev"
    assert [a.filename for a in arts.values()] == [registry.our_name(k, "mvtec") for k in registry.ARTEFACT_KINDS]
    explicit = artefacts_for("visa", "me/mine", "v1", options=settings.artefacts)
    assert {(a.source, a.mirror, a.rev) for a in explicit.values()} == {("visa", "me/mine", "v1")}
    half = artefacts_for(repo_id="me/mine", options=settings.artefacts)  # an explicit repo, the settings' revision
    assert (half["patch_bank"].mirror, half["patch_bank"].rev) == ("me/mine", "env-rev")
    options = ArtefactOptions(hub_repo="a/b")
    assert hub.configured(registry.REGISTRY["heads", "visa"], options).mirror == "a/b"
    assert hub.configured(registry.REGISTRY["heads", "visa"].at("c/d"), options).mirror == "c/d"


def test_settings_read_the_artefact_variables_once(monkeypatch):
    """MRAD_CACHE_DIR's one default (~/.cache/mrad) and its ~ expansion, and every artefact variable, in Settings."""
    home = Path.home()
    assert Settings.from_env({}).cache_dir == home / ".cache" / "mrad" == Settings().cache_dir
    assert ArtefactOptions().cache_dir == home / ".cache" / "mrad"  # the library default is the same one
    env = {"MRAD_CACHE_DIR": "~/elsewhere/mrad", "MRAD_PROJECT_DIR": "~/proj", "MRAD_HUB_REPO": "me/mirror",
           "MRAD_HUB_REVISION": "abc", "MRAD_DRIVE_URL": " http://x/{id} ", "MRAD_SOURCE": "MVTec",
           "MRAD_ACCEPT_DIGESTS": f"{'A' * 64}, {'b' * 64} {'c' * 64}", "HF_HUB_OFFLINE": "1",
           "MRAD_HEADS": "/h.safetensors", "MRAD_DIST_TIMEOUT_HOURS": "5"}
    s = Settings.from_env(env)
    assert s.cache_dir == home / "elsewhere" / "mrad" and s.project_dir == home / "proj"
    assert s.artefacts == ArtefactOptions(cache_dir=home / "elsewhere" / "mrad", project_dir=home / "proj",
                                          hub_repo="me/mirror", hub_revision="abc", drive_url="http://x/{id}",
                                          accept_digests=("a" * 64, "b" * 64, "c" * 64), hub_offline=True,
                                          training_source="mvtec", files={"heads": "/h.safetensors"})
    assert s.dist_timeout_hours == 5 and Settings().dist_timeout_hours == 3
    assert s.artefacts.drive_dir == home / "elsewhere" / "mrad" / "drive"
    assert s.artefacts.project_dirs() == [home / "proj"]
    assert Settings.from_env({}).artefacts == ArtefactOptions()  # nothing set: the library's defaults
    monkeypatch.chdir(Path(__file__).parent)
    assert ArtefactOptions().project_dirs() == [Path(__file__).parent.resolve(), Path(__file__).resolve().parents[1]]


def test_the_artefacts_package_reads_no_environment_and_imports_no_cli_or_gradio():
    """What the environment says reaches mrad_core/artefacts/ only as ArtefactOptions; it is library code below
    the CLI and the UI (the drive -> cli/convert -> hub -> drive cycle is gone)."""
    import ast

    import mrad_core.artefacts as package
    found = []
    for path in sorted(Path(package.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                    and node.attr in ("environ", "getenv"):
                found.append(f"{path.name}:{node.lineno} os.{node.attr}")
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [("." * node.level) + (node.module or "")] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if name.split(".")[0] == "gradio" or name.startswith(("mrad_core.cli", "..cli")) or \
                        name in ("mrad_core.settings", "..settings"):
                    found.append(f"{path.name}:{node.lineno} imports {name}")
    assert found == []


# ---------------------------------------------------------------- publish
def test_publish_stages_files_and_model_card(tiny_files, tmp_path, monkeypatch):
    from mrad_core.cli import main
    src = tmp_path / "files"
    src.mkdir()
    for kind, source in (("heads", "visa"), ("image_bank", "mvtec"), ("patch_bank", "mvtec")):
        (src / registry.our_name(kind, source)).write_bytes(Path(tiny_files[kind]).read_bytes())
    calls = {}
    import huggingface_hub

    def upload_folder(self, **kw):
        calls["upload"] = kw
        calls["staged"] = {p.name: p.read_bytes() for p in Path(kw["folder_path"]).iterdir()}
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{kw['repo_id']}/commit/{'a' * 40}",
                                          commit_message="m", commit_description="", oid="a" * 40)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.setdefault("create", repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert main(["publish", "--repo", "me/mrad", "--from", str(src)]) == 0
    assert calls["create"] == "me/mrad" and calls["upload"]["repo_id"] == "me/mrad"
    staged = calls["staged"]
    assert set(staged) == {"README.md", "SHA256SUMS", "mrad_heads_visa.safetensors",
                           "mrad_image_bank_mvtec.safetensors", "mrad_patch_bank_mvtec.safetensors"}
    card = staged["README.md"].decode()
    assert "license: cc-by-nc-sa-4.0" in card and "CC BY-NC-SA 4.0" in card and "CC BY 4.0" in card and "MIT" in card
    for name, data in staged.items():
        if name.endswith(".safetensors"):
            digest = hashlib.sha256(data).hexdigest()
            assert data == (src / name).read_bytes() and digest in card
            assert f"{digest}  {name}" in staged["SHA256SUMS"].decode()
    assert main(["publish", "--repo", "me/mrad", "--from", str(tmp_path / "empty")]) == 2


def test_cli_hub_options_reach_the_resolver(monkeypatch):
    from mrad_core.artefacts import resolve
    from mrad_core.cli import build_parser
    from mrad_core.cli.common import detector_from_args
    seen = {}
    monkeypatch.setattr(resolve, "load_detector", lambda *a, **kw: seen.update(kw) or "detector")
    monkeypatch.delenv("MRAD_SOURCE", raising=False)
    monkeypatch.setenv("MRAD_HUB_REVISION", "env-rev")  # the command's settings reach the resolver as options
    args = build_parser().parse_args(["predict", "x.png", "--out", "o", "--variant", "ft", "--source", "mvtec",
                                      "--hub-repo", "me/mine", "--hub-revision", "v1"])
    assert detector_from_args(args) == "detector"
    assert (seen["source"], seen["repo_id"], seen["revision"], seen["require"]) == ("mvtec", "me/mine", "v1", ("ft",))
    assert seen["options"].hub_revision == "env-rev" and seen["options"].hub_repo is None
    args = build_parser().parse_args(["predict", "x.png", "--out", "o"])
    detector_from_args(args)
    assert seen["source"] is None and seen["require"] == ("tf", "ft", "clip") and seen["repo_id"] is None

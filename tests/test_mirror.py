"""Your own mirror in three commands, end to end on the stand-ins (Drive: drive_server.py, Hub: hub_server.py):
`mrad fetch-official` -> `mrad convert` -> `mrad publish --repo you/mrad` (the CLI: settings from the environment),
then the mirror and the pinned commit publish printed (MRAD_HUB_REPO + MRAD_HUB_REVISION, given to the resolver as
its settings) make the resolver download from the mirror, files matching the digests
publish printed. A mirror without some file falls back to Drive. `publish` uploads through HfApi.upload_folder,
which the stand-in Hub cannot receive: the test replaces that one call by adding the staged folder to it."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import huggingface_hub

from drive_server import StandInDrive
from hub_server import StandInHub
from mrad_core.artefacts import registry
from mrad_core.cli import main
from test_drive import ID, digests, official  # noqa: F401  (the fixture)
from test_hub import OPTIONS, run_client

CLIENT = OPTIONS + r"""
import hashlib
from safetensors import safe_open
from mrad_core.artefacts.resolve import resolve_artefacts

def provenance(path):
    with safe_open(path, framework="pt") as f:
        return json.loads(f.metadata()["provenance"])["sha256"]

a = json.loads(sys.argv[1])
out = {}
for source, repo in a["runs"]:
    res = resolve_artefacts(a["backbone"], model=a["model"], source=source, repo_id=repo, require=("tf", "ft", "clip"),
                            options=options)
    out[f"{source}@{repo}"] = {s.kind: [s.origin, hashlib.sha256(open(s.path, "rb").read()).hexdigest(),
                                        provenance(s.path)] for s in res.statuses if s.kind != "backbone"}
print("RESULT " + json.dumps(out))
"""


def test_fetch_convert_publish_then_download_from_the_mirror(official, tiny_files, tmp_path, monkeypatch,  # noqa: F811
                                                              capsys):
    files, _ = official
    for name in ("MRAD_HUB_REPO", "MRAD_HUB_REVISION", "MRAD_HEADS", "MRAD_IMAGE_BANK", "MRAD_PATCH_BANK"):
        monkeypatch.delenv(name, raising=False)
    proj = tmp_path / "proj"
    monkeypatch.setenv("MRAD_PROJECT_DIR", str(proj))
    monkeypatch.setenv("MRAD_CACHE_DIR", str(tmp_path / "mrad"))
    monkeypatch.setenv("MRAD_ACCEPT_DIGESTS", digests(files))
    with StandInDrive({ID[key]: data for key, data in files.items()}) as drive, StandInHub() as hub:
        monkeypatch.setenv("MRAD_DRIVE_URL", drive.url + "/{id}")

        def upload_folder(self, *, repo_id, folder_path, **kw):
            staged = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            repo = hub.add_repo(repo_id, staged)
            return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{repo.commit}",
                                              commit_message="m", commit_description="", oid=repo.commit)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: None)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)

        # the three commands
        assert main(["fetch-official"]) == 0
        officials = sorted(str(p) for p in proj.rglob("*.pt*"))
        assert len(officials) == 6
        assert main(["convert", *officials]) == 0
        capsys.readouterr()
        assert main(["publish", "--repo", "you/mrad"]) == 0
        out = capsys.readouterr().out
        pin = re.search(r"MRAD_HUB_REPO=(\S+) MRAD_HUB_REVISION=(\S+)", out)
        printed = dict((name, digest) for digest, name in re.findall(r"^\s+([0-9a-f]{64})\s+(\S+)$", out, re.M))
        assert pin and pin[1] == "you/mrad" and pin[2] == hub.repos["you/mrad"].commit
        assert set(printed) == {registry.our_name(k, s) for k in registry.ARTEFACT_KINDS for s in registry.TRAINING_SOURCES}

        # a mirror with only the VisA files: MVTec falls back to Drive
        hub.add_repo("you/half", {n: d for n, d in hub.repos["you/mrad"].files.items() if "visa" in n})
        drive_before = len(drive.requests)
        arg = {"backbone": tiny_files["backbone"], "model": tiny_files["model"],
               "runs": [["visa", None], ["mvtec", None], ["mvtec", "you/half"]]}
        fresh = tmp_path / "fresh"  # another machine: empty project, cache and HF cache
        pinned = {"hub_repo": pin[1], "hub_revision": pin[2], "drive_url": drive.url + "/{id}",  # as printed
                  "accept_digests": digests(files).split(",")}
        result, _ = run_client(CLIENT, arg, {"HF_ENDPOINT": hub.url}, fresh, options=pinned)
        pinned_gets = hub.hits("GET", f"/you/mrad/resolve/{pin[2]}/")
        drive_after = drive.requests[drive_before:]

    for source in registry.TRAINING_SOURCES:
        run = result[f"{source}@None"]
        for kind in registry.ARTEFACT_KINDS:
            origin, digest, _ = run[kind]
            assert origin == "hub" and digest == printed[registry.our_name(kind, source)], (source, kind, run)
    assert len(pinned_gets) == 6  # at the pinned commit
    half = result["mvtec@you/half"]
    assert {k: v[0] for k, v in half.items()} == {k: "drive" for k in registry.ARTEFACT_KINDS}
    for kind in registry.ARTEFACT_KINDS:  # converted from the Drive file
        assert half[kind][2] == hashlib.sha256(files[kind, "mvtec"]).hexdigest()
    assert sorted(drive_after) == sorted(f"/{ID[k, 'mvtec']}" for k in registry.ARTEFACT_KINDS)

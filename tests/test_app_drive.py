"""The app's VisA source on first use: the authors' files come from (a stand-in for) Google Drive by file id, the
page's status says what is being fetched, from where and how far it is, and all three variants then run with the
same results as the same files given by path."""
import time

import pytest

from drive_server import StandInDrive
from served_app import launch
from mrad_core.artefacts import hub, registry
from test_drive import ID, digests, official  # noqa: F401  (the module-scoped fixture of the six authors' files)


def test_visa_source_downloads_with_visible_progress_then_runs_all_variants(official, tiny_files, tiny_detector,  # noqa: F811
                                                                             tmp_path, monkeypatch):
    from gradio_client import Client, handle_file
    from mrad_core.service import Service

    files, _ = official
    for name in ("MRAD_HUB_REPO", "MRAD_HEADS", "MRAD_IMAGE_BANK", "MRAD_PATCH_BANK", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MRAD_CACHE_DIR", str(tmp_path / "mrad"))
    monkeypatch.setenv("MRAD_PROJECT_DIR", str(tmp_path / "proj"))
    monkeypatch.setenv("MRAD_ACCEPT_DIGESTS", digests(files))
    monkeypatch.setattr(hub, "download", lambda *a, **k: pytest.fail("the Hub was asked without a mirror"))
    (tmp_path / "proj").mkdir()
    served = {ID[key]: ("slow", data) for key, data in files.items()}  # 8 pieces, 0.15 s apart: time to look
    with StandInDrive(served) as drive:
        monkeypatch.setenv("MRAD_DRIVE_URL", drive.url + "/{id}")
        service = Service(files={"backbone": tiny_files["backbone"]}, model=tiny_files["model"], device="cpu",
                          precision="fp32")
        demo, url = launch(service)
        try:
            client = Client(url, verbose=False)
            job = client.submit(image=handle_file(tiny_files["images"][1]), source="visa", api_name="/predict")
            seen, deadline = [], time.monotonic() + 120
            while not job.done() and time.monotonic() < deadline:
                status = client.predict(api_name="/status")
                if "downloading" in status:
                    seen.append(status)
                time.sleep(0.1)
            result = job.result(timeout=120)
        finally:
            demo.close()
    assert seen, "the status never showed a download"
    names = {registry.OFFICIAL_NAMES[k, "visa"] for k in ("heads", "image_bank", "patch_bank")}
    shown = "\n".join(seen)
    assert any(n in shown for n in names) and f"from {drive.url}" in shown and "%" in shown
    expected = tiny_detector.predict([tiny_files["images"][1]])
    assert set(result["variants"]) == {"tf", "ft", "clip"}
    for v, r in expected.items():  # the same tensors as the tiny files given by path
        assert result["variants"][v]["score"] == pytest.approx(float(r.score[0]), abs=1e-4)

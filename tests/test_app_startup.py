"""Issue 20 item 9: started with MRAD_* paths that do not exist (the README's ../shared/parity paths from a clone
elsewhere), the app says so at start: the status line and the "What is loaded / missing" panel name the variable
and the missing path."""
from served_app import served_tiny


def test_missing_mrad_paths_are_named_at_start(tiny_files, tmp_path):
    from gradio_client import Client
    missing_heads = tmp_path / "nowhere" / "heads.safetensors"
    missing_bank = tmp_path / "nowhere" / "image_bank.safetensors"
    files = {**tiny_files, "heads": str(missing_heads), "image_bank": str(missing_bank)}
    with served_tiny(files) as (service, demo, url):
        page = demo.mrad
        status = Client(url, verbose=False).predict(api_name="/status")
        for var, path in (("MRAD_HEADS", missing_heads), ("MRAD_IMAGE_BANK", missing_bank)):
            assert f"{var} not found: `{path}`" in status
        out = page.describe(page.source_of(None), None)
        panel = out[page.source_info]
        assert f"MRAD_HEADS points at a file that does not exist: `{missing_heads}`" in panel
        assert f"MRAD_IMAGE_BANK points at a file that does not exist: `{missing_bank}`" in panel
        assert out[page.source_panel].open is True  # the panel opens by itself
        assert "MRAD_HEADS" in out[page.notice] and str(missing_heads) in out[page.notice]
        assert "MRAD_PATCH_BANK" not in status  # the patch bank is there: not named


def test_no_warning_when_the_files_are_there(tiny_files):
    with served_tiny(tiny_files) as (service, demo, url):
        page = demo.mrad
        assert "not found" not in page.status_text()
        assert "does not exist" not in page.describe(page.source_of(None), None)[page.source_info]

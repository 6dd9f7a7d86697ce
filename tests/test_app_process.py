"""`python app.py` from the repository root serves the app (as a user starts it), on the tiny model files."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from served_app import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_python_app_py_serves_and_answers(tiny_files, tmp_path):
    port = free_port()
    env = {**os.environ, "MRAD_MODEL": tiny_files["model"], "MRAD_BACKBONE": tiny_files["backbone"],
           "MRAD_HEADS": tiny_files["heads"], "MRAD_IMAGE_BANK": tiny_files["image_bank"],
           "MRAD_PATCH_BANK": tiny_files["patch_bank"], "HF_HUB_OFFLINE": "1", "MRAD_CALIBRATION": "0",
           "MRAD_CACHE_DIR": str(tmp_path / "cache")}
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(120):
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    assert r.status == 200 and b"MRAD" in r.read()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "app.log").read_text()
                time.sleep(0.5)
        else:
            raise AssertionError("the app did not answer within 60 s:\n" + (tmp_path / "app.log").read_text())
        from gradio_client import Client, handle_file
        result = Client(url, verbose=False).predict(image=handle_file(tiny_files["images"][1]), api_name="/predict")
        assert set(result["variants"]) == {"tf", "ft", "clip"}
        assert all(0 <= v["score"] <= 1 for v in result["variants"].values())
        # the README's curl example, verbatim but for the port
        block = re.search(r"With curl.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[1]
        shutil.copy(tiny_files["images"][1], tmp_path / "part.png")
        run = subprocess.run(["bash", "-c", block.replace("127.0.0.1:7860", f"127.0.0.1:{port}")], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert "event: complete" in run.stdout, run.stdout + run.stderr
        answer = json.loads(run.stdout.split("data: ", 1)[1].splitlines()[0])[0]
        assert answer["image"] == "part.png" and set(answer["variants"]) == {"tf", "ft", "clip"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()

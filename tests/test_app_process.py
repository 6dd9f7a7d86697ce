"""`python app.py` from the repository root serves the app (as a user starts it), on the tiny model files, and
answers the curl example of docs/api.md as written."""
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


def curl_block() -> str:
    """The bash block after "With curl" in docs/api.md."""
    m = re.search(r"With curl.*?```bash\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    assert m, "docs/api.md must give the curl example in a ```bash block after 'With curl'"
    return m[1]


def test_the_curl_example_reads_the_complete_event_past_heartbeats():
    """A call that outlasts Gradio's heartbeat interval streams `data: null` heartbeats before the result: the
    example's reader (the pipe after its `curl -N`) prints the complete event's data and nothing else."""
    reader = next(line for line in curl_block().splitlines() if line.startswith("curl -s -N"))
    assert " | " in reader, "the event stream must be filtered, not printed whole"
    stream = ('event: heartbeat\ndata: null\n\nevent: heartbeat\ndata: null\n\n'
              'event: complete\ndata: [{"image": "part.png", "variants": {}}, null]\n\n')
    run = subprocess.run(["bash", "-c", reader.split(" | ", 1)[1]], input=stream, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [{"image": "part.png", "variants": {}}, None]


def test_python_app_py_serves_and_answers(tiny_files, tmp_path):
    port = free_port()
    env = {**os.environ, "MRAD_MODEL": tiny_files["model"], "MRAD_BACKBONE": tiny_files["backbone"],
           "MRAD_HEADS": tiny_files["heads"], "MRAD_IMAGE_BANK": tiny_files["image_bank"],
           "MRAD_PATCH_BANK": tiny_files["patch_bank"], "HF_HUB_OFFLINE": "1", "MRAD_CALIBRATION": "0",
           "MRAD_CACHE_DIR": str(tmp_path / "cache"),
           # heartbeats every 50 ms, so the event stream the curl example reads usually holds some before the result
           # (the reader's handling of them is checked deterministically in the test above)
           "GRADIO_HEARTBEAT_INTERVAL": "0.05"}
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
        # the curl example of docs/api.md, verbatim but for the port: it prints the data of the complete event
        block = curl_block()
        shutil.copy(tiny_files["images"][1], tmp_path / "part.png")
        run = subprocess.run(["bash", "-c", block.replace("127.0.0.1:7860", f"127.0.0.1:{port}")], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and run.stdout.strip(), run.stdout + run.stderr
        answer = json.loads(run.stdout)[0]
        assert answer["image"] == "part.png" and set(answer["variants"]) == {"tf", "ft", "clip"}
        assert all(0 <= v["score"] <= 1 for v in answer["variants"].values())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()

"""`mrad predict` over a whole archive (mrad_core/archive.py) on the tiny model: inputs from folders, globs and
@LIST in a stable order keyed by relative path, unreadable images as error rows, a kill -9 in the middle recovered
by running the command again, another run into the same --out refused, two torchrun processes giving the rows of
one, and memory that stays flat as the number of images grows."""
import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mrad_core import archive
from mrad_core.cli import main
from mrad_core.errors import MRADError
from tiny_model import synthetic_image

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-6


def _image(path, seed, size=(40, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_image(seed, size=size)[0].save(path)
    return path


@pytest.fixture
def model_args(tiny_files):
    f = tiny_files
    return ["--model", f["model"], "--backbone", f["backbone"], "--heads", f["heads"], "--image-bank",
            f["image_bank"], "--patch-bank", f["patch_bank"], "--device", "cpu"]


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory):
    """Nested folders, two images named 001.png in different folders, an upper-case extension, a corrupt PNG, a
    text file named .png, and entries that are not inputs (hidden file and folder, a .txt)."""
    root = tmp_path_factory.mktemp("archive")
    _image(root / "a" / "001.png", 1)
    _image(root / "b" / "001.png", 2)
    _image(root / "b" / "deep" / "er" / "002.PNG", 3)
    _image(root / "c.jpg", 4)
    (root / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "a" / "notes.png").write_text("not an image at all\n")
    (root / "a" / "readme.txt").write_text("ignored")
    _image(root / ".cache" / "003.png", 5)
    _image(root / "a" / ".hidden.png", 6)
    return root


EXPECTED = ["a/001.png", "a/notes.png", "b/001.png", "b/corrupt.png", "b/deep/er/002.PNG", "c.jpg"]
BAD = {"a/notes.png", "b/corrupt.png"}


def test_expand_folders_globs_and_lists(archive_dir, tmp_path):
    assert [it.key for it in archive.expand([archive_dir])] == EXPECTED
    listed = tmp_path / "list.txt"
    rel = os.path.relpath(archive_dir / "b" / "001.png", tmp_path)
    listed.write_text(f"# a comment\n\n{rel}\n{archive_dir / 'a' / '001.png'}\n")
    items = archive.expand([f"@{listed}"])  # keys: the lines as written (relative ones relative to the list)
    assert [it.key for it in items] == sorted([Path(rel).as_posix(), str(archive_dir / "a" / "001.png")])
    assert {Path(it.path).resolve() for it in items} == {archive_dir / "b/001.png", archive_dir / "a/001.png"}
    globbed = archive.expand([str(archive_dir / "b" / "**" / "*")])  # shell-style; image files only
    assert [it.key for it in globbed] == ["001.png", "corrupt.png", "deep/er/002.PNG"]
    with pytest.raises(MRADError, match="same relative path 001.png"):
        archive.expand([archive_dir / "a", archive_dir / "b"])
    with pytest.raises(MRADError, match="no such file or folder"):
        archive.expand([tmp_path / "nowhere"])
    with pytest.raises(MRADError, match="no images"):
        archive.expand([str(tmp_path / "*.png")])
    assert archive.explicit_only([archive_dir / "c.jpg"]) and not archive.explicit_only([archive_dir])


def test_folder_every_image_once_bad_ones_as_error_rows(archive_dir, model_args, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(archive_dir), "--out", str(out), "--variant", "all", "--workers", "2",
                 "--batch-size", "4", *model_args]) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 image(s) x 3 variant(s)" in printed and "(2 unreadable)" in printed
    rows = archive.read_csv(out / "scores.csv")
    assert list(rows[0]) == list(archive.CSV_COLUMNS)
    assert [(r["image"], r["variant"]) for r in rows] == [(k, v) for k in EXPECTED for v in ("tf", "ft", "clip")]
    for r in rows:
        if r["image"] in BAD:
            assert r["error"] and r["score"] == "" and r["image"].split("/")[-1] in r["error"]
        else:
            assert r["error"] == "" and 0 <= float(r["score"]) <= 1 and r["anomalous"] == ""
            assert (out / "maps" / f"{r['image']}.{r['variant']}.npy").is_file()
    scores = json.loads((out / "scores.json").read_text())
    assert list(scores) == EXPECTED
    assert set(scores["a/001.png"]) == {"tf", "ft", "clip"} and "error" in scores["b/corrupt.png"]
    assert scores["a/001.png"]["tf"]["score"] != scores["b/001.png"]["tf"]["score"]  # same name, both scored
    run = json.loads((out / "run.json").read_text())
    assert run["images"] == 6 and run["errors"] == 2 and run["variants"] == ["tf", "ft", "clip"]
    # --strict stops at the first unreadable image, naming it
    assert main(["predict", str(archive_dir), "--out", str(tmp_path / "strict"), "--variant", "tf", "--strict",
                 "--workers", "0", *model_args]) == 2
    assert "notes.png" in capsys.readouterr().err
    assert not (tmp_path / "strict" / "scores.csv").exists()


def test_other_variants_into_the_same_out_are_refused(archive_dir, model_args, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["predict", str(archive_dir), "--out", str(out), "--workers", "0", "--maps", "none", *model_args]
    assert main([*base, "--variant", "tf"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main([*base, "--variant", "all"]) == 2
    err = capsys.readouterr().err
    assert "variants" in err and '["tf"]' in err and "--overwrite" in err and err.strip().count("\n") == 0
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing changed
    assert main([*base, "--variant", "all", "--overwrite"]) == 0
    assert {r["variant"] for r in archive.read_csv(out / "scores.csv")} == {"tf", "ft", "clip"}


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from mrad_core import archive
    from mrad_core.cli import main

    commits = []
    real = archive.Store.commit

    def commit(self, rows):
        if commits:  # the second batch: its rows are inserted but never committed, then we wait for kill -9
            self.con.execute("BEGIN IMMEDIATE")
            self.con.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            print("COMMITTED", len(commits), flush=True)
            time.sleep(600)
        real(self, rows)
        commits.append(len(rows))

    archive.Store.commit = commit
    sys.exit(main(sys.argv[1:]))
""")


def test_kill9_then_the_same_command_finishes_every_image_once(tmp_path, model_args, capsys):
    src = tmp_path / "src"
    for i in range(10):
        _image(src / f"{i % 3}" / f"{i:03d}.png", 100 + i)
    (src / "1" / "broken.png").write_bytes(b"garbage")
    n = 11
    args = ["predict", str(src), "--variant", "tf", "--batch-size", "3", "--maps", "npy", *model_args]
    assert main([*args, "--out", str(tmp_path / "whole"), "--workers", "2"]) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(__import__("torch").get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, *args, "--out", str(out), "--workers", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline()  # blocks until the first batch is committed and the second is half-written
        assert line.startswith("COMMITTED 1"), proc.stderr.read()[-3000:]
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    assert not (out / "scores.csv").exists()
    con = sqlite3.connect(out / "store" / "part-0.sqlite")
    assert con.execute("SELECT count(*) FROM rows").fetchone()[0] == 3  # the committed batch, not the torn one
    con.close()
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--workers", "0"]) == 0
    assert "3 already scored before" in capsys.readouterr().out  # the committed batch was not scored again
    whole, resumed = archive.read_csv(tmp_path / "whole" / "scores.csv"), archive.read_csv(out / "scores.csv")
    assert len({r["image"] for r in resumed}) == len(resumed) == n  # each image once
    assert [(r["image"], r["error"]) for r in resumed] == [(r["image"], r["error"]) for r in whole]
    for a, b in zip(whole, resumed):
        for k in ("score", "image_prob", "map_top"):
            assert (a[k] == b[k] == "") or abs(float(a[k]) - float(b[k])) <= TOL, (a, b)
    assert (out / "scores.csv").read_text() == (tmp_path / "whole" / "scores.csv").read_text()
    # once complete, the same command scores nothing again and writes the same files
    assert main([*args, "--out", str(out), "--workers", "0"]) == 0
    assert (out / "scores.csv").read_text() == (tmp_path / "whole" / "scores.csv").read_text()


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_processes_give_the_rows_of_one(archive_dir, model_args, tmp_path):
    args = ["predict", str(archive_dir), "--variant", "all", "--batch-size", "2", "--workers", "0", "--maps", "none",
            *model_args]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_port()), "-m", "mrad_core", *args, "--out", str(tmp_path / "two")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote 6 image(s)") == 1  # rank 0 alone reports
    assert sorted(p.name for p in (tmp_path / "two" / "store").iterdir() if p.suffix == ".sqlite") == \
        ["part-0.sqlite", "part-1.sqlite"]  # each rank wrote its own part
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one, two = (archive.read_csv(tmp_path / d / "scores.csv") for d in ("one", "two"))
    key = lambda rows: [(r["image"], r["variant"], r["error"]) for r in rows]  # noqa: E731
    assert key(one) == key(two)
    for a, b in zip(one, two):
        for k in ("score", "image_prob", "map_top"):
            assert (a[k] == b[k] == "") or abs(float(a[k]) - float(b[k])) <= TOL, (a, b)


PEAK_RSS = textwrap.dedent("""
    import json, resource, sys
    from mrad_core import MRADConfig, Detector, archive

    folder, out, files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    # the tiny model at 28 px (a 2x2 patch grid): the same pipeline, cheap enough for 20,000 images in a test
    config = MRADConfig(model_name=files["model"], image_size=28)
    det = Detector.from_files(files["backbone"], files["heads"], files["image_bank"], files["patch_bank"],
                              config=config, device="cpu", batch_size=128)
    items = archive.expand([folder])
    summary = archive.score_archive(det, items, ("tf",), out, identity={"n": len(items)}, batch_size=128,
                                    workers=1, maps="none", progress=False)
    print(json.dumps({**summary, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def test_peak_memory_is_flat_in_the_number_of_images(tmp_path, tiny_files):
    sources = [_image(tmp_path / "src" / f"{i}.png", 200 + i, size=(20, 24)) for i in range(4)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    files = json.dumps({k: v for k, v in tiny_files.items() if k != "images"})
    peaks = {}
    for n in (200, 20_000):
        folder = tmp_path / f"n{n}"
        for i in range(n):  # distinct paths (each its own row), hard links to a few tiny files
            path = folder / f"{i // 1000:02d}" / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(sources[i % len(sources)], path)
        r = subprocess.run([sys.executable, "-c", PEAK_RSS, str(folder), str(tmp_path / f"out{n}"), files],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["images"] == n and result["errors"] == 0
        peaks[n] = result["peak_kb"]
    assert len(archive.read_csv(tmp_path / "out20000" / "scores.csv")) == 20_000
    assert peaks[20_000] <= 1.10 * peaks[200], peaks


def test_profile_fills_the_anomalous_column(archive_dir, tiny_detector, tiny_files, model_args, tmp_path):
    from mrad_core.profile import Profile, calibrate
    profile = calibrate(tiny_detector, tiny_files["images"], rate=0.5, name="p").save(tmp_path / "p.json")
    out = tmp_path / "out"
    assert main(["predict", str(archive_dir), "--out", str(out), "--variant", "tf", "--profile", str(profile),
                 "--workers", "0", "--maps", "none", *model_args]) == 0
    threshold = Profile.load(profile).variant("tf").image_threshold
    rows = archive.read_csv(out / "scores.csv")
    for r in rows:
        want = "" if r["error"] else ("true" if float(r["score"]) >= threshold else "false")
        assert r["anomalous"] == want, r
    scores = json.loads((out / "scores.json").read_text())
    assert scores["a/001.png"]["tf"]["anomalous"] == (rows[0]["anomalous"] == "true")

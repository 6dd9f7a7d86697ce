"""`mrad bank add | inspect | remove | merge` on the tiny model: files, provenance, exact undo, one-line errors."""
import pytest
import torch

from mrad_core import MemoryBank
from mrad_core.cli import main
from tiny_model import synthetic_image


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    d = tmp_path_factory.mktemp("examples")
    good, _ = synthetic_image(400, size=(90, 90))
    bad, mask = synthetic_image(401, size=(90, 90), defect=True)
    good.save(d / "good.png")
    bad.save(d / "bad.png")
    mask.save(d / "bad_mask.png")
    return {"good": str(d / "good.png"), "bad": str(d / "bad.png"), "mask": str(d / "bad_mask.png")}


@pytest.fixture
def model(tiny_files):
    return ["--model", tiny_files["model"], "--backbone", tiny_files["backbone"], "--device", "cpu"]


def _pair(d):
    return (MemoryBank.load(d / "image_bank.safetensors", "image"),
            MemoryBank.load(d / "patch_bank.safetensors", "patch"))


def _fails(argv, capsys, message):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_add_inspect_remove_merge(tiny_files, examples, model, tmp_path, capsys):
    f = tiny_files
    ib0, pb0 = MemoryBank.load(f["image_bank"], "image"), MemoryBank.load(f["patch_bank"], "patch")
    pair = ["--image-bank", f["image_bank"], "--patch-bank", f["patch_bank"]]
    added = tmp_path / "added"
    assert main(["bank", "add", *pair, "--normal", examples["good"], "--defect",
                 f"{examples['bad']}:{examples['mask']}", "--out", str(added), *model]) == 0
    ib, pb = _pair(added)
    assert ib.ids == [*ib0.ids, examples["good"], examples["bad"]] and ib.labels[-2:].tolist() == [0, 1]
    assert pb.labels[len(pb0):].tolist() == [0, 1, 0] and pb.owner[len(pb0):].tolist() == [4, 5, 5]
    assert ib.thumbnails.shape == (6, 64, 64, 3) and ib.thumbnails[-1].any() and not ib.thumbnails[0].any()
    assert torch.equal(ib.keys[:len(ib0)], ib0.keys)

    capsys.readouterr()
    assert main(["bank", "inspect", str(added / "image_bank.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "entries: 6 (3 normal, 3 anomalous)" in out and "source: synthetic" in out and examples["bad"] in out
    assert main(["bank", "inspect", str(added / "patch_bank.safetensors")]) == 0
    assert "2 patch entries (1 normal, 1 anomalous)" in capsys.readouterr().out

    undone = tmp_path / "undone"
    assert main(["bank", "remove", "--image-bank", str(added / "image_bank.safetensors"), "--patch-bank",
                 str(added / "patch_bank.safetensors"), "--last", "2", "--out", str(undone)]) == 0
    ib2, pb2 = _pair(undone)
    for a, b in ((ib2, ib0), (pb2, pb0)):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values) and a.ids == b.ids
    assert torch.equal(pb2.owner, pb0.owner)

    only_bad = tmp_path / "only_bad"
    assert main(["bank", "remove", "--image-bank", str(added / "image_bank.safetensors"), "--patch-bank",
                 str(added / "patch_bank.safetensors"), "--id", examples["good"], "--out", str(only_bad)]) == 0
    assert _pair(only_bad)[0].ids[-1] == examples["bad"]

    fresh = tmp_path / "fresh"
    assert main(["bank", "add", "--normal", examples["good"], "--out", str(fresh), *model]) == 0
    assert "only normal entries" in capsys.readouterr().out
    merged = tmp_path / "merged"
    assert main(["bank", "merge", *pair, "--image-bank", str(fresh / "image_bank.safetensors"), "--patch-bank",
                 str(fresh / "patch_bank.safetensors"), "--out", str(merged)]) == 0
    mi, mp = _pair(merged)
    assert mi.ids == [*ib0.ids, examples["good"]] and mp.owner[-1].item() == 4
    assert torch.equal(mi.keys, torch.cat([ib0.keys, _pair(fresh)[0].keys]))


def test_bank_errors_are_one_line(tiny_files, examples, model, tmp_path, capsys):
    f = tiny_files
    pair = ["--image-bank", f["image_bank"], "--patch-bank", f["patch_bank"]]
    out = str(tmp_path / "o")
    _fails(["bank", "add", *pair, "--defect", examples["bad"], "--out", out, *model], capsys, "IMG:MASK")
    _fails(["bank", "add", "--image-bank", f["image_bank"], "--normal", examples["good"], "--out", out, *model],
           capsys, "give both --image-bank and --patch-bank")
    _fails(["bank", "add", *pair, "--out", out, *model], capsys, "nothing to add")
    _fails(["bank", "add", *pair, "--defect", f"{examples['bad']}:{tmp_path / 'no.png'}", "--out", out, *model],
           capsys, "no.png")
    _fails(["bank", "add", *pair, "--normal", examples["good"], examples["good"], "--out", out, *model], capsys,
           "given twice or already in the bank")
    _fails(["bank", "remove", *pair, "--id", "nope", "--out", out], capsys, "no image nope")
    _fails(["bank", "merge", *pair, "--out", out], capsys, "at least two bank pairs")
    _fails(["bank", "merge", *pair, *pair, "--out", out], capsys, "both banks hold image")
    assert not (tmp_path / "o").exists()

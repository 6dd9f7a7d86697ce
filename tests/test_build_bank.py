"""Bank building over a dataset: same banks as BankBuilder fed image by image, any batch size, provenance,
nothing half-written, resumable."""
import json

import pytest
import torch

import mrad_core.build as build_mod
from mrad_core import BankBuilder, Detector, MemoryBank, load_mask
from mrad_core.build import build_banks
from mrad_core.cli import main
from mrad_core.datasets import read_dataset
from synthetic_datasets import make_dataset


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    make_dataset("mvtec", root, n_normal=2, n_bad=1)  # 2 classes x (2 good + 2 defects x 1) = 8 test images
    return root


@pytest.fixture(scope="module")
def detector(tiny_files, tiny_config):
    return Detector.from_files(tiny_files["backbone"], config=tiny_config, device="cpu")


@pytest.fixture(scope="module")
def reference_banks(mvtec, detector):
    """Built the plain way: BankBuilder fed one image at a time."""
    builder = BankBuilder()
    for r in read_dataset("mvtec", mvtec):
        builder.add(detector.encode([r.image]), [r.anomaly], load_mask(r.mask)[None])
    return builder.build()


class Counting:
    """A Detector stand-in that counts encodes and can fail at the n-th one."""

    def __init__(self, det, fail_at=None):
        self.det, self.fail_at, self.calls = det, fail_at, 0

    def encode(self, pixels):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.det.encode(pixels)

    def __getattr__(self, name):
        return getattr(self.det, name)


def _same(a: MemoryBank, b: MemoryBank):
    assert torch.equal(a.values, b.values)
    torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_matches_bank_builder_any_batch_size(mvtec, detector, reference_banks, batch_size):
    records = read_dataset("mvtec", mvtec)
    counting = Counting(detector)
    image, patch = build_banks(counting, records, mvtec, source="mvtec", batch_size=batch_size, progress=False)
    assert counting.calls == -(-len(records) // batch_size)  # every image encoded exactly once
    _same(image, reference_banks[0])
    _same(patch, reference_banks[1])
    assert len(image) == 8 and image.labels.tolist() == [r.anomaly for r in records]
    # a normal image gives one (normal) patch entry, an anomalous one two (anomalous first)
    assert len(patch) == 8 + sum(r.anomaly for r in records)
    assert image.meta["image_ids"][0] == "bottle/test/crack/000.png"


def test_resumes_after_interruption(mvtec, detector, reference_banks, tmp_path):
    records = read_dataset("mvtec", mvtec)
    work = tmp_path / "work"
    kw = dict(source="mvtec", batch_size=2, chunk=4, work_dir=work, progress=False)
    with pytest.raises(KeyboardInterrupt):  # dies in the 4th batch: chunk 0 (batches 1-2) is saved
        build_banks(Counting(detector, fail_at=4), records, mvtec, **kw)
    assert sorted(p.name for p in work.glob("part-*")) == ["part-00000.safetensors"]
    resumed = Counting(detector)
    image, patch = build_banks(resumed, records, mvtec, **kw)
    assert resumed.calls == 2  # only chunk 1 (4 images, 2 batches) is encoded again
    _same(image, reference_banks[0])
    _same(patch, reference_banks[1])
    # a work dir of a different build (other chunking here) is not reused
    again = Counting(detector)
    build_banks(again, records, mvtec, **{**kw, "chunk": 3})
    assert again.calls == 5  # chunks of 3, 3, 2 images in batches of 2


def _cli(mvtec, tiny_files, out, *extra):
    return main(["build-bank", "--dataset", "mvtec", "--data-path", str(mvtec), "--out", str(out),
                 "--model", tiny_files["model"], "--backbone", tiny_files["backbone"], "--device", "cpu",
                 "--workers", "0", *extra])


def test_cli_writes_banks_with_provenance(mvtec, tiny_files, reference_banks, tmp_path):
    assert _cli(mvtec, tiny_files, tmp_path / "banks", "--batch-size", "4") == 0
    image = MemoryBank.load(tmp_path / "banks/image_bank.safetensors", "image")
    patch = MemoryBank.load(tmp_path / "banks/patch_bank.safetensors", "patch")
    _same(image, reference_banks[0])
    _same(patch, reference_banks[1])
    meta = image.meta
    assert meta["source"] == "mvtec" and meta["dataset"] == "mvtec" and meta["split"] == "test"
    assert meta["backbone"] == "tiny_backbone.safetensors" and meta["created"][:2] == "20"
    assert len(meta["image_ids"]) == 8 and meta["image_ids"][-1] == "cable/test/hole/000.png"
    assert patch.meta["image_ids"] == meta["image_ids"]
    assert not (tmp_path / "banks/.build-work").exists()  # cleaned up after success


def test_cli_interrupted_run_leaves_no_bank_and_resumes(mvtec, tiny_files, reference_banks, tmp_path,
                                                        monkeypatch):
    calls = {"n": 0}
    real = build_mod._entries

    def flaky(det, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(det, batch)

    monkeypatch.setattr(build_mod, "_entries", flaky)
    out = tmp_path / "banks"
    assert _cli(mvtec, tiny_files, out, "--batch-size", "2", "--checkpoint-every", "4") == 130
    assert not (out / "image_bank.safetensors").exists() and not (out / "patch_bank.safetensors").exists()
    assert json.loads((out / ".build-work/manifest.json").read_text())["chunks"] == 2
    calls["n"] = -100  # no more failures
    assert _cli(mvtec, tiny_files, out, "--batch-size", "2", "--checkpoint-every", "4") == 0
    assert calls["n"] == -100 + 2  # chunk 0 came from the work dir
    _same(MemoryBank.load(out / "image_bank.safetensors", "image"), reference_banks[0])
    _same(MemoryBank.load(out / "patch_bank.safetensors", "patch"), reference_banks[1])


def test_cli_user_errors(mvtec, tiny_files, tmp_path, capsys):
    assert _cli(tmp_path / "nothing", tiny_files, tmp_path / "o") == 2
    assert "expected the folder" in capsys.readouterr().err
    assert _cli(mvtec, tiny_files, tmp_path / "o", "--split", "validation") == 2
    assert "no split 'validation'" in capsys.readouterr().err


@pytest.mark.parity
def test_cli_rebuilds_fixture_banks_full_size(parity_dir, parity_backbone, tmp_path):
    """`mrad build-bank` over the fixture's six bank images (as an MVTec-layout dataset) reproduces the banks the
    reference built from them."""
    import shutil
    root = tmp_path / "fixture"
    for kind in ("good", "bad"):
        for i in range(3):
            name = f"bank_{kind}_{i}.png"
            (root / "parts/test" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(parity_dir / "images" / name, root / "parts/test" / kind / name)
            if kind == "bad":
                (root / "parts/ground_truth/bad").mkdir(parents=True, exist_ok=True)
                shutil.copy(parity_dir / "masks" / name, root / "parts/ground_truth/bad" / name)
    out = tmp_path / "banks"
    assert main(["build-bank", "--dataset", "mvtec", "--data-path", str(root), "--out", str(out), "--backbone",
                 str(parity_backbone), "--device", "cpu", "--workers", "0", "--batch-size", "4"]) == 0
    for kind, ref in (("image", "cache_model_fixture.pt"), ("patch", "cache_patch_model_fixture.pt")):
        ours = MemoryBank.load(out / f"{kind}_bank.safetensors", kind)
        theirs = MemoryBank.load(parity_dir / ref, kind)
        assert ours.keys.shape == theirs.keys.shape
        nearest = torch.cdist(theirs.keys, ours.keys).argmin(1)  # the reference's order may differ
        assert sorted(nearest.tolist()) == list(range(len(ours)))
        assert torch.abs(ours.keys[nearest] - theirs.keys).max() <= 1e-5
        assert torch.equal(ours.values[nearest], theirs.values)

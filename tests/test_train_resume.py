"""Training that stops after an epoch and resumes from OUT/checkpoint.safetensors gives the losses and the heads of an
uninterrupted run; a checkpoint of other options is refused; `mrad train --resume` continues from it."""
import pytest
import torch

from mrad_core import Backbone, Detector
from mrad_core.cli import main
from mrad_core.datasets import read_dataset
from mrad_core.errors import MRADError
from mrad_core.heads import Heads
from mrad_core.train import CHECKPOINT, TrainConfig, encode_dataset, train
from test_train import make_mvtec
from tiny_model import random_heads

TOL = 1e-6


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("mvtec"))


@pytest.fixture(scope="module")
def setup(tiny_files, tiny_config, data_root, tmp_path_factory):
    detector = Detector(Backbone.load(tiny_files["backbone"], tiny_config), device="cpu", batch_size=3)
    records = read_dataset("mvtec", data_root, "test")
    store, image_bank, patch_bank = encode_dataset(detector, records, tmp_path_factory.mktemp("features"),
                                                   workers=0, progress=False, source="tiny")
    return detector.backbone, store, image_bank, patch_bank


class Stop(Exception):
    pass


def _stop_after(epoch):
    def on_epoch(summary):
        if summary["epoch"] == epoch:
            raise Stop
    return on_epoch


def _losses(history):
    return [(h["epoch"], h["stage"], {k: v for k, v in h.items() if k.endswith("loss") or k == "lr"})
            for h in history]


@pytest.mark.parametrize("cfg", [TrainConfig(variant="clip", ft_epochs=1, clip_epochs=2, batch_size=3),
                                 TrainConfig(variant="ft", ft_epochs=2, batch_size=3)], ids=["clip", "ft-cosine"])
def test_resume_after_epoch_1_equals_an_uninterrupted_run(setup, cfg, tmp_path):
    backbone, store, image_bank, patch_bank = setup
    whole_heads = random_heads()
    whole = train(whole_heads, backbone, store, image_bank, patch_bank, cfg, tmp_path / "whole", progress=False)
    out = tmp_path / "stopped"
    with pytest.raises(Stop):
        train(random_heads(), backbone, store, image_bank, patch_bank, cfg, out, progress=False,
              on_epoch=_stop_after(1))
    assert (out / CHECKPOINT).is_file() and not (out / "heads.safetensors").exists()
    torch.manual_seed(12345)  # another process: other global RNG state, other heads in memory
    resumed_heads = random_heads(seed=7)
    resumed = train(resumed_heads, backbone, store, image_bank, patch_bank, cfg, out, progress=False, resume=True)
    assert [h["epoch"] for h in resumed] == list(range(1, cfg.epochs + 1))
    for (e1, s1, a), (e2, s2, b) in zip(_losses(whole), _losses(resumed)):
        assert (e1, s1) == (e2, s2) and a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= TOL, (e1, k, a[k], b[k])
    assert "resumed from" in (out / "train.log").read_text()
    final_whole, final_resumed = (Heads.load(d / "heads.safetensors").state_dict() for d in (tmp_path / "whole", out))
    for k in final_whole:
        torch.testing.assert_close(final_whole[k], final_resumed[k], rtol=0, atol=TOL)
    # a checkpoint of other options is refused, naming the difference
    other = TrainConfig(**{**cfg.__dict__, "lr": 1e-3})
    with pytest.raises(MRADError, match="lr"):
        train(random_heads(), backbone, store, image_bank, patch_bank, other, out, progress=False, resume=True)


def test_cli_train_resume(tiny_files, data_root, tmp_path):
    out = tmp_path / "run"
    common = ["train", "--variant", "clip", "--out", str(out), "--init", tiny_files["heads"], "--clip-epochs", "1",
              "--dataset", "mvtec", "--data-path", str(data_root), "--backbone", tiny_files["backbone"],
              "--model", tiny_files["model"], "--device", "cpu", "--batch-size", "2", "--workers", "0"]
    assert main(common) == 0
    first = Heads.load(out / "heads.safetensors").state_dict()
    assert (out / CHECKPOINT).is_file()
    assert main([*common, "--resume"]) == 0  # both epochs are in the checkpoint: nothing left to train
    log = (out / "train.log").read_text()
    assert "resumed from" in log and "after epoch 2/2" in log
    again = Heads.load(out / "heads.safetensors").state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert main([*common, "--resume", "--lr", "0.001"]) == 2

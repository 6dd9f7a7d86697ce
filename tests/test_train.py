"""MRAD-FT / MRAD-CLIP training on the tiny model: steps reduce the loss, stages train the right heads,
checkpoints load back and score the same, the official export, init_heads, and `mrad train` end to end."""
import numpy as np
import pytest
import torch

from mrad_core import Backbone, BankBuilder, Detector, MemoryBank, load_mask
from mrad_core.cli import main
from mrad_core.datasets import read_dataset
from mrad_core.errors import MRADError
from mrad_core.heads import Heads
from mrad_core.losses import Features, ft_losses
from mrad_core.train import TrainConfig, encode_dataset, init_heads, train
from tiny_model import random_heads, synthetic_image


def make_mvtec(root, cls="widget", n=2):
    """A tiny MVTec-layout dataset: n normal train, n normal test and n defective test images with masks."""
    for split, defect in (("train", "good"), ("test", "good"), ("test", "crack")):
        (root / cls / split / defect).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = synthetic_image(hash((split, defect, i)) % 1000, size=(80, 96), defect=defect != "good")
            img.save(root / cls / split / defect / f"{i:03d}.png")
            if defect != "good":
                (root / cls / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                mask.save(root / cls / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("mvtec"))


@pytest.fixture(scope="module")
def detector(tiny_files, tiny_config):
    return Detector(Backbone.load(tiny_files["backbone"], tiny_config), device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def encoded(detector, data_root, tmp_path_factory):
    records = read_dataset("mvtec", data_root, "test")
    store, image_bank, patch_bank = encode_dataset(detector, records, tmp_path_factory.mktemp("features"),
                                                   workers=0, progress=False, source="tiny")
    return records, store, image_bank, patch_bank


def _state(heads, group):
    return {k: v.clone() for k, v in heads.state_dict().items() if k.startswith(group + ".")}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_encode_dataset_matches_direct_encoding(encoded, detector):
    records, store, image_bank, patch_bank = encoded
    assert len(store) == len(records) == 4
    enc = detector.encode([r.image for r in records])
    masks = torch.stack([load_mask(r.mask) for r in records])
    labels = [r.anomaly for r in records]
    feats, gt, got_labels = store.batch(np.arange(4))
    want = Features.from_encoding(enc)
    for name in ("image", "patches", "tokens"):
        assert torch.allclose(getattr(feats, name), getattr(want, name), atol=1e-6), name
    assert torch.equal(gt, masks) and got_labels.tolist() == labels
    builder = BankBuilder()
    builder.add(enc, labels, masks)
    ib, pb = builder.build()
    assert torch.allclose(image_bank.keys, ib.keys, atol=1e-6) and torch.equal(image_bank.values, ib.values)
    assert torch.allclose(patch_bank.keys, pb.keys, atol=1e-6) and torch.equal(patch_bank.values, pb.values)
    assert len(patch_bank) == 2 + 2 * 2  # one entry per normal image, two per defective one


def test_encode_dataset_reuses_a_complete_store(encoded, detector, monkeypatch):
    records, store, *_ = encoded
    monkeypatch.setattr(detector, "encode", lambda *a, **k: pytest.fail("re-encoded"))
    again, ib, _ = encode_dataset(detector, records, store.folder, workers=0, progress=False)
    assert len(again) == len(store) and len(ib) == 4


def test_one_ft_step_reduces_the_loss(encoded):
    _, store, image_bank, patch_bank = encoded
    heads = random_heads()
    feats, gt, labels = store.batch(np.arange(4))
    opt = torch.optim.Adam([*heads.image_proj.parameters(), *heads.patch_proj.parameters()], lr=4e-4,
                           betas=(0.5, 0.999))
    before = ft_losses(heads, feats, gt, labels, image_bank, patch_bank)
    before["loss"].backward()
    opt.step()
    with torch.no_grad():
        after = ft_losses(heads, feats, gt, labels, image_bank, patch_bank)
    assert after["seg_loss"] < before["seg_loss"] and after["image_loss"] < before["image_loss"]


def test_clip_training_stages_checkpoints_and_export(encoded, detector, tmp_path):
    records, store, image_bank, patch_bank = encoded
    heads = random_heads()
    start = {g: _state(heads, g) for g in ("image_proj", "patch_proj", "prompt_learner", "prompt_proj")}
    cfg = TrainConfig(variant="clip", ft_epochs=1, clip_epochs=1, batch_size=3, official=True)
    history = train(heads, detector.backbone, store, image_bank, patch_bank, cfg, tmp_path, progress=False)
    assert [(h["epoch"], h["stage"]) for h in history] == [(1, "ft"), (2, "clip")]
    assert {"seg_loss", "image_loss"} <= set(history[0]) and "clip_loss" in history[1]
    assert all(np.isfinite(v) for h in history for k, v in h.items() if k.endswith("loss"))
    e1, e2 = (Heads.load(tmp_path / f"heads_epoch{i}.safetensors") for i in (1, 2))
    # FT stage trains the projections only; CLIP stage only the prompt heads (patch projection frozen)
    for g in ("image_proj", "patch_proj"):
        assert not _equal(_state(e1, g), start[g]) and _equal(_state(e2, g), _state(e1, g)), g
    for g in ("prompt_learner", "prompt_proj"):
        assert _equal(_state(e1, g), start[g]) and not _equal(_state(e2, g), _state(e1, g)), g
    final = Heads.load(tmp_path / "heads.safetensors")
    assert _equal(final.state_dict(), e2.state_dict()) and _equal(final.state_dict(), heads.state_dict())
    assert final.meta["provenance"]["variant"] == "clip" and final.meta["provenance"]["epoch"] == 2
    # the checkpoint scores exactly as the heads in memory
    enc = detector.encode([r.image for r in records])
    for v in ("ft", "clip"):
        mine = Detector(detector.backbone, heads, image_bank, patch_bank, device="cpu").score(enc, v)
        loaded = Detector(detector.backbone, final, image_bank, patch_bank, device="cpu").score(enc, v)
        np.testing.assert_allclose(mine.score, loaded.score, rtol=0, atol=1e-6, err_msg=v)  # same tensors (above);
        np.testing.assert_allclose(mine.map, loaded.map, rtol=0, atol=1e-6, err_msg=v)  # float order may differ
    log = (tmp_path / "train.log").read_text()
    assert "epoch 1/2 [ft]" in log and "epoch 2/2 [clip]" in log
    # official layout: plain tensors, loads with weights_only, strict-loadable extras present
    official = torch.load(tmp_path / "mrad_clip_final.pth", weights_only=True)
    assert set(official) == {"image_proj", "patch_proj", "prompt_proj", "prompt_learner"}
    assert "compound_prompt_projections.0.weight" in official["prompt_learner"]
    assert _equal(Heads.load(tmp_path / "mrad_clip_epoch_2.pth").state_dict(), final.state_dict())
    assert (tmp_path / "mrad_clip_epoch_1.pth").is_file()


def test_ft_variant_anneals_to_eta_min_and_saves_ft_heads_only(encoded, detector, tmp_path):
    _, store, image_bank, patch_bank = encoded
    torch.manual_seed(0)
    heads = Heads(dict(dim=32), dict(in_dim=64, dim=32))
    cfg = TrainConfig(variant="ft", batch_size=2, official=True)
    history = train(heads, detector.backbone, store, image_bank, patch_bank, cfg, tmp_path, progress=False)
    assert len(history) == 1 and history[0]["lr"] == pytest.approx(1e-6)  # cosine over the 2 steps of the epoch
    official = torch.load(tmp_path / "mrad_ft_final.pth", weights_only=True)
    assert set(official) == {"image_proj", "patch_proj"}
    assert not Heads.load(tmp_path / "heads.safetensors").has_clip
    with pytest.raises(MRADError, match="prompt learner"):
        train(heads, detector.backbone, store, image_bank, patch_bank, TrainConfig(variant="clip"), tmp_path,
              progress=False)


def test_train_config_rejects_nonsense():
    with pytest.raises(MRADError):
        TrainConfig(variant="tf")
    with pytest.raises(MRADError):
        TrainConfig(variant="ft", ft_epochs=0)
    assert TrainConfig(variant="clip").epochs == 6 and TrainConfig(variant="ft").epochs == 1
    assert TrainConfig(variant="clip", ft_epochs=0).epochs == 5  # CLIP stage only, from trained FT heads


def _tiny_tokenize(texts):
    """CLIP's tokenizer squeezed into the tiny model's 1000-word vocabulary (EOT stays the largest id)."""
    import open_clip
    ids = open_clip.tokenize(texts)
    return torch.where(ids == 49407, 999, torch.where(ids == 0, 0, ids % 997 + 1))


def test_init_heads_builds_the_prompts_from_the_token_embedding(detector, encoded):
    backbone = detector.backbone
    torch.manual_seed(111)
    heads = init_heads(backbone, tokenize=_tiny_tokenize)
    pl, emb = heads.prompt_learner, backbone.clip.token_embedding.weight
    ids = _tiny_tokenize(["X " * 12 + "object.", "X " * 12 + "damaged object."])
    assert torch.equal(pl.tokenized_prompts_pos[0, 0], ids[0].int())
    assert torch.equal(pl.token_prefix_pos[0, 0], emb[ids[0, :1]])
    assert torch.equal(pl.token_suffix_neg[0, 0], emb[ids[1, 13:]])
    assert pl.tokenized_prompts_pos[0, 0].argmax() == 15 and pl.tokenized_prompts_neg[0, 0].argmax() == 16
    assert len(pl.compound_prompts_text) == 3  # the tiny text tower has 4 layers
    assert 0.015 < pl.ctx_pos.std().item() < 0.025
    assert not init_heads(backbone, clip=False).has_clip
    # fresh heads work end to end
    records, store, image_bank, patch_bank = encoded
    enc = detector.encode([r.image for r in records[:2]])
    result = Detector(backbone, heads, image_bank, patch_bank, device="cpu").score(enc, "clip")
    assert np.isfinite(result.score).all()
    with pytest.raises(MRADError, match="vocabulary"):
        init_heads(backbone)  # CLIP's real token ids do not fit the tiny vocabulary


def test_cli_train_end_to_end(tiny_files, data_root, tmp_path):
    out = tmp_path / "run"
    common = ["--dataset", "mvtec", "--data-path", str(data_root), "--backbone", tiny_files["backbone"],
              "--model", tiny_files["model"], "--device", "cpu", "--batch-size", "2", "--workers", "0"]
    code = main(["train", "--variant", "clip", "--out", str(out), "--init", tiny_files["heads"],
                 "--clip-epochs", "1", "--official", *common])
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"heads_epoch1.safetensors", "heads_epoch2.safetensors", "heads.safetensors", "mrad_clip_epoch_1.pth",
            "mrad_clip_final.pth", "image_bank.safetensors", "patch_bank.safetensors", "train.log"} <= names
    assert "features" not in names  # encodings are removed unless --keep-features
    heads = Heads.load(out / "heads.safetensors")
    assert heads.has_clip and heads.meta["provenance"]["dataset"] == "mvtec"
    bank = MemoryBank.load(out / "image_bank.safetensors", "image")
    assert len(bank) == 4 and bank.meta["source"] == "mvtec/test"
    assert "widget/test/crack/000.png" in bank.meta["image_ids"]
    log = (out / "train.log").read_text()
    assert "4 images, 2 anomalous" in log and "epoch 2/2 [clip]" in log
    # the trained files drive `mrad predict`
    code = main(["predict", tiny_files["images"][0], "--out", str(tmp_path / "pred"), "--heads",
                 str(out / "heads.safetensors"), "--image-bank", str(out / "image_bank.safetensors"),
                 "--patch-bank", str(out / "patch_bank.safetensors"), "--backbone", tiny_files["backbone"],
                 "--model", tiny_files["model"], "--device", "cpu"])
    assert code == 0 and (tmp_path / "pred" / "scores.json").is_file()


def test_cli_train_user_errors(tiny_files, data_root, tmp_path, capsys):
    base = ["train", "--variant", "ft", "--data-path", str(data_root), "--out", str(tmp_path / "o"),
            "--backbone", tiny_files["backbone"], "--model", tiny_files["model"], "--device", "cpu"]
    assert main([*base, "--dataset", "nosuch"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert main([*base, "--dataset", "mvtec", "--image-bank", tiny_files["image_bank"]]) == 2
    assert "--patch-bank" in capsys.readouterr().err
    assert main([*base, "--dataset", "mvtec", "--init", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_train_ft_keeps_the_ft_heads_only(tiny_files, data_root, tmp_path):
    out = tmp_path / "ft"
    code = main(["train", "--variant", "ft", "--dataset", "mvtec", "--data-path", str(data_root), "--out", str(out),
                 "--init", tiny_files["heads"], "--backbone", tiny_files["backbone"], "--model", tiny_files["model"],
                 "--device", "cpu", "--workers", "0", "--official"])
    assert code == 0
    assert not Heads.load(out / "heads.safetensors").has_clip  # as the reference's mrad_ft checkpoints
    assert set(torch.load(out / "mrad_ft_final.pth", weights_only=True)) == {"image_proj", "patch_proj"}
    assert "epoch 1/1 [ft] lr 1.00e-06" in (out / "train.log").read_text()  # cosine schedule ran to its end

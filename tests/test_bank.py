"""Memory banks: official and own formats, validation messages, and the builder's region rules."""
import pickle

import pytest
import torch
import torch.nn.functional as F

from mrad_core.bank import BankBuilder, BankError, MemoryBank, one_hot, patch_entries


def _bank(n=4, d=8, kind="image"):
    torch.manual_seed(n)
    return MemoryBank(F.normalize(torch.randn(n, d), dim=-1), one_hot([0, 1] * (n // 2)), kind,
                      {"source": "unit", "image_ids": [f"im{i}" for i in range(n)]})


def test_official_pt_loads(tmp_path):
    b = _bank()
    torch.save({"keys": b.keys, "values": b.values}, tmp_path / "cache_model_x.pt")
    loaded = MemoryBank.load(tmp_path / "cache_model_x.pt", "image")
    assert torch.equal(loaded.keys, b.keys) and torch.equal(loaded.values, b.values)
    assert loaded.meta["format"] == "official"


def test_safetensors_round_trip_keeps_metadata(tmp_path):
    b = _bank(kind="patch")
    b.save(tmp_path / "p.safetensors")
    loaded = MemoryBank.load(tmp_path / "p.safetensors", "patch")
    assert torch.equal(loaded.keys, b.keys) and torch.equal(loaded.values, b.values)
    assert loaded.meta["image_ids"] == ["im0", "im1", "im2", "im3"] and loaded.source == "unit"
    with pytest.raises(BankError, match="is a patch bank"):
        MemoryBank.load(tmp_path / "p.safetensors", "image")


def test_validation_messages(tmp_path):
    with pytest.raises(BankError, match="one-hot"):
        MemoryBank(torch.randn(3, 4), torch.tensor([[1.0, 0], [0.5, 0.5], [0, 1]]))
    with pytest.raises(BankError, match=r"values must be \(3, 2\)"):
        MemoryBank(torch.randn(3, 4), torch.ones(2, 2))
    with pytest.raises(BankError, match="swapped"):
        _bank(d=1024).check(768, "image bank")
    torch.save({"keys": torch.randn(2, 3)}, tmp_path / "nokeys.pt")
    with pytest.raises(BankError, match="expected tensors 'keys' and 'values'"):
        MemoryBank.load(tmp_path / "nokeys.pt")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(BankError, match="cannot be read"):
        MemoryBank.load(tmp_path / "junk.pt")
    with pytest.raises(BankError, match="no such file"):
        MemoryBank.load(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_never_unpickled(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"keys": _Evil(), "values": torch.zeros(1, 2)}, f)
    with pytest.raises(BankError, match="cannot be read"):
        MemoryBank.load(tmp_path / "evil.pt")
    assert "pwned" not in capsys.readouterr().out


def test_patch_entries_follow_the_region_rules():
    g = 4
    tokens = torch.randn(2, g * g, 6)
    masks = torch.zeros(2, 10, 10)
    masks[0, :4, :4] = 1  # image 0: top-left corner anomalous; grid cell 0 fully inside, its neighbours partly
    keys, labels = patch_entries(tokens, masks)
    assert labels.tolist() == [1, 0, 0]  # image 0: anomalous then normal; image 1: normal only
    grid = F.interpolate(masks[:1, None], size=(g, g), mode="bilinear", align_corners=False).view(-1)
    anomalous, normal = grid == 1, grid == 0
    assert anomalous.sum() > 0 and normal.sum() > 0
    assert torch.allclose(keys[0], F.normalize(tokens[0][anomalous].mean(0), dim=0), atol=1e-6)
    assert torch.allclose(keys[1], F.normalize(tokens[0][normal].mean(0), dim=0), atol=1e-6)
    assert torch.allclose(keys[2], F.normalize(tokens[1].mean(0), dim=0), atol=1e-6)
    # cells that are neither exactly 0 nor exactly 1 (the mask's border) belong to no region
    assert (anomalous | normal).sum() < g * g


def test_builder_labels_and_ids(tiny_detector, tiny_files):
    enc = tiny_detector.encode(tiny_files["images"])
    b = BankBuilder(source="t")
    masks = torch.zeros(2, 518, 518)
    masks[1, 100:300, 100:300] = 1
    b.add(enc, [0, 1], masks, ["a", "b"])
    image_bank, patch_bank = b.build()
    assert image_bank.labels.tolist() == [0, 1] and image_bank.meta["image_ids"] == ["a", "b"]
    assert torch.allclose(image_bank.keys.norm(dim=1), torch.ones(2))
    assert patch_bank.labels.tolist() == [0, 1, 0]
    with pytest.raises(BankError, match="no images"):
        BankBuilder().build()

"""Why this score: `--explain` entries carry the retrieval's own softmax weights (recomputed here from the files),
sorted; a patch's explanation matches the map's patch retrieval; banks without ids are shown by index and label."""
import json

import pytest
import torch
import torch.nn.functional as F

from mrad_core import Heads, MemoryBank
from mrad_core.cli import main
from mrad_core.errors import MRADError
from mrad_core.explain import NO_IMAGES_NOTE, explain_patch, patch_at, thumbnail, top_entries


@pytest.fixture
def model_args(tiny_files):
    f = tiny_files
    return ["--model", f["model"], "--backbone", f["backbone"], "--heads", f["heads"], "--device", "cpu"]


def _softmax_weights(tiny_files, enc, variant):
    """softmax(q Kᵀ) of the image retrieval, recomputed from the files (τ = 1)."""
    bank = MemoryBank.load(tiny_files["image_bank"], "image")
    q = F.normalize(enc.image_feature, dim=-1)
    keys = bank.keys
    if variant != "tf":
        heads = Heads.load(tiny_files["heads"])
        q, keys = heads.image_proj.mlp1(q), heads.image_proj.mlp2(keys)
    return torch.softmax(q @ keys.T, dim=-1).detach(), bank


def test_explain_weights_are_the_softmax_weights_and_sorted(tiny_files, tiny_detector, model_args, tmp_path):
    out = tmp_path / "o"
    f = tiny_files
    assert main(["predict", *f["images"], "--explain", "3", "--out", str(out), "--image-bank", f["image_bank"],
                 "--patch-bank", f["patch_bank"], *model_args]) == 0
    scores = json.loads((out / "scores.json").read_text())
    enc = tiny_detector.encode(f["images"])
    for i, stem in enumerate(("query_0", "query_1")):
        for v in ("tf", "ft", "clip"):
            entries = scores[stem][v]["top_entries"]
            w, bank = _softmax_weights(f, enc[i], v)
            assert len(entries) == 3 and [set(e) for e in entries] == [{"index", "id", "label", "weight"}] * 3
            weights = [e["weight"] for e in entries]
            assert weights == sorted(weights, reverse=True)
            expected = torch.sort(w[0], descending=True)
            assert [e["index"] for e in entries] == expected.indices[:3].tolist()
            torch.testing.assert_close(torch.tensor(weights), expected.values[:3], atol=1e-6, rtol=0)
            for e in entries:
                assert e["id"] == bank.ids[e["index"]]
                assert e["label"] == ("anomalous" if bank.labels[e["index"]] == 1 else "normal")


def test_authors_banks_show_index_and_label_only(tiny_files, model_args, tmp_path, capsys):
    for kind in ("image", "patch"):  # the official torch layout: keys and values only
        b = MemoryBank.load(tiny_files[f"{kind}_bank"], kind)
        torch.save({"keys": b.keys, "values": b.values}, tmp_path / f"{kind}.pt")
    out = tmp_path / "o"
    assert main(["predict", tiny_files["images"][0], "--variant", "tf", "--explain", "10", "--out", str(out),
                 "--image-bank", str(tmp_path / "image.pt"), "--patch-bank", str(tmp_path / "patch.pt"),
                 *model_args]) == 0
    assert NO_IMAGES_NOTE in capsys.readouterr().out
    entries = json.loads((out / "scores.json").read_text())["query_0"]["tf"]["top_entries"]
    assert len(entries) == 4 and all(e["id"] is None for e in entries)  # k is capped at the bank size
    assert abs(sum(e["weight"] for e in entries) - 1) < 1e-5


def test_patch_explanation_matches_the_patch_retrieval(tiny_detector, tiny_files):
    enc = tiny_detector.encode(tiny_files["images"])
    g = tiny_detector.backbone.grid
    for v in ("tf", "ft", "clip"):
        seg = tiny_detector.score(enc, v).extras["seg_probs"]  # (B, N, 2)
        for image, (row, col) in ((0, (3, 5)), (1, (g - 1, 0))):
            e = explain_patch(tiny_detector, enc, v, row, col, k=2, image=image)
            assert abs(e["anomalous"] - seg[image, row * g + col, 1]) < 1e-6
            assert abs(e["normal"] + e["anomalous"] - 1) < 1e-6
            pb = tiny_detector.patch_bank
            for entry in e["top_entries"]:  # provenance: the image each patch entry came from
                assert entry["image_index"] == int(pb.owner[entry["index"]])
                assert entry["id"] == pb.ids[entry["image_index"]]
    assert patch_at(517.9, 0, 518, 518, g) == (0, g - 1) and patch_at(0, 99, 50, 100, g) == (g - 1, 0)
    assert thumbnail(tiny_detector.image_bank, 0) is None  # the tiny banks store none
    with pytest.raises(MRADError, match="outside"):
        explain_patch(tiny_detector, enc, "tf", g, 0)
    with pytest.raises(MRADError, match="at least 1"):
        top_entries(tiny_detector, enc, "tf", 0)

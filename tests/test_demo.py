"""The offline demo's parts: real ImageNet weights converted correctly, real digits data, the command end to end."""

from hf_starsse.cli import main as cli_main
from hf_starsse.digits import load_digits_dataset
from hf_starsse.efficientnet_lite0 import build_efficientnet_lite0_checkpoint

import json

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_efficientnet_lite0_checkpoint(tmp_path_factory.mktemp("pretrained") / "efficientnet_lite0")


def test_converted_efficientnet_recognises_a_real_cat_photo(checkpoint):
    skimage_data = pytest.importorskip("skimage.data")
    model = AutoModelForImageClassification.from_pretrained(checkpoint).eval()
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    pixels = processor(skimage_data.chelsea(), return_tensors="pt")["pixel_values"]  # a tabby cat photo
    with torch.no_grad():
        probs = model(pixel_values=pixels).logits.softmax(-1)[0]
    cats = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert int(probs.argmax()) in cats
    assert float(probs[list(cats)].sum()) > 0.8
    assert "cat" in model.config.id2label[int(probs.argmax())]


def test_digits_splits_are_disjoint_stratified_and_real():
    data = load_digits_dataset(train_per_class=5, validation_size=100, seed=3)
    assert [len(data[s]) for s in ("train", "validation", "test")] == [50, 100, 1797 - 150]
    assert sorted(data["train"]["label"]) == sorted(list(range(10)) * 5)
    pixels = {split: {np.asarray(img).tobytes() for img in data[split]["image"]} for split in data}
    assert len(pixels["train"] & pixels["test"]) <= 2  # sklearn's digits hold a few exact duplicate images


def test_demo_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli_main(
        ["demo", "--output-dir", str(out), "--num-members", "2", "--epochs", "1", "--train-per-class", "3"]
        + ["--image-size", "32"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| local_de | **ensemble** |" in printed and "| star_sse | **ensemble** |" in printed
    results = json.loads((out / "demo_results.json").read_text())["results"]
    assert [r["strategy"] for r in results] == ["local_de", "star_sse"]
    for res in results:
        assert len(res["members"]) == 2
        assert 0.0 <= res["ensemble"]["accuracy"] <= 1.0 and res["ensemble"]["nll"] > 0
        assert json.loads((out / res["strategy"] / "demo_results.json").read_text()) == res
    # StarSSE's member 0 is trained with the same recipe and seed as Local DE's member 0
    assert results[0]["members"][0]["accuracy"] == pytest.approx(results[1]["members"][0]["accuracy"])
    # StarSSE's member 1 starts from member 0 and is a different model afterwards
    assert results[1]["members"][1]["nll"] != pytest.approx(results[1]["members"][0]["nll"])

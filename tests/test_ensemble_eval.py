import hf_starsse  # noqa: F401, I001  (first: torchvision compatibility)
from hf_starsse.basin import distance_report, interpolation_curve, l2_distance, plane_grid
from hf_starsse.ensemble import Ensemble
from hf_starsse.eval_data import load_eval_dataset, make_eval_dataloader
from hf_starsse.evaluation_report import member_lr_curves
from hf_starsse.manifest import EnsembleManifest
from hf_starsse.metrics import classification_metrics
from hf_starsse.soups import uniform_soup

import json
import os
import shutil

import numpy as np
import pytest
import torch
from run_folder_helpers import IMAGE_SIZE, image_processor, make_run_folder, single_thread, synthetic_images

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("runs") / "resnet_run", num_members=3, arch="resnet")


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("runs") / "vit_run", num_members=3, arch="vit", first_steps=30)


def _test_loader(run, batch_size=32):
    return make_eval_dataloader(load_eval_dataset(run / "eval_data", "test"), batch_size=batch_size)


def test_ensemble_probability_is_mean_of_member_probabilities(bn_run):
    from transformers import AutoModelForImageClassification

    ensemble = Ensemble.from_run(bn_run, device="cpu")
    assert len(ensemble) == 3
    loader = _test_loader(bn_run, batch_size=20)  # batches of 20: the last one is partial
    probs = ensemble.predict_proba(loader)
    pixel_values = torch.cat([b["pixel_values"] for b in loader])
    labels = torch.cat([b["labels"] for b in loader]).numpy()
    member_probs = []
    for path in EnsembleManifest.load(bn_run).member_paths(bn_run):
        model = AutoModelForImageClassification.from_pretrained(path).eval()
        with torch.no_grad():
            member_probs.append(torch.softmax(model(pixel_values=pixel_values).logits, dim=-1).numpy())
    expected = np.mean(member_probs, axis=0)
    assert probs.shape == (96, 4)
    assert np.abs(probs - expected).max() < 1e-6
    assert np.abs(ensemble(pixel_values[:5]).numpy() - expected[:5]).max() < 1e-6
    result = ensemble.evaluate(loader)
    assert result["ensemble"]["nll"] == pytest.approx(classification_metrics(expected, labels)["nll"], abs=1e-6)
    for i, member in enumerate(result["members"]):
        assert member["accuracy"] == pytest.approx(classification_metrics(member_probs[i], labels)["accuracy"])
    assert result["quality_vs_size"][0]["accuracy"] == result["members"][0]["accuracy"]
    assert result["members"][0]["accuracy"] > 0.6  # the tiny members learned the colour task


def test_ensemble_from_paths_and_errors(bn_run, tmp_path):
    paths = EnsembleManifest.load(bn_run).member_paths(bn_run)
    ensemble = Ensemble.from_pretrained([str(p) for p in paths[:2]], device="cpu")
    assert ensemble.names == ["member-0", "member-1"]
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble.from_pretrained([])
    with pytest.raises(ValueError, match=f"Cannot load the classifier {tmp_path / 'nope'}"):
        Ensemble.from_pretrained([tmp_path / "nope"])


def test_lr_schedule_from_manifest(bn_run):
    curves = member_lr_curves(EnsembleManifest.load(bn_run))
    assert [c["index"] for c in curves] == [0, 1, 2]
    first, second = curves[0], curves[1]
    assert first["steps"][0] == 0 and len(first["lr"]) == 40
    assert first["lr"][0] == pytest.approx(1e-2) and first["lr"][20] == pytest.approx(0.5e-2)  # cosine half-way
    assert second["steps"][0] == 40 and second["lr"][0] == pytest.approx(1e-2)  # a StarSSE cycle restarts at 40
    assert second["lr"][5] == pytest.approx(0.5e-2)


def test_basin_line_distances_and_plane(vit_run):
    from transformers import AutoModelForImageClassification

    members = EnsembleManifest.load(vit_run).member_paths(vit_run)
    loader = _test_loader(vit_run)
    template = AutoModelForImageClassification.from_pretrained(members[0])
    a, b = uniform_soup([members[0]]), uniform_soup([members[1]])
    points = interpolation_curve(template, a, b, loader, num_points=3)
    assert [p["alpha"] for p in points] == [0.0, 0.5, 1.0]
    ensemble = Ensemble.from_pretrained(members[:2], device="cpu").evaluate(loader)
    for point, member in ((points[0], ensemble["members"][0]), (points[2], ensemble["members"][1])):
        assert point["nll"] == pytest.approx(member["nll"], abs=1e-6)  # no BatchNorm: the end points are the members
    report = distance_report(members, vit_run / "pretrained")
    matrix = np.array(report["between_members"])
    assert np.allclose(matrix, matrix.T) and np.all(np.diag(matrix) == 0) and matrix[0, 1] > 0
    manual = np.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a))
    assert matrix[0, 1] == pytest.approx(manual, rel=1e-9)
    assert len(report["to_pretrained"]) == 3 and min(report["to_pretrained"]) > matrix[0, 1] / 10
    assert l2_distance(members[0], members[0])[0] == 0.0
    plane = plane_grid(template, [uniform_soup([m]) for m in members], loader, grid_size=2, margin=0.0)
    assert plane["points"][1][0] == pytest.approx(matrix[0, 1], rel=1e-9)  # member 1 lies at (|w1 - w0|, 0)
    # with no margin the grid corners include member 0 at (0, 0): its accuracy is member 0's
    assert plane["x"][0] == pytest.approx(0.0, abs=1e-9) or plane["x"][0] < 0
    assert np.array(plane["metrics"]["accuracy"]).shape == (2, 2)


def test_corruptions_all_nineteen_on_the_fly():
    from hf_starsse.ood import CORRUPTIONS, corruption_transform

    images, _ = synthetic_images(2, seed=0, image_size=IMAGE_SIZE)
    assert len(CORRUPTIONS) == 19
    for name in CORRUPTIONS:
        out = corruption_transform(name, 3)(images[0], 0)
        assert out.shape == images[0].shape and out.dtype == np.uint8, name
        assert not np.array_equal(out, images[0]), name
        assert np.array_equal(out, corruption_transform(name, 3)(images[0], 0)), name  # reproducible
    with pytest.raises(ValueError, match="`corruption` should be one of"):
        corruption_transform("rain", 1)
    with pytest.raises(ValueError, match="`severity` should be in 1..5, got 6"):
        corruption_transform("fog", 6)


def test_ood_on_pixel_values(bn_run):
    from hf_starsse.ood import evaluate_ood

    ensemble = Ensemble.from_run(bn_run, device="cpu")
    dataset = load_eval_dataset(bn_run / "eval_data", "test")
    result = evaluate_ood(
        ensemble.models,
        ensemble.names,
        dataset,
        image_processor(),
        corruptions=["gaussian_noise", "contrast"],
        severities=[1, 5],
        ensemble_indices=[0, 1, 2],
        max_samples=48,
    )
    assert set(result["corruptions"]) == {"gaussian_noise", "contrast"}
    noise = result["corruptions"]["gaussian_noise"]
    assert set(noise["severities"]) == {"1", "5"}
    assert set(noise["mean"]) == {"member-0", "member-1", "member-2", "ensemble"}
    acc = [noise["severities"][s]["member-0"]["accuracy"] for s in ("1", "5")]
    assert noise["mean"]["member-0"]["accuracy"] == pytest.approx(np.mean(acc))
    overall = np.mean(
        [
            result["corruptions"][c]["severities"][s]["ensemble"]["accuracy"]
            for c in ("gaussian_noise", "contrast")
            for s in ("1", "5")
        ]
    )
    assert result["mean"]["ensemble"]["accuracy"] == pytest.approx(overall)
    clean = ensemble.evaluate(make_eval_dataloader(dataset, max_samples=48))["ensemble"]["accuracy"]
    assert result["corruptions"]["gaussian_noise"]["severities"]["5"]["ensemble"]["accuracy"] < clean


def test_corruption_is_applied_to_denormalised_pixels(bn_run):
    from hf_starsse.ood import corruption_transform

    dataset = load_eval_dataset(bn_run / "eval_data", "test")
    transform = corruption_transform("shot_noise", 4, seed=1)
    loader = make_eval_dataloader(dataset, batch_size=4, image_processor=image_processor(), image_transform=transform)
    batch = next(iter(loader))
    clean = np.asarray(dataset.with_format("numpy")[2]["pixel_values"])  # (3, H, W), normalised with mean = std = 0.5
    image = np.clip(np.rint((clean.transpose(1, 2, 0) * 0.5 + 0.5) * 255), 0, 255).astype(np.uint8)
    expected = (transform(image, 2).astype(np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(batch["pixel_values"][2].numpy().transpose(1, 2, 0), expected, atol=1e-6)
    assert np.abs(expected - clean.transpose(1, 2, 0)).mean() > 0.05  # the corruption changed the image


def test_evaluate_command_writes_report(bn_run, capsys):
    from hf_starsse.cli import main

    from transformers import AutoModelForImageClassification

    rc = main(
        [
            "evaluate",
            str(bn_run),
            "--soup",
            "greedy",
            "--ood",
            "--corruptions",
            "fog",
            "--severities",
            "2",
            "--ood-max-samples",
            "32",
            "--interpolation-points",
            "3",
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| **ensemble (3)** |" in printed and "uniform soup" in printed and "greedy soup" in printed
    report = bn_run / "eval"
    results = json.loads((report / "eval.json").read_text())
    assert results["strategy"] == "star_sse" and len(results["test"]["members"]) == 3
    assert [r["size"] for r in results["soup_vs_size"]] == [1, 2, 3]
    assert results["data"]["bn_recalibration"] == "train"
    assert len(results["basin"]["interpolation"]["points"]) == 3
    assert "fog" in results["ood"]["corruptions"] and "uniform soup" in results["ood"]["mean"]
    for name in ("metric_vs_size", "diversity_matrix", "lr_schedule", "interpolation"):
        data = (report / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert (report / "eval.md").read_text().startswith("## Evaluation of")
    # the saved soups load with AutoModelForImageClassification and score what the report says
    soup = AutoModelForImageClassification.from_pretrained(bn_run / "soups" / "uniform")
    loader = _test_loader(bn_run)
    soup_metrics = Ensemble([soup], device="cpu").evaluate(loader)["members"][0]
    assert soup_metrics["accuracy"] == pytest.approx(results["soups"]["uniform"]["metrics"]["accuracy"])
    assert soup_metrics["nll"] == pytest.approx(results["soups"]["uniform"]["metrics"]["nll"], abs=1e-6)
    assert results["soups"]["greedy"]["members"][0] == int(
        np.argmax(results["soups"]["greedy"]["member_validation_accuracy"])
    )


def test_evaluate_command_with_dataset_and_errors(bn_run, tmp_path, capsys):
    from hf_starsse.cli import main

    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            str(bn_run),
            "--dataset",
            str(bn_run / "eval_data"),
            "--split",
            "validation",
            "--soup",
            "none",
            "--interpolation-points",
            "0",
            "--no-plots",
            "--no-progress",
            "--output-dir",
            str(out),
        ]
    )
    assert rc == 0
    results = json.loads((out / "eval.json").read_text())
    assert results["data"]["test"] == "validation" and results["test"]["num_samples"] == 64
    assert "soups" not in results
    capsys.readouterr()
    assert main(["evaluate", str(bn_run), "--split", "nope", "--no-progress"]) == 1
    assert "`split` should be one of ['test', 'train', 'validation']" in capsys.readouterr().err
    empty = tmp_path / "run_without_data"
    shutil.copytree(bn_run / "members", empty / "members")  # a run with its members but no eval_data/
    EnsembleManifest.load(bn_run).save(empty)
    assert main(["evaluate", str(empty), "--no-progress"]) == 1
    assert "No evaluation data: pass `--dataset PATH`" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ensemble_on_gpu_matches_cpu(bn_run):
    loader = _test_loader(bn_run)
    cpu = Ensemble.from_run(bn_run, device="cpu").predict_proba(loader)
    gpu = Ensemble.from_run(bn_run, device="cuda").predict_proba(loader)
    assert np.abs(cpu - gpu).max() < 1e-4


def test_raw_image_dataset_through_the_image_processor(bn_run, tmp_path, capsys):
    from hf_starsse.cli import main

    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage
    from run_folder_helpers import to_pixel_values

    images, labels = synthetic_images(40, seed=7)
    raw = Dataset.from_dict(
        {"img": [PILImage.fromarray(x) for x in images], "label": labels.tolist()},
        features=Features({"img": Image(), "label": Value("int64")}),
    )
    batch = next(iter(make_eval_dataloader(raw, batch_size=40, image_processor=image_processor())))
    np.testing.assert_allclose(batch["pixel_values"].numpy(), to_pixel_values(images), atol=1e-5)
    assert batch["labels"].tolist() == labels.tolist()
    raw.save_to_disk(str(tmp_path / "raw"))
    out = tmp_path / "report"
    args = ["evaluate", str(bn_run), "--dataset", str(tmp_path / "raw"), "--soup", "none", "--interpolation-points"]
    assert main([*args, "0", "--no-plots", "--no-progress", "--output-dir", str(out)]) == 0
    results = json.loads((out / "eval.json").read_text())
    ensemble = Ensemble.from_run(bn_run, device="cpu")
    expected = ensemble.evaluate([{"pixel_values": torch.from_numpy(to_pixel_values(images)), "labels": labels}])
    assert results["test"]["ensemble"]["nll"] == pytest.approx(expected["ensemble"]["nll"], abs=1e-5)


def test_evaluate_command_checks_settings_before_the_long_passes(bn_run, tmp_path, capsys):
    from hf_starsse.cli import main

    out = tmp_path / "report"
    for extra, message in (
        (["--ood", "--corruptions", "rain"], "Unknown corruption(s) ['rain']"),
        (["--ood", "--severities", "0"], "`severities` should be in 1..5, got [0]"),
        (["--soup", "greedy", "--validation-split", "holdout"], "The greedy soup needs a held-out split: `holdout`"),
        (["--bn-split", "extra"], "`bn_split` should be one of ['test', 'train', 'validation'], got 'extra'"),
    ):
        assert main(["evaluate", str(bn_run), "--no-progress", "--output-dir", str(out), *extra]) == 1
        assert message in capsys.readouterr().err
    assert not out.exists()

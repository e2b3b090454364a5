"""Data loading (column detection, splits, lazy transforms) and one-line errors through `hf-starsse train`."""

from hf_starsse import EnsembleManifest
from hf_starsse.cli import main as cli_main
from hf_starsse.data import (
    build_transforms,
    check_num_labels,
    image_spec_from_processor,
    load_image_dataset,
    with_image_transforms,
)

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from recipe_fixtures import CLASS_NAMES, SIZE, make_checkpoint, make_dataset_dict, quadrant_images, save_dataset
from transformers import AutoImageProcessor

TINY_RUN = ["--num_members", "2", "--max_steps", "2", "--per_device_train_batch_size", "4", "--use_cpu", "true"]
TINY_RUN += ["--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--learning_rate", "0.01"]


def test_cifar_like_columns_are_detected_and_validation_is_carved():
    images, labels = quadrant_images(40)
    features = Features(
        {"img": Image(), "fine_label": ClassLabel(names=CLASS_NAMES), "coarse_label": ClassLabel(names=["a", "b"])}
    )
    data = DatasetDict(
        {
            "train": Dataset.from_dict(
                {"img": images, "fine_label": labels, "coarse_label": [x % 2 for x in labels]}, features=features
            ),
            "test": Dataset.from_dict(
                {"img": images[:8], "fine_label": labels[:8], "coarse_label": [0] * 8}, features=features
            ),
        }
    )
    loaded = load_image_dataset(data, validation_size=0.25, seed=3)
    assert (loaded.image_column, loaded.label_column, loaded.label_names) == ("img", "fine_label", CLASS_NAMES)
    assert {k: len(v) for k, v in loaded.splits.items()} == {"train": 30, "validation": 10, "test": 8}
    again = load_image_dataset(data, validation_size=0.25, seed=3)
    assert again.splits["validation"]["fine_label"] == loaded.splits["validation"]["fine_label"]  # seeded
    assert sorted(np.bincount(loaded.splits["validation"]["fine_label"], minlength=4)) != [0, 0, 0, 10]  # stratified
    assert load_image_dataset(data, label_column="coarse_label").label_names == ["a", "b"]
    # an existing validation split is used as is; a bare Dataset is the train split
    with_val = load_image_dataset(make_dataset_dict(16, 8, with_validation=True))
    assert {k: len(v) for k, v in with_val.splits.items()} == {"train": 16, "validation": 8, "test": 8}
    assert set(load_image_dataset(data["train"]).splits) == {"train", "validation"}


def test_lazy_transforms_follow_the_processor(tmp_path):
    processor = AutoImageProcessor.from_pretrained(make_checkpoint(tmp_path / "vit", "vit"))
    spec = image_spec_from_processor(processor)
    assert (spec.size, spec.mean) == (SIZE, (0.5, 0.5, 0.5))
    train_tf, eval_tf = build_transforms(spec, "randaugment")
    names = [type(t).__name__ for t in train_tf.transforms]
    assert names[:3] == ["RandomResizedCrop", "RandomHorizontalFlip", "RandAugment"]
    assert [type(t).__name__ for t in eval_tf.transforms][:2] == ["Resize", "CenterCrop"]
    data = load_image_dataset(make_dataset_dict(16, 8))
    splits = with_image_transforms(data, train_tf, eval_tf)
    batch = splits["test"][:4]
    assert (
        batch["pixel_values"].shape == (4, 3, SIZE, SIZE)
        and batch["labels"].tolist() == data.splits["test"]["label"][:4]
    )
    # eval transform = Resize(round(16 / 0.875) = 18) + CenterCrop(16) + normalise, checked by hand on one image
    image = data.splits["test"][0]["image"].convert("RGB").resize((18, 18), resample=2)
    by_hand = (torch.from_numpy(np.array(image)[1:17, 1:17]).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert torch.allclose(batch["pixel_values"][0], by_hand, atol=0.02)
    assert splits["train"].column_names == data.splits["train"].column_names + ["__hf_starsse_index__"]
    # timm checkpoints: the TimmWrapper processor's timm data config
    timm_spec = image_spec_from_processor(AutoImageProcessor.from_pretrained(make_checkpoint(tmp_path / "t", "timm")))
    assert (timm_spec.size, timm_spec.crop_pct, timm_spec.interpolation) == (160, 0.95, "bilinear")


def _one_line_error(capsys, argv):
    """Run `hf-starsse train ARGV`: exit code 1 and the last stderr line is the only error line (progress bars of
    loading may come before it)."""
    capsys.readouterr()
    assert cli_main(["train", *argv]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower() or "Traceback" in line]
    assert errors == [lines[-1]] and lines[-1].startswith("hf-starsse train: error: "), lines[-5:]
    return lines[-1]


def test_run_training_takes_an_in_memory_dataset(tmp_path):
    from hf_starsse.train_entry import parse_arguments, run_training

    checkpoint = make_checkpoint(tmp_path / "resnet", "resnet")
    argv = ["--model_name_or_path", checkpoint, "--dataset_name", "in-memory", "--output_dir", str(tmp_path / "run")]
    model_args, data_args, args, _ = parse_arguments([*argv, *TINY_RUN, "--ensemble_strategy", "local_de"])
    output = run_training(model_args, data_args, args, dataset=make_dataset_dict(16, 8, with_validation=True))
    assert output.trained == [0, 1] and EnsembleManifest.load(tmp_path / "run").strategy == "local_de"


def test_wrong_column_is_one_line(tmp_path, capsys):
    checkpoint, data = make_checkpoint(tmp_path / "vit", "vit"), save_dataset(tmp_path / "data")
    base = ["--model_name_or_path", checkpoint, "--dataset_name", data, "--output_dir", str(tmp_path / "run")]
    err = _one_line_error(capsys, [*base, "--label_column", "labelz", *TINY_RUN])
    assert err.endswith("`label_column` 'labelz' is not a column of the dataset (it has image, label).")
    err = _one_line_error(capsys, [*base, "--label_column", "image", *TINY_RUN])
    assert "`label_column` 'image' should hold integer class labels" in err
    assert not (tmp_path / "run").exists()


def test_label_count_mismatch_is_one_line(tmp_path, capsys):
    checkpoint, data = make_checkpoint(tmp_path / "vit", "vit"), save_dataset(tmp_path / "data")
    argv = ["--model_name_or_path", checkpoint, "--dataset_name", data, "--output_dir", str(tmp_path / "run")]
    err = _one_line_error(capsys, [*argv, "--num_labels", "7", *TINY_RUN])
    assert err.endswith("Label count mismatch: the dataset's `label` has 4 classes but `num_labels` has 7.")
    loaded = load_image_dataset(data)
    with pytest.raises(ValueError, match="has 4 classes but the model has 10"):
        check_num_labels(loaded, 10)


def test_unknown_model_offline_is_one_line(tmp_path, capsys):
    data = save_dataset(tmp_path / "data")
    argv = ["--model_name_or_path", "nobody-here/no-such-model", "--dataset_name", data]
    err = _one_line_error(capsys, [*argv, "--output_dir", str(tmp_path / "run"), *TINY_RUN])
    assert "'nobody-here/no-such-model'" in err
    err = _one_line_error(capsys, ["--model_name_or_path", "x", "--dataset_name", "nobody-here/no-such-dataset"])
    assert "Cannot load dataset 'nobody-here/no-such-dataset'" in err


def test_undecodable_image_is_named(tmp_path, capsys):
    # in memory: the error names the split and the index
    images, labels = quadrant_images(6)
    encoded = [{"bytes": _png(im), "path": None} for im in images]
    encoded[2] = {"bytes": b"definitely not an image", "path": None}
    features = Features({"image": Image(), "label": Value("int64")})
    data = load_image_dataset(
        DatasetDict({"train": Dataset.from_dict({"image": encoded, "label": labels}, features=features)}),
        validation_size=1,
    )
    data.splits["train"] = Dataset.from_dict({"image": encoded, "label": labels}, features=features)
    _, eval_tf = build_transforms(image_spec_from_processor(None, image_size=SIZE), "none")
    train = with_image_transforms(data, eval_tf, eval_tf)["train"]
    assert train[:2]["pixel_values"].shape == (2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"^Cannot decode image 2 of split 'train': UnidentifiedImageError"):
        train[:4]

    # an imagefolder with a corrupt PNG, through the CLI: one line naming the file
    folder = tmp_path / "folder"
    for i, (image, label) in enumerate(zip(*quadrant_images(12))):
        (folder / CLASS_NAMES[label]).mkdir(parents=True, exist_ok=True)
        image.save(folder / CLASS_NAMES[label] / f"{i}.png")
    corrupt = folder / CLASS_NAMES[0] / "corrupt.png"
    corrupt.write_bytes(_png(images[0])[:40])  # a truncated PNG
    checkpoint = make_checkpoint(tmp_path / "resnet", "resnet")
    argv = ["--model_name_or_path", checkpoint, "--dataset_name", str(folder), "--output_dir", str(tmp_path / "run")]
    err = _one_line_error(capsys, [*argv, *TINY_RUN, "--validation_size", "1", "--max_steps", "4"])
    assert "Cannot decode image" in err and "of split 'train'" in err and "corrupt.png" in err
    assert not (tmp_path / "run" / "members" / "member-0").exists()


def _png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_swin_recipe_path_with_randaugment_mixup_cutmix(tmp_path, capsys):
    """The Swin recipe's options end to end in-process: RandAugment, mixup + cutmix with soft targets, label
    smoothing, drop-path override, grad clipping, warmup ratio; imagefolder data."""
    folder = tmp_path / "folder"
    for i, (image, label) in enumerate(zip(*quadrant_images(24))):
        (folder / CLASS_NAMES[label]).mkdir(parents=True, exist_ok=True)
        image.save(folder / CLASS_NAMES[label] / f"{i}.png")
    checkpoint = make_checkpoint(tmp_path / "swin", "swin")
    argv = ["--model_name_or_path", checkpoint, "--dataset_name", str(folder), "--output_dir", str(tmp_path / "run")]
    argv += ["--config_overrides", "drop_path_rate=0.1", "--train_augmentation", "randaugment"]
    argv += ["--mixup_alpha", "0.8", "--cutmix_alpha", "1.0", "--label_smoothing_factor", "0.1"]
    argv += ["--max_grad_norm", "5", "--warmup_steps", "0.1", "--optim", "adamw_torch", "--weight_decay", "0.25"]
    argv += ["--validation_size", "4", "--ensemble_strategy", "star_sse", "--num_members", "2", "--max_steps", "3"]
    argv += ["--per_device_train_batch_size", "4", "--use_cpu", "true", "--report_to", "none"]
    argv += ["--save_strategy", "no", "--disable_tqdm", "true", "--learning_rate", "0.001"]
    assert cli_main(["train", *argv]) == 0, capsys.readouterr().err[-2000:]
    manifest = EnsembleManifest.load(tmp_path / "run")
    assert [m.num_steps for m in manifest.members] == [3, 3]
    assert all(np.isfinite(m.metrics["train_loss"]) for m in manifest.members)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path / "run" / "members" / "member-1")
    assert config.drop_path_rate == 0.1 and config.id2label[0] == sorted(CLASS_NAMES)[0]  # imagefolder: sorted folders

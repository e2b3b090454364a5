"""The offline end-to-end demo: a real ImageNet-pre-trained EfficientNet-Lite0 fine-tuned on a small split of
scikit-learn's digits, as a Local DE and as a StarSSE ensemble; prints member and ensemble test accuracy / NLL."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from datasets import Array3D, Dataset, DatasetDict, Features, Value
from transformers import AutoImageProcessor, AutoModelForImageClassification

from .digits import load_digits_dataset
from .efficientnet_lite0 import build_efficientnet_lite0_checkpoint
from .ensemble_config import EnsembleTrainingArguments
from .ensemble_trainer import EnsembleTrainer
from .file_utils import atomic_write_json
from .manifest import EnsembleManifest

RESULTS_NAME = "demo_results.json"


@dataclass
class DemoConfig:
    """Settings of `hf-starsse demo` (defaults: the documented demo; every figure it prints is measured).

    Args:
        output_dir (`str`): Where the pre-trained checkpoint, the data and one run folder per strategy go.
        strategies (`tuple[str, ...]`): Strategies to train and compare.
        num_members (`int`): Ensemble size K.
        train_per_class (`int`): Training images per digit class.
        image_size (`int`): Side of the upscaled digit images.
        epochs (`float`): Epochs of the first fine-tuning (and of each cycle: ratio 1).
        learning_rate (`float`): SGD (momentum 0.9) learning rate of the first fine-tuning (cycle LR ratio 1).
        batch_size (`int`): Training batch size.
        seed (`int`): Base seed (data split and member seeds `seed + i`).
    """

    output_dir: str = "hf_starsse_demo"
    strategies: tuple[str, ...] = ("local_de", "star_sse")
    num_members: int = 5
    train_per_class: int = 10
    image_size: int = 64
    epochs: float = 10
    learning_rate: float = 0.01
    batch_size: int = 16
    seed: int = 42


def prepare_data(processor, image_size: int, train_per_class: int, seed: int) -> DatasetDict:
    """The digits splits as `pixel_values` (processed once by the checkpoint's image processor) + `labels`."""
    raw = load_digits_dataset(train_per_class=train_per_class, seed=seed)
    shape = (3, image_size, image_size)
    features = Features({"pixel_values": Array3D(shape=shape, dtype="float32"), "labels": Value("int64")})
    size = {"height": image_size, "width": image_size}

    def process(split: Dataset) -> Dataset:
        pixels = processor(list(split["image"]), size=size, return_tensors="np")["pixel_values"].astype(np.float32)
        return Dataset.from_dict({"pixel_values": pixels, "labels": list(split["label"])}, features=features)

    processed = DatasetDict({name: process(split) for name, split in raw.items()})
    return processed.with_format("torch")


def _model_init(checkpoint: str, num_labels: int) -> torch.nn.Module:
    labels = [str(d) for d in range(num_labels)]
    return AutoModelForImageClassification.from_pretrained(
        checkpoint,
        num_labels=num_labels,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities of `model` on `dataset` (`pixel_values` column)."""
    model.eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        pixels = dataset[start : start + batch_size]["pixel_values"]
        out.append(model(pixel_values=pixels).logits.float().softmax(-1).numpy())
    return np.concatenate(out)


def evaluate_run(run_dir: str | os.PathLike, test: Dataset) -> dict:
    """Test accuracy / NLL of every member of a run and of their ensemble (mean of softmax probabilities)."""
    manifest = EnsembleManifest.load(run_dir)
    labels = np.asarray(test["labels"])
    rows, probs = [], []
    for record, path in zip(manifest.members, manifest.member_paths(run_dir)):
        p = predict_probabilities(AutoModelForImageClassification.from_pretrained(path), test)
        probs.append(p)
        rows.append(
            {"member": record.index, "accuracy": accuracy(p, labels), "nll": negative_log_likelihood(p, labels)}
        )
    ensemble = np.mean(probs, axis=0)
    return {
        "strategy": manifest.strategy,
        "members": rows,
        "mean_member": {
            "accuracy": float(np.mean([r["accuracy"] for r in rows])),
            "nll": float(np.mean([r["nll"] for r in rows])),
        },
        "ensemble": {"accuracy": accuracy(ensemble, labels), "nll": negative_log_likelihood(ensemble, labels)},
    }


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(-1) == labels).mean())


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def _accuracy_metric(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def format_table(results: list[dict]) -> str:
    """Markdown table of member / mean-member / ensemble test accuracy and NLL per strategy."""
    lines = ["| strategy | model | test accuracy | test NLL |", "|---|---|---:|---:|"]
    for res in results:
        for row in res["members"]:
            lines.append(f"| {res['strategy']} | member {row['member']} | {row['accuracy']:.4f} | {row['nll']:.4f} |")
        for name in ("mean_member", "ensemble"):
            r = res[name]
            lines.append(
                f"| {res['strategy']} | **{name.replace('_', ' ')}** | {r['accuracy']:.4f} | {r['nll']:.4f} |"
            )
    return "\n".join(lines)


def run_demo(config: DemoConfig) -> list[dict]:
    """Run the demo end to end; returns one result dict per strategy (also written as JSON)."""
    out = Path(config.output_dir)
    start = time.time()
    print(f"[demo] converting the packaged ImageNet EfficientNet-Lite0 into {out / 'pretrained'}", flush=True)
    checkpoint = str(build_efficientnet_lite0_checkpoint(out / "pretrained" / "efficientnet_lite0"))
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    data = prepare_data(processor, config.image_size, config.train_per_class, config.seed)
    print(
        f"[demo] digits: {len(data['train'])} train / {len(data['validation'])} validation / {len(data['test'])} test "
        f"images at {config.image_size}px",
        flush=True,
    )
    if not (out / "eval_data").is_dir():
        data.with_format(None).save_to_disk(str(out / "eval_data"))
    results = []
    for strategy in config.strategies:
        run_dir = out / strategy
        args = EnsembleTrainingArguments(
            output_dir=str(run_dir),
            ensemble_strategy=strategy,
            num_members=config.num_members,
            num_train_epochs=config.epochs,
            learning_rate=config.learning_rate,
            optim="sgd",
            optim_args="momentum=0.9",
            weight_decay=1e-4,
            max_grad_norm=0.0,  # the authors' recipes do not clip gradients
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=256,
            seed=config.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            report_to="none",
            dataloader_num_workers=0,
        )
        trainer = EnsembleTrainer(
            model_init=partial(_model_init, checkpoint, 10),
            args=args,
            train_dataset=data["train"],
            eval_dataset=data["validation"],
            processing_class=processor,
            compute_metrics=_accuracy_metric,
        )
        trainer.train()
        res = evaluate_run(run_dir, data["test"])
        atomic_write_json(run_dir / RESULTS_NAME, res)
        results.append(res)
        print(
            f"[demo] {strategy}: ensemble test accuracy {res['ensemble']['accuracy']:.4f} vs mean member "
            f"{res['mean_member']['accuracy']:.4f} ({time.time() - start:.0f}s elapsed)",
            flush=True,
        )
    atomic_write_json(out / RESULTS_NAME, {"config": config.__dict__, "results": results})
    print("\n" + format_table(results) + "\n", flush=True)
    print(f"[demo] done in {time.time() - start:.0f}s; results in {out / RESULTS_NAME}", flush=True)
    return results


def load_results(output_dir: str | os.PathLike) -> dict:
    return json.loads((Path(output_dir) / RESULTS_NAME).read_text())

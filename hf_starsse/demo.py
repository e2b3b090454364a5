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
from torch.utils.data import DataLoader
from transformers import AutoImageProcessor, AutoModelForImageClassification

from .digits import load_digits_dataset
from .efficientnet_lite0 import build_efficientnet_lite0_checkpoint
from .ensemble_config import EnsembleTrainingArguments
from .ensemble_trainer import EnsembleTrainer
from .eval_data import make_eval_dataloader
from .file_utils import atomic_write_json
from .metrics import compute_metrics
from .run_folder import DEMO_RESULTS_NAME, RunFolder

RESULTS_NAME = DEMO_RESULTS_NAME  # also the name of the summary in the demo's output folder


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
        weight_decay_on_norm_and_bias (`bool`): Decay every parameter, as the authors' plain SGD does.
    """

    output_dir: str = "hf_starsse_demo"
    strategies: tuple[str, ...] = ("local_de", "star_sse")
    num_members: int = 5
    train_per_class: int = 10
    image_size: int = 32  # measured (benchmarks/demo_recipe.py): 64 px costs ~1.8x per step for +5 points/member
    epochs: float = 10
    learning_rate: float = 0.01
    batch_size: int = 16
    seed: int = 42
    weight_decay_on_norm_and_bias: bool = True


def prepare_data(raw: DatasetDict, processor, image_size: int) -> DatasetDict:
    """The splits as `pixel_values` (processed once by the members' image processor) + `labels`."""
    shape = (3, image_size, image_size)
    features = Features({"pixel_values": Array3D(shape=shape, dtype="float32"), "labels": Value("int64")})

    def process(split: Dataset) -> Dataset:
        pixels = processor(list(split["image"]), return_tensors="np")["pixel_values"].astype(np.float32)
        return Dataset.from_dict({"pixel_values": pixels, "labels": list(split["label"])}, features=features)

    return DatasetDict({name: process(split) for name, split in raw.items()}).with_format("torch")


def load_demo_data(checkpoint: str, image_size: int, train_per_class: int, seed: int):
    """The members' image processor (the checkpoint's normalisation at `image_size`; saved with each member), the raw
    digits splits (upscaled to `image_size`) and the processed splits."""
    processor = AutoImageProcessor.from_pretrained(checkpoint, size={"height": image_size, "width": image_size})
    raw = load_digits_dataset(train_per_class=train_per_class, seed=seed, image_size=image_size)
    return processor, raw, prepare_data(raw, processor, image_size)


def train_demo_ensemble(
    run_dir: str | os.PathLike,
    strategy: str,
    num_members: int,
    config,
    checkpoint: str,
    processor,
    train: Dataset,
    validation: Dataset,
    first_member: str | None = None,
) -> None:
    """Train one ensemble with the demo's recipe (SGD momentum 0.9, cosine, cycle LR / length ratios 1).

    No per-member evaluation runs (the demo's figures are test figures, computed afterwards); `first_member` (SSE /
    StarSSE) takes member 0 as given instead of training it."""
    args = EnsembleTrainingArguments(
        output_dir=str(run_dir),
        ensemble_strategy=strategy,
        num_members=num_members,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        optim="sgd",
        optim_args="momentum=0.9",
        weight_decay=1e-4,
        max_grad_norm=0.0,  # the authors' recipes do not clip gradients
        weight_decay_on_norm_and_bias=getattr(config, "weight_decay_on_norm_and_bias", True),  # nor exempt any
        # 100 images / batch 16 would end each epoch with a 4-image batch: train-mode BatchNorm over 4 samples (1x1
        # maps in the last stages at 32 px) wrecks the running statistics, so the partial batch is dropped
        dataloader_drop_last=getattr(config, "dataloader_drop_last", True),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=256,
        seed=config.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        report_to="none",
        dataloader_num_workers=0,
        evaluate_members=False,
        first_member=first_member,
    )
    EnsembleTrainer(
        model_init=partial(_model_init, checkpoint, 10),
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=processor,
        compute_metrics=compute_metrics,
    ).train()


def _model_init(checkpoint: str, num_labels: int) -> torch.nn.Module:
    labels = [str(d) for d in range(num_labels)]
    return AutoModelForImageClassification.from_pretrained(
        checkpoint,
        num_labels=num_labels,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )


def evaluate_run(run_dir: str | os.PathLike, memory: dict | None = None) -> dict:
    """Test metrics of every member of a run and of their ensemble (mean of softmax probabilities) on the run's
    `eval_data/` test split, through the run's prediction cache: `hf-starsse evaluate RUN` reuses these passes, and
    `memory` (shared between the demo's runs) gives StarSSE's member 0, a copy of Local DE's, for free."""
    from .evaluation_passes import EvaluationPasses, split_data
    from .metrics import DEFAULT_NUM_BINS
    from .prediction_cache import PredictionCache
    from .run_evaluation import _image_processor, load_splits
    from .run_folder import RunFolder

    folder = RunFolder(run_dir)
    manifest = folder.read_manifest()
    members = folder.member_paths(manifest)
    processor = _image_processor(members[0])
    test = load_splits(folder.eval_data_dir)["test"]

    def loader(dataset: Dataset) -> DataLoader:
        return make_eval_dataloader(dataset, batch_size=64, image_processor=processor)

    data = split_data("test", test, folder.eval_data_dir, "test", loader, processor)
    cache = PredictionCache(folder.predictions_dir, device="cpu", log=None, memory=memory)
    names = [f"member-{m.index}" for m in manifest.members]
    passes = EvaluationPasses(members, names, cache, torch.device("cpu"), None, DEFAULT_NUM_BINS)
    result = passes.ensemble_metrics(data)
    for record, row in zip(manifest.members, result["members"]):
        row["member"] = record.index
    result["strategy"] = manifest.strategy
    return result


def format_table(results: list[dict]) -> str:
    """Markdown table of member / mean-member / ensemble test accuracy, NLL and ECE per strategy."""
    lines = [
        "| strategy | model | test accuracy | test NLL | test ECE | diversity |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for res in results:
        rows = [(f"member-{r['member']}", r, "") for r in res["members"]]
        rows.append(("**mean member**", res["mean_member"], ""))
        rows.append(("**ensemble**", res["ensemble"], f"{res['diversity']:.1f}"))
        for name, r, div in rows:
            lines.append(
                f"| {res['strategy']} | {name} | {r['accuracy']:.4f} | {r['nll']:.4f} | {r['ece']:.4f} | {div} |"
            )
    return "\n".join(lines)


def run_demo(config: DemoConfig) -> list[dict]:
    """Run the demo end to end; returns one result dict per strategy (also written as JSON)."""
    out = Path(config.output_dir)
    start = time.time()
    print(f"[demo] converting the packaged ImageNet EfficientNet-Lite0 into {out / 'pretrained'}", flush=True)
    checkpoint = str(build_efficientnet_lite0_checkpoint(out / "pretrained" / "efficientnet_lite0"))
    processor, raw, data = load_demo_data(checkpoint, config.image_size, config.train_per_class, config.seed)
    print(
        f"[demo] digits: {len(data['train'])} train / {len(data['validation'])} validation / {len(data['test'])} test "
        f"images at {config.image_size}px",
        flush=True,
    )
    results, memory = [], {}
    for strategy in config.strategies:
        run_dir = out / strategy
        run = RunFolder(run_dir)
        if not run.eval_data_dir.is_dir():  # raw held-out images for `hf-starsse evaluate RUN` (and --ood)
            held_out = DatasetDict({"validation": raw["validation"], "test": raw["test"]})
            held_out.save_to_disk(str(run.eval_data_dir))
        first_member = None
        if strategy in ("sse", "star_sse") and "local_de" in [r["strategy"] for r in results]:
            first_member = str(RunFolder(out / "local_de").member_dir(0))  # same recipe and seed: reuse it
        train_demo_ensemble(
            run_dir, strategy, config.num_members, config, checkpoint, processor, data["train"], data["validation"],
            first_member=first_member,
        )  # fmt: skip
        res = evaluate_run(run_dir, memory)
        atomic_write_json(run.demo_results_path, res)
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

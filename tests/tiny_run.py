"""Build a tiny ensemble run folder without the trainer (members + manifest), for tests.

The lead can swap `make_tiny_run` for a real `EnsembleTrainer` run: the layout is the same.
"""

from __future__ import annotations

from hf_starsse.file_utils import atomic_write_json, atomic_write_text
from hf_starsse.manifest import EnsembleManifest, MemberRecord, member_dir
from hf_starsse.run_folder import RunFolder
from hf_starsse.soups import save_soup, uniform_soup

import os
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

NUM_LABELS = 4
IMAGE_SIZE = 16


def tiny_vit(seed: int) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=NUM_LABELS,
        id2label={i: f"class_{i}" for i in range(NUM_LABELS)},
        label2id={f"class_{i}": i for i in range(NUM_LABELS)},
    )
    return ViTForImageClassification(config)


def tiny_image_processor() -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _train_a_little(model: ViTForImageClassification, seed: int, steps: int = 3, lr: float = 0.5) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    y = torch.randint(0, NUM_LABELS, (8,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(pixel_values=x, labels=y).loss.backward()
        optimizer.step()
    model.eval()


def make_tiny_run(
    run_dir: str | os.PathLike, num_members: int = 3, strategy: str = "star_sse", with_eval: bool = True
) -> Path:
    """A StarSSE-shaped run: member 0 trained from a random "pre-trained" ViT, members 1.. start from member 0."""
    run_dir = Path(run_dir)
    processor = tiny_image_processor()
    base = tiny_vit(seed=0)
    records = []
    member0_state = None
    for i in range(num_members):
        model = tiny_vit(seed=0)
        if member0_state is None:
            model.load_state_dict(base.state_dict())
        else:
            model.load_state_dict(member0_state)
        _train_a_little(model, seed=100 + i)
        if i == 0:
            member0_state = {k: v.clone() for k, v in model.state_dict().items()}
        folder = member_dir(run_dir, i)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        record = MemberRecord(
            index=i,
            path=f"members/member-{i}",
            seed=42 + i,
            parent=None if i == 0 else 0,
            init_from="tiny-random-vit" if i == 0 else "member-0",
            learning_rate=0.5,
            num_steps=3,
            num_epochs=1.0,
            schedule_offset=3 * i,
            metrics={"eval_accuracy": 0.25 + 0.05 * i, "eval_loss": 1.3 - 0.01 * i},
        )
        atomic_write_json(folder / "member.json", record.to_dict())
        records.append(record)
    manifest = EnsembleManifest(
        strategy=strategy,
        num_members=num_members,
        hyperparameters={
            "learning_rate": 0.5,
            "num_train_epochs": 1,
            "cycle_lr_ratio": 1.0,
            "cycle_epoch_ratio": 1.0,
            "per_device_train_batch_size": 8,
            "seed": 42,
            "dataset_name": "tiny-random",
        },
        base_models=["tiny-random-vit"],
        members=records,
        library_version="0.1.0.dev0",
    )
    manifest.save(run_dir)
    if with_eval:
        write_tiny_evaluation(run_dir, num_members)
    return run_dir


def write_tiny_evaluation(run_dir: Path, num_members: int) -> dict:
    """What `hf-starsse evaluate` writes, with made-up figures: `eval/eval.json` + `eval.md` + a plot, and the uniform
    soup in `soups/uniform/` (a ViT has no BatchNorm: the soup is the plain average) sharing its evaluation id."""
    run = RunFolder(run_dir)
    evaluation_id = "tiny-evaluation-0001"
    soup_metrics = {"accuracy": 0.375, "nll": 1.25, "ece": 0.04, "brier": 0.7}
    members = run.member_paths(run.read_manifest())
    info = {"kind": "uniform", "members": list(range(num_members)), "metrics": soup_metrics}
    save_soup(
        uniform_soup(members), run.soup_dir("uniform"), members[0], info={**info, "evaluation_id": evaluation_id}
    )
    results = {
        "evaluation_id": evaluation_id,
        "run": str(run_dir),
        "strategy": "star_sse",
        "num_members": num_members,
        "data": {"path": str(run_dir.parent / "tiny-random"), "test": "test", "bn_recalibration": None},
        "test": {
            "members": [
                {"accuracy": 0.25 + 0.05 * i, "nll": 1.3, "ece": 0.1, "brier": 0.8} for i in range(num_members)
            ],
            "member_names": [f"member-{i}" for i in range(num_members)],
            "ensemble": {"accuracy": 0.4, "nll": 1.2, "ece": 0.05, "brier": 0.65},
            "diversity": 31.5,
            "quality_vs_size": [
                {"size": k, "accuracy": 0.25 + 0.05 * k, "nll": 1.3 - 0.01 * k, "diversity": 10.0 * (k - 1)}
                for k in range(1, num_members + 1)
            ],
            "num_samples": 40,
        },
        "soups": {"uniform": {**info, "path": "soups/uniform"}},
        "soup_vs_size": [{"size": k, "accuracy": 0.25 + 0.04 * k, "nll": 1.3} for k in range(1, num_members + 1)],
        "plots": ["metric_vs_size.png"],
    }
    atomic_write_json(run.eval_json, results)
    atomic_write_text(run.eval_md, "## Evaluation\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([1, 2, 3], [0.3, 0.35, 0.4])
    fig.savefig(run.eval_dir / "metric_vs_size.png")
    plt.close(fig)
    return results

"""Model cards of published ensembles, rendered from the Jinja templates in `model_cards/` with
`huggingface_hub.ModelCard.from_template`.

The YAML metadata holds `library_name`, `base_model` (only Hub ids: never a class name or a local path), `datasets`,
`tags` (with the strategy), `license`, `pipeline_tag` and a `model-index` whose results are, in this order: the soup
at the repository root, the ensemble, the other soup and each member, on the evaluation split. Every number comes from
the run's `eval/eval.json` as `hf-starsse evaluate` wrote it (what is used):

```
{"data": {"path": ".../cifar100_saved", "test": "test"},
 "test": {"ensemble": {...}, "members": [{...}, ...], "member_names": [...], "diversity": 12.3,
          "quality_vs_size": [{"size": 1, "accuracy": ..., "nll": ..., "diversity": ...}, ...]},
 "soups": {"uniform": {"metrics": {...}, "members": [...]}, "greedy": {...}},
 "soup_vs_size": [{"size": 1, "accuracy": ..., "nll": ...}, ...]}
```

Only quality metrics (accuracy, NLL, ECE and the ensemble's diversity) are reported: never runtimes or FLOs. Every
input is optional: a card renders (and its metadata validates) with nothing but defaults.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .manifest import EnsembleManifest

TEMPLATES_DIR = Path(str(importlib.resources.files("hf_starsse.model_cards")))
ENSEMBLE_TEMPLATE = TEMPLATES_DIR / "ensemble_card.md"
MEMBER_TEMPLATE = TEMPLATES_DIR / "member_card.md"
PAPER_ARXIV_ID = "2303.03374"

STRATEGY_LABELS = {"local_de": "Local DE", "global_de": "Global DE", "sse": "SSE", "star_sse": "StarSSE"}
STRATEGY_DESCRIPTIONS = {
    "local_de": (
        "Local Deep Ensemble: every member is fine-tuned from the same pre-trained checkpoint with its own seed (a "
        "new classification-head initialisation and data order). The members stay in the pre-train basin, so the "
        "ensemble gains from transfer learning but has limited diversity."
    ),
    "global_de": (
        "Global Deep Ensemble: every member is fine-tuned from its own, independently pre-trained checkpoint of the "
        "same architecture. The members come from different pre-train basins, which makes them diverse but needs "
        "several expensive pre-trainings."
    ),
    "sse": (
        "Snapshot Ensemble (SSE): the first member is fine-tuned as usual, then each next member continues from the "
        "previous one for one cycle of a cyclic learning rate (a jump to the cycle LR, then cosine decay). Small "
        "cycles keep the chain of members in the pre-train basin, large ones make it drift out of the basin."
    ),
    "star_sse": (
        "StarSSE (the paper's method): the first member is fine-tuned as usual, then every other member starts from "
        "that first member's weights and trains one cycle of a cyclic learning rate, independently of the others "
        "(a star instead of SSE's chain). The members explore the pre-train basin around one point, which gives "
        "stronger ensembles and uniform model soups than SSE."
    ),
}
GENERIC_DESCRIPTION = (
    "An ensemble averages the softmax probabilities of several models fine-tuned for the same task. The uniform "
    "model soup at the root of this repository averages their weights instead, which gives one model as cheap to "
    "run as a single member."
)
DEFAULT_TAGS = ("hf_starsse", "ensemble", "model-soup", "image-classification")
DEFAULT_DATASET = "custom"
# Keys whose values are secrets (`hub_token`, `token`, `api_key`, ...): never rendered nor pushed.
SECRET_KEY = re.compile(r"(?:^|_)(?:token|password|secret|api_key|apikey)$", re.IGNORECASE)
# The only metrics a card reports, in this order (runtimes, FLOs, steps... are not quality metrics).
CARD_METRICS = ("accuracy", "nll", "ece", "diversity")
# A member card has the member's own validation metrics from training (the Trainer's `eval_loss` is its NLL).
MEMBER_CARD_METRICS = ("accuracy", "nll", "ece", "brier", "loss")
SOUP_LABELS = {"uniform": "Uniform soup", "greedy": "Greedy soup"}
ROOT_DESCRIPTIONS = {
    "uniform": "the uniform **model soup** of the members (their averaged weights, BatchNorm statistics recalibrated "
    "on training data by `hf-starsse evaluate`)",
    "greedy": "the greedy **model soup** (the members that improved held-out accuracy, averaged; BatchNorm "
    "statistics recalibrated by `hf-starsse evaluate`)",
    "members-average": "the plain average of the members' weights (not evaluated; any BatchNorm statistics are the "
    "members' average, not recalibrated)",
}


def _metric_dict(raw: Any, allowed: tuple[str, ...] = CARD_METRICS) -> dict[str, float]:
    """`{"eval_accuracy": 0.8, "eval_runtime": 3}` -> `{"accuracy": 0.8}`: finite numbers of `allowed` metrics only,
    split prefixes dropped, in the order of `allowed`."""
    if not isinstance(raw, dict):
        return {}
    metrics = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        name = str(key)
        for prefix in ("eval_", "test_", "validation_"):
            name = name.removeprefix(prefix)
        if name in allowed:
            metrics[name] = float(value)
    return {name: metrics[name] for name in allowed if name in metrics}


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def _hub_repo_ids(candidates: Any, namespaced: bool = False) -> list[str]:
    """The entries that are Hub repo ids: local paths (existing or absolute) are not valid `base_model` / `datasets`
    metadata, and with `namespaced` only `namespace/name` counts (a class name like `ResNetForImageClassification` is
    a valid bare repo name, but no model's `base_model`)."""
    if candidates is None:
        return []
    if isinstance(candidates, str):
        candidates = [candidates]
    ids = []
    for candidate in candidates:
        if not isinstance(candidate, str) or candidate.startswith((".", "/", "~")) or os.path.isabs(candidate):
            continue
        if os.path.exists(candidate) or (namespaced and candidate.count("/") != 1):
            continue
        try:
            validate_repo_id(candidate)
        except HFValidationError:
            continue
        if candidate not in ids:
            ids.append(candidate)
    return ids


def _hyperparameter_rows(manifest: EnsembleManifest | None) -> list[tuple[str, str]]:
    if manifest is None:
        return []
    rows = [("strategy", manifest.strategy), ("num_members", str(manifest.num_members))]
    for name, value in sorted((manifest.hyperparameters or {}).items()):
        if SECRET_KEY.search(name) or value is None or isinstance(value, (dict, list)) and not value:
            continue
        text = str(value).replace("|", "\\|").replace("\n", " ")
        rows.append((name, text if len(text) <= 80 else text[:77] + "..."))
    return rows


def _result_rows(eval_results: dict[str, Any], root: str) -> list[tuple[str, dict[str, float]]]:
    """`(label, metrics)` of the root soup, the ensemble, the other soup and the members, in that order."""
    test = eval_results.get("test") if isinstance(eval_results.get("test"), dict) else {}
    soups = eval_results.get("soups") if isinstance(eval_results.get("soups"), dict) else {}
    rows: list[tuple[str, dict[str, float]]] = []
    if isinstance(soups.get(root), dict):
        rows.append((f"{SOUP_LABELS.get(root, root)} (repository root)", _metric_dict(soups[root].get("metrics"))))
    ensemble = _metric_dict({**(test.get("ensemble") or {}), "diversity": test.get("diversity")})
    rows.append((f"Ensemble ({len(test.get('members') or [])} members)", ensemble))
    for kind, soup in soups.items():
        if kind != root and isinstance(soup, dict):
            rows.append((SOUP_LABELS.get(kind, str(kind)), _metric_dict(soup.get("metrics"))))
    members = test.get("members") if isinstance(test.get("members"), list) else []
    names = test.get("member_names") or [f"member-{i}" for i in range(len(members))]
    for name, metrics in zip(names, members):
        rows.append((f"Member {str(name).removeprefix('member-')}", _metric_dict(metrics)))
    return [(label, metrics) for label, metrics in rows if metrics]


def _size_rows(eval_results: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The ensemble-vs-size table: ensemble (and uniform soup) of the first k members, k = 1..K."""
    test = eval_results.get("test") if isinstance(eval_results.get("test"), dict) else {}
    soups = {r.get("size"): r for r in eval_results.get("soup_vs_size") or [] if isinstance(r, dict)}
    rows, columns = [], []
    for entry in test.get("quality_vs_size") or []:
        if not isinstance(entry, dict):
            continue
        cells = {f"ensemble {m}": _fmt(v) for m, v in _metric_dict(entry).items()}
        cells.update({f"uniform soup {m}": _fmt(v) for m, v in _metric_dict(soups.get(entry.get("size"))).items()})
        rows.append({"k": entry.get("size"), "cells": cells})
        columns += [c for c in cells if c not in columns]
    return rows, columns


def build_model_card(
    manifest: EnsembleManifest | None = None,
    *,
    repo_id: str | None = None,
    eval_results: dict[str, Any] | None = None,
    root: str = "uniform",
    plots: list[str] | None = None,
    license: str | None = None,
    datasets: list[str] | str | None = None,
    base_model: list[str] | str | None = None,
    member_repos: list[str] | None = None,
    endpoint: str | None = None,
    template_path: str | os.PathLike | None = None,
) -> ModelCard:
    """Render the model card of a published ensemble.

    Args:
        manifest (`EnsembleManifest`, *optional*):
            The run's manifest (strategy, hyper-parameters, members).
        repo_id (`str`, *optional*):
            The repository the card is for (used as model name and in the usage snippets).
        eval_results (`dict`, *optional*):
            The run's `eval/eval.json` (see the module docstring); without it the card says the run was not evaluated.
        root (`str`, *optional*, defaults to `"uniform"`):
            What the repository root holds: the `uniform` or `greedy` soup, or `members-average`.
        plots (`list[str]`, *optional*):
            Paths of plot images relative to the repository root.
        license (`str`, *optional*):
            License id for the metadata (e.g. `"apache-2.0"`).
        datasets (`list[str]` or `str`, *optional*):
            Hub dataset ids; defaults to the `dataset_name` hyper-parameter when it is one.
        base_model (`list[str]` or `str`, *optional*):
            Hub ids of the pre-trained checkpoints; defaults to the manifest's `base_models` that are Hub ids.
        member_repos (`list[str]`, *optional*):
            One repo per member when members were also pushed to their own repositories; linked from the card.
        endpoint (`str`, *optional*):
            Hub URL used for links (defaults to `https://huggingface.co`).
        template_path (`str` or `os.PathLike`, *optional*):
            A custom Jinja template; defaults to `model_cards/ensemble_card.md`.

    Returns:
        `huggingface_hub.ModelCard`: the card; `str(card)` is the README.md text.
    """
    eval_results = eval_results if isinstance(eval_results, dict) else {}
    endpoint = (endpoint or "https://huggingface.co").rstrip("/")
    strategy = manifest.strategy if manifest is not None else None
    repo_id = repo_id or "<repo_id>"
    model_name = repo_id.split("/")[-1] if repo_id != "<repo_id>" else "hf_starsse-ensemble"
    hyperparameters = dict(manifest.hyperparameters or {}) if manifest is not None else {}
    train_dataset = _hub_repo_ids(hyperparameters.get("dataset_name"))
    datasets = _hub_repo_ids(datasets if datasets is not None else train_dataset) or None
    base_models = _hub_repo_ids(
        base_model if base_model is not None else (manifest.base_models if manifest else []), namespaced=True
    )

    data = eval_results.get("data") if isinstance(eval_results.get("data"), dict) else {}
    split = data.get("test") if isinstance(data.get("test"), str) else None
    data_name = Path(str(data["path"])).name if isinstance(data.get("path"), str) else None
    dataset = (train_dataset[0] if train_dataset and data_name == "eval_data" else data_name) or DEFAULT_DATASET
    rows = _result_rows(eval_results, root)
    result_metrics = [m for m in CARD_METRICS if any(m in metrics for _, metrics in rows)]
    results_rows = [{"name": label, "cells": {k: _fmt(v) for k, v in m.items()}} for label, m in rows]
    card_eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=metric,
            metric_name=f"{label} {metric}",
            metric_value=value,
        )
        for label, metrics in rows
        for metric, value in metrics.items()
    ]
    size_rows, size_columns = _size_rows(eval_results)
    members = []
    for i, record in enumerate(manifest.members if manifest is not None else []):
        repo = member_repos[i] if member_repos and i < len(member_repos) else None
        members.append(
            {
                "index": record.index,
                "init_from": record.init_from,
                "seed": record.seed,
                "learning_rate": record.learning_rate,
                "num_steps": record.num_steps,
                "num_epochs": record.num_epochs,
                "repo": repo,
                "repo_url": f"{endpoint}/{repo}" if repo else None,
            }
        )
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        datasets=datasets,
        tags=_tags(strategy),
        metrics=result_metrics or None,
        model_name=model_name,
        eval_results=card_eval_results or None,
    )
    plot_entries = [
        {"path": p, "title": Path(p).stem.replace("_", " ")} for p in (plots or []) if isinstance(p, str) and p
    ]
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path or ENSEMBLE_TEMPLATE),
        title=model_name,
        repo_id=repo_id,
        strategy_label=STRATEGY_LABELS.get(strategy or "", strategy),
        num_members=len(manifest.members) if manifest is not None else 0,
        base_model_text=", ".join(f"`{b}`" for b in (manifest.base_models if manifest else []) if b) or None,
        method_description=STRATEGY_DESCRIPTIONS.get(strategy or "", GENERIC_DESCRIPTION),
        root_text=ROOT_DESCRIPTIONS.get(root, ROOT_DESCRIPTIONS["uniform"]),
        has_eval=bool(rows),
        dataset_text=f"the `{split or 'test'}` split of `{dataset}`",
        result_metrics=result_metrics,
        results_rows=results_rows,
        size_rows=size_rows,
        size_columns=size_columns,
        plots=plot_entries,
        hyperparameters=_hyperparameter_rows(manifest),
        members=members,
        member_repos=bool(member_repos),
    )


def _tags(strategy: str | None) -> list[str]:
    tags = list(DEFAULT_TAGS)
    if strategy:
        tags.insert(1, strategy)
        label = STRATEGY_LABELS.get(strategy)
        if label and label.lower().replace(" ", "-") not in tags:
            tags.insert(2, label.lower().replace(" ", "-"))
    tags.append(f"arxiv:{PAPER_ARXIV_ID}")
    return tags


def build_member_card(
    manifest: EnsembleManifest | None,
    index: int,
    *,
    repo_id: str | None = None,
    ensemble_repo: str | None = None,
    license: str | None = None,
    endpoint: str | None = None,
) -> ModelCard:
    """The small card of a member pushed to its own repository (linked to the ensemble's repository)."""
    endpoint = (endpoint or "https://huggingface.co").rstrip("/")
    strategy = manifest.strategy if manifest is not None else None
    record = manifest.members[index] if manifest is not None and index < len(manifest.members) else None
    metrics = _metric_dict(record.metrics, MEMBER_CARD_METRICS) if record is not None else {}
    eval_results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=DEFAULT_DATASET,
            dataset_name=DEFAULT_DATASET,
            metric_type=metric,
            metric_name=f"Member {index} {metric}",
            metric_value=value,
        )
        for metric, value in metrics.items()
    ]
    origin = "fine-tuned from the pre-trained checkpoint"
    if record is not None:
        origin = (
            f"fine-tuned from `{record.init_from}`"
            if record.parent is None
            else f"one cycle from member {record.parent}"
        )
    base_models = _hub_repo_ids(manifest.base_models if manifest else [], namespaced=True)
    tags = ["hf_starsse", "ensemble-member", "image-classification"] + ([strategy] if strategy else [])
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        tags=tags,
        model_name=(repo_id or f"member-{index}").split("/")[-1],
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(MEMBER_TEMPLATE),
        title=(repo_id or f"member-{index}").split("/")[-1],
        index=index,
        repo_id=repo_id or "<repo_id>",
        ensemble_repo=ensemble_repo,
        ensemble_url=f"{endpoint}/{ensemble_repo}" if ensemble_repo else None,
        strategy_label=STRATEGY_LABELS.get(strategy or "", strategy),
        origin=origin,
    )

"""Model cards of published ensembles, rendered from the Jinja templates in `model_cards/` with
`huggingface_hub.ModelCard.from_template`.

The YAML metadata holds `library_name`, `base_model`, `datasets`, `tags` (with the strategy), `license`,
`pipeline_tag` and a `model-index` with one `EvalResult` per metric of the ensemble, the soup and each member. Every
input is optional: a card renders (and its metadata validates) with nothing but defaults.

The evaluation JSON is read leniently (the evaluation report may grow); what is used:

```
{"dataset": "cifar100", "split": "test",
 "ensemble": {"accuracy": 0.81, "nll": 0.7, ...},          # or "eval_accuracy", ...
 "soup": {"accuracy": 0.80, ...},                            # or "uniform_soup"
 "members": [{"accuracy": 0.78, ...}, ...],                  # else the members' metrics in the manifest
 "by_size": [{"k": 1, "ensemble": {...}, "soup": {...}}, ...]}  # or "ensemble_size" / "quality_vs_size"
```
"""

from __future__ import annotations

import html
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
# Metrics of the results table, in this order (others follow alphabetically).
PREFERRED_METRICS = ("accuracy", "nll", "ece", "brier", "loss", "diversity")


def _metric_dict(raw: Any) -> dict[str, float]:
    """`{"eval_accuracy": 0.8, "epoch": 1}` -> `{"accuracy": 0.8}`: finite numbers only, split prefixes dropped."""
    if not isinstance(raw, dict):
        return {}
    metrics = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        name = str(key)
        for prefix in ("eval_", "test_", "validation_"):
            name = name.removeprefix(prefix)
        if name in ("epoch", "runtime", "samples_per_second", "steps_per_second", "step", "k"):
            continue
        metrics[name] = float(value)
    return metrics


def _ordered(names: set[str]) -> list[str]:
    return [m for m in PREFERRED_METRICS if m in names] + sorted(names - set(PREFERRED_METRICS))


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def _hub_repo_ids(candidates: Any) -> list[str]:
    """The entries that are Hub repo ids (local paths are not valid `base_model` / `datasets` metadata)."""
    if candidates is None:
        return []
    if isinstance(candidates, str):
        candidates = [candidates]
    ids = []
    for candidate in candidates:
        if not isinstance(candidate, str) or candidate.startswith((".", "/", "~")) or os.path.isabs(candidate):
            continue
        try:
            validate_repo_id(candidate)
        except HFValidationError:
            continue
        if candidate not in ids:
            ids.append(candidate)
    return ids


_PLAIN = re.compile(r"^[\w./:@+=-]+$")


def md_text(value: Any) -> str:
    """A run string (checkpoint, dataset, split, `init_from`, ...) made inert in the Markdown body: one line, HTML
    escaped, table pipes and Markdown punctuation backslash-escaped (no `---` line, broken table or `<script>`)."""
    text = " ".join(str(value).split())
    text = html.escape(text, quote=False)
    return re.sub(r"([\\`*\[\]|#!<>{}])", r"\\\1", text)


def md_code(value: Any) -> str:
    """`value` as inline code when it is a plain identifier / path / repo id, else escaped text ([`md_text`])."""
    text = str(value)
    return f"`{text}`" if _PLAIN.match(text) else md_text(text)


def _optimizer_text(hyperparameters: dict[str, Any]) -> str | None:
    """One sentence on gradient clipping and which parameters were decayed (where the Trainer's defaults differ from
    the paper's recipes), when the manifest records them."""
    parts = []
    clip = hyperparameters.get("max_grad_norm")
    if isinstance(clip, (int, float)) and not isinstance(clip, bool):
        parts.append(f"gradients clipped to norm {clip:g}" if clip > 0 else "no gradient clipping")
    decay_all = hyperparameters.get("weight_decay_on_norm_and_bias")
    if isinstance(decay_all, bool):
        wd = hyperparameters.get("weight_decay")
        wd_text = f"weight decay {wd:g}" if isinstance(wd, (int, float)) else "weight decay"
        parts.append(
            f"{wd_text} on every parameter (biases and norm weights included, as the authors' SGD)"
            if decay_all
            else f"{wd_text} except on biases and norm weights (the `Trainer`'s grouping)"
        )
    return ("Optimizer: " + "; ".join(parts) + ".") if parts else None


def _hyperparameter_rows(manifest: EnsembleManifest | None) -> list[tuple[str, str]]:
    if manifest is None:
        return []
    rows = [("strategy", manifest.strategy), ("num_members", str(manifest.num_members))]
    for name, value in sorted((manifest.hyperparameters or {}).items()):
        if SECRET_KEY.search(name) or value is None or isinstance(value, (dict, list)) and not value:
            continue
        text = " ".join(str(value).split())
        rows.append((md_text(name), md_text(text if len(text) <= 80 else text[:77] + "...")))
    return rows


def build_model_card(
    manifest: EnsembleManifest | None = None,
    *,
    repo_id: str | None = None,
    eval_results: dict[str, Any] | None = None,
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
            The run's manifest (strategy, hyper-parameters, members and their metrics).
        repo_id (`str`, *optional*):
            The repository the card is for (used as model name and in the usage snippets).
        eval_results (`dict`, *optional*):
            The run's evaluation JSON (see the module docstring for the keys used).
        plots (`list[str]`, *optional*):
            Paths of plot images relative to the repository root.
        license (`str`, *optional*):
            License id for the metadata (e.g. `"apache-2.0"`).
        datasets (`list[str]` or `str`, *optional*):
            Hub dataset ids; defaults to the evaluation dataset / `dataset_name` hyper-parameter when those are ids.
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
    dataset = eval_results.get("dataset") or hyperparameters.get("dataset_name")
    dataset = dataset if isinstance(dataset, str) and dataset else None
    split = eval_results.get("split") if isinstance(eval_results.get("split"), str) else None
    if datasets is None:
        datasets = _hub_repo_ids(dataset)
    datasets = _hub_repo_ids(datasets) or None
    base_models = _hub_repo_ids(base_model if base_model is not None else (manifest.base_models if manifest else []))

    # Results: ensemble, soup, members.
    rows: list[tuple[str, str, dict[str, float]]] = []  # (label, short name, metrics)
    ensemble_metrics = _metric_dict(eval_results.get("ensemble"))
    soup_metrics = _metric_dict(eval_results.get("soup", eval_results.get("uniform_soup")))
    if ensemble_metrics:
        rows.append(("Ensemble", "ensemble", ensemble_metrics))
    if soup_metrics:
        rows.append(("Uniform soup", "soup", soup_metrics))
    member_metrics = eval_results.get("members")
    if isinstance(member_metrics, dict):
        member_metrics = [member_metrics[k] for k in sorted(member_metrics, key=str)]
    if not isinstance(member_metrics, list) or not member_metrics:
        member_metrics = [m.metrics for m in manifest.members] if manifest is not None else []
    for i, metrics in enumerate(member_metrics):
        metrics = _metric_dict(metrics)
        if metrics:
            rows.append((f"Member {i}", f"member-{i}", metrics))
    result_metrics = _ordered({m for _, _, metrics in rows for m in metrics})
    results_rows = [{"name": label, "cells": {k: _fmt(v) for k, v in m.items()}} for label, _, m in rows]

    card_eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset or DEFAULT_DATASET,
            dataset_name=dataset or DEFAULT_DATASET,
            dataset_split=split,
            metric_type=metric,
            metric_name=f"{label} {metric}",
            metric_value=round(value, 6),
        )
        for label, _, metrics in rows
        for metric, value in metrics.items()
    ]

    # Quality vs ensemble size.
    size_rows, size_columns = [], []
    by_size = next(
        (
            eval_results[k]
            for k in ("by_size", "ensemble_size", "quality_vs_size")
            if isinstance(eval_results.get(k), list)
        ),
        [],
    )
    for position, entry in enumerate(by_size, start=1):
        if not isinstance(entry, dict):
            continue
        values = {}
        for who in ("ensemble", "soup"):
            for metric, value in _metric_dict(entry.get(who)).items():
                values[f"{who} {metric}"] = _fmt(value)
        if values:
            size_rows.append({"k": entry.get("k", position), "cells": values})
            size_columns += [c for c in values if c not in size_columns]

    members = []
    for i, record in enumerate(manifest.members if manifest is not None else []):
        repo = member_repos[i] if member_repos and i < len(member_repos) else None
        members.append(
            {
                "index": record.index,
                "init_from": md_code(record.init_from),
                "seed": record.seed,
                "learning_rate": record.learning_rate,
                "num_steps": record.num_steps,
                "num_epochs": record.num_epochs,
                "repo": repo,
                "repo_url": f"{endpoint}/{repo}" if repo else None,
            }
        )

    tags = list(DEFAULT_TAGS)
    if strategy:
        tags.insert(1, strategy)
        label = STRATEGY_LABELS.get(strategy)
        if label and label.lower().replace(" ", "-") not in tags:
            tags.insert(2, label.lower().replace(" ", "-"))
    tags.append(f"arxiv:{PAPER_ARXIV_ID}")

    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        datasets=datasets,
        tags=tags,
        metrics=result_metrics or None,
        model_name=model_name,
        eval_results=card_eval_results or None,
    )
    plot_entries = [
        {"path": md_text(p), "title": md_text(Path(p).stem.replace("_", " "))}
        for p in (plots or [])
        if isinstance(p, str) and p
    ]
    description = STRATEGY_DESCRIPTIONS.get(strategy or "", GENERIC_DESCRIPTION)
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path or ENSEMBLE_TEMPLATE),
        title=model_name,
        repo_id=repo_id,
        strategy_label=STRATEGY_LABELS.get(strategy or "", strategy),
        num_members=len(manifest.members) if manifest is not None else 0,
        base_model_text=", ".join(md_code(b) for b in (manifest.base_models if manifest else []) if b) or None,
        method_description=description,
        has_eval=bool(eval_results),
        dataset_text=md_code(dataset) + (f" ({md_text(split)} split)" if split else "")
        if dataset
        else "the run's evaluation data",
        result_metrics=result_metrics,
        results_rows=results_rows,
        size_rows=size_rows,
        size_columns=size_columns,
        plots=plot_entries,
        hyperparameters=_hyperparameter_rows(manifest),
        optimizer_text=_optimizer_text(hyperparameters),
        members=members,
        member_repos=bool(member_repos),
    )


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
    metrics = _metric_dict(record.metrics) if record is not None else {}
    eval_results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=DEFAULT_DATASET,
            dataset_name=DEFAULT_DATASET,
            metric_type=metric,
            metric_name=f"Member {index} {metric}",
            metric_value=round(value, 6),
        )
        for metric, value in metrics.items()
    ]
    origin = "fine-tuned from the pre-trained checkpoint"
    if record is not None:
        origin = (
            f"fine-tuned from {md_code(record.init_from)}"
            if record.parent is None
            else f"one cycle from member {record.parent}"
        )
    base_models = _hub_repo_ids(manifest.base_models if manifest else [])
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

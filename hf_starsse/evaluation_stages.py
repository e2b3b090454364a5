"""The stages of `evaluate_run` over an [`EvaluationPasses`]: data, plan, soups, basin and OOD.

Each stage asks the passes for predictions, so a stage whose models were already run on its data (in this process
or in the run's `predictions/` folder) runs no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .evaluation_passes import EvaluationPasses, Predictor, format_plan, saved_soup_key, split_data
from .prediction_cache import PredictionCache
from .run_folder import RunFolder


def prepare_passes(
    run_dir: Path,
    manifest: Any,
    members: list[Path],
    splits: dict[str, Any],
    data_path: Path,
    processor: Any,
    device: torch.device,
    settings: Any,
) -> tuple[EvaluationPasses, dict[str, Any]]:
    """The passes (members, cache) and every dataset `settings` asks for, keyed `test`, `validation`, `bn`, `ood`."""
    from .eval_data import make_eval_dataloader

    def loader(dataset: Any, transform: Any = None) -> Any:
        return make_eval_dataloader(
            dataset, batch_size=settings.batch_size, image_processor=processor, image_transform=transform
        )

    def split(name: str, **kwargs: Any) -> Any:
        return split_data(
            name, splits[name], data_path, name, loader, processor, max_samples=settings.max_samples, **kwargs
        )

    data: dict[str, Any] = {"test": split(settings.split)}
    if settings.validation_split in splits:
        data["validation"] = split(settings.validation_split)
    bn_split = settings.bn_split or ("train" if "train" in splits else settings.validation_split)
    data["bn_split"] = bn_split
    data["bn"] = split(bn_split, batch_size=settings.batch_size) if bn_split in splits else None
    if settings.ood:
        data["ood"] = _ood_data(splits[settings.split], data_path, processor, settings)
    cache = PredictionCache(RunFolder(run_dir).predictions_dir, device=device, progress=settings.progress)
    names = [f"member-{m.index}" for m in manifest.members]
    return EvaluationPasses(members, names, cache, device, data["bn"], settings.num_bins), data


def _ood_data(test: Any, data_path: Path, processor: Any, settings: Any) -> dict[tuple[str, int], Any]:
    from .eval_data import make_eval_dataloader
    from .ood import check_ood_settings, corruption_transform, ood_subset

    corruptions, severities = check_ood_settings(settings.corruptions, settings.severities)
    rows = min(len(test), settings.max_samples or len(test))
    indices = ood_subset(rows, settings.ood_max_samples or None, seed=settings.seed)
    out = {}
    for c in corruptions:
        for s in severities:

            def loader(dataset: Any, c: str = c, s: int = s) -> Any:
                transform = corruption_transform(c, s, seed=settings.seed)
                return make_eval_dataloader(
                    dataset, batch_size=settings.batch_size, image_processor=processor, image_transform=transform
                )

            transform = {"corruption": c, "severity": s, "seed": settings.seed}
            out[(c, s)] = split_data(
                f"{c}-{s}", test, data_path, settings.split, loader, processor, settings.max_samples, indices,
                transform, keep_in_memory=False,
            )  # fmt: skip
    return out


def print_plan(passes: EvaluationPasses, data: dict[str, Any], settings: Any, num_members: int) -> None:
    """Print what is left to compute (and set the cache's total for the estimate after the first batches)."""
    test, members = data["test"], passes.predictors
    if settings.soup != "none" and passes.needs_bn and data["bn"] is None:
        raise ValueError(
            f"The members have BatchNorm: soups need a `{data['bn_split']}` split to recalibrate it (`--bn-split`)."
        )
    stages = [passes.plan_stage("members", members, test)]
    notes = []
    if settings.soup != "none" and num_members > 1:
        sizes = soup_sizes(num_members, settings)[1:]
        soups = [passes.soup(range(k)) for k in sizes]
        label = f"uniform soups k=2..{num_members}" if len(sizes) > 1 else f"uniform soup k={num_members}"
        stages.append(passes.plan_stage(f"{label} (k=1 is member 0)", soups, test))
    if settings.soup == "greedy":
        stages.append(passes.plan_stage("greedy soup: members", members, data["validation"]))
        notes.append(f"greedy soup: up to {num_members - 1} candidate soups on {data['validation'].name} (not cached)")
    if settings.interpolation_points and num_members >= 2:
        a, b = settings.interpolate
        points = [passes.combination([a, b], [x], "interpolation") for x in _alphas(settings.interpolation_points)]
        label = f"interpolation member {a} -> {b} ({settings.interpolation_points} points, end points = members)"
        stages.append(passes.plan_stage(label, points, test))
    if settings.plane_grid and num_members >= 3:
        notes.append(f"plane: {settings.plane_grid**2} points on {test.name} (not counted above)")
    if settings.ood:
        ood = list(data["ood"].values())
        notes.insert(0, _ood_note(ood[0], test, settings))
        uniform = [passes.soup(range(num_members))] if settings.soup != "none" else []
        for item in ood:
            stages.append(passes.plan_stage(f"OOD {item.name}", [*members, *uniform], item))
    if passes.needs_bn and settings.soup != "none":
        notes.append(f"derived models (soups, line points) recalibrate BatchNorm on `{data['bn_split']}` first")
    print(format_plan(stages, notes), flush=True)
    passes.cache.images_to_do = sum(s["images"] for s in stages)


def soup_sizes(num_members: int, settings: Any) -> list[int]:
    """The sizes k of the uniform soups of the first k members that `evaluate` reports (1 is member 0 itself)."""
    if getattr(settings, "soup_vs_size", True):
        return list(range(1, num_members + 1))
    return sorted({1, num_members})


def _alphas(num_points: int) -> list[float]:
    import numpy as np

    return [float(x) for x in np.linspace(0.0, 1.0, num_points)]


def _ood_note(item: Any, test: Any, settings: Any) -> str:
    if item.num_samples < test.num_samples:
        return (
            f"OOD on a seeded random subset of {item.num_samples} of the {test.num_samples} {test.name} images "
            f"(seed {settings.seed}; `--ood-max-samples 0` uses all)"
        )
    return f"OOD on all {item.num_samples} {test.name} images"


def evaluate_soups(
    run_dir: Path, passes: EvaluationPasses, data: dict[str, Any], settings: Any, results: dict[str, Any]
) -> dict[str, Predictor]:
    """Uniform soups of the first k members, the uniform (and greedy) soup saved in `RUN/soups/`."""
    from .soups import greedy_soup

    folder, test, k_all = RunFolder(run_dir), data["test"], len(passes.members)
    if passes.needs_bn and data["bn"] is None:
        raise ValueError(
            f"The members have BatchNorm: soups need a `{data['bn_split']}` split to recalibrate it (`--bn-split`)."
        )
    results["data"]["bn_recalibration"] = data["bn_split"] if passes.needs_bn else None
    uniform = passes.soup(range(k_all), name="uniform soup", saved=folder.soup_dir("uniform"))
    results["soup_vs_size"] = [
        {"size": k, **passes.metrics(uniform if k == k_all else passes.soup(range(k)), test)}
        for k in soup_sizes(k_all, settings)
    ]
    everyone = list(range(k_all))
    soups = {"uniform": _save(uniform, folder, "uniform", passes, everyone, results["soup_vs_size"][-1], results)}
    predictors = {"uniform soup": uniform}
    if settings.soup == "greedy":
        val = data["validation"]
        greedy = greedy_soup(
            passes.members,
            score_members=lambda idx: passes.metrics(passes.soup(idx), val)["accuracy"],
            progress=settings.progress,
        )
        predictor = passes.soup(greedy.selected, name="greedy soup", saved=folder.soup_dir("greedy"))
        metrics = passes.metrics(predictor, test)
        soups["greedy"] = _save(predictor, folder, "greedy", passes, greedy.selected, metrics, results)
        soups["greedy"].update(
            {
                "validation_accuracy": greedy.score,
                "member_validation_accuracy": greedy.member_scores,
                "history": greedy.history,
            }
        )
        predictors["greedy soup"] = predictor
    results["soups"] = soups
    return predictors


def _save(
    predictor: Predictor,
    run: RunFolder,
    kind: str,
    passes: EvaluationPasses,
    selected: list[int],
    metrics: dict[str, float],
    results: dict[str, Any],
) -> dict[str, Any]:
    """Save a soup (BatchNorm statistics included) to `soups/<kind>/`, crash-safely; when the same soup (same key)
    is saved there already only its `soup.json` is rewritten (with this evaluation's id), without any model pass."""
    from .file_utils import atomic_write_json
    from .soups import SOUP_INFO_NAME, save_soup_model

    path = run.soup_dir(kind)
    info = {"kind": kind, "members": selected, "metrics": metrics, "evaluation_id": results["evaluation_id"]}
    if saved_soup_key(path) != predictor.key:
        save_soup_model(
            predictor.model(), path, passes.members[0], info={**info, "key": predictor.key}, overwrite=True
        )
    else:
        atomic_write_json(path / SOUP_INFO_NAME, {**info, "key": predictor.key})
    return {**info, "path": path.relative_to(run.root).as_posix()}


def evaluate_basin(manifest: Any, members: list[Path], passes: EvaluationPasses, test: Any, settings: Any) -> dict:
    """Distances between members (and to the pre-trained checkpoint), the interpolation line and the plane."""
    from .basin import distance_report

    basin: dict[str, Any] = {
        "distances": distance_report(members, manifest.base_models[0] if manifest.base_models else None)
    }
    if settings.interpolation_points and len(members) >= 2:
        a, b = settings.interpolate
        basin["interpolation"] = {
            "members": [a, b],
            "points": passes.interpolation(a, b, settings.interpolation_points, test),
        }
    if settings.plane_grid and len(members) >= 3:
        plane = passes.plane(settings.plane_grid, test, progress=settings.progress)
        plane["names"] = ["member-0", "member-1", "member-2"]
        basin["plane"] = plane
    return basin


def evaluate_ood_stage(
    passes: EvaluationPasses, soups: dict[str, Predictor], test: Any, data: dict[str, Any], processor: Any, settings
) -> dict[str, Any]:
    """Members, soups and their ensemble on each corruption x severity of the (subset of the) test split."""
    from .ood import evaluate_ood

    predictors = [*passes.predictors, *soups.values()]
    names = [p.name for p in passes.predictors] + list(soups)
    first = next(iter(data["ood"].values()))
    result = evaluate_ood(
        predictors,
        names,
        test,
        processor,
        corruptions=sorted({c for c, _ in data["ood"]}, key=[c for c, _ in data["ood"]].index),
        severities=sorted({s for _, s in data["ood"]}, key=[s for _, s in data["ood"]].index),
        ensemble_indices=list(range(len(passes.predictors))),
        batch_size=settings.batch_size,
        max_samples=settings.max_samples,
        seed=settings.seed,
        num_bins=settings.num_bins,
        progress=settings.progress,
        predict=lambda c, s, _loader: passes.probs(predictors, data["ood"][(c, s)]),
    )
    result["settings"]["max_samples"] = first.num_samples
    result["settings"]["subset"] = first.description["subset"]
    return result

"""Evaluate a whole run: members, ensemble, soups, basin analysis and OOD, as `hf-starsse evaluate` does."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .basin import distance_report, interpolation_curve, plane_grid
from .bn_recalibration import has_batchnorm, recalibrate_batchnorm
from .ensemble import Ensemble, default_device, evaluate_model, load_member_model
from .eval_data import make_eval_dataloader
from .evaluation_report import write_report
from .metrics import DEFAULT_NUM_BINS
from .run_folder import RunFolder, recover_replacements
from .soups import greedy_soup, held_out_score_fn, load_soup_into, save_soup_model, uniform_soup


@dataclass
class EvaluationSettings:
    """What `evaluate_run` computes.

    Args:
        dataset (`str`, *optional*): A `save_to_disk` folder; defaults to `<run>/eval_data/`.
        split (`str`, *optional*, defaults to `"test"`): The split evaluated.
        validation_split (`str`, *optional*, defaults to `"validation"`): Held-out split of the greedy soup.
        bn_split (`str`, *optional*): Split used to recalibrate BatchNorm of soups; `train` when the data has one,
            else the validation split.
        soup (`str`, *optional*, defaults to `"uniform"`): `uniform`, `greedy` (also builds the uniform soup) or
            `none`.
        ood (`bool`, *optional*, defaults to `False`): Evaluate on corrupted test data.
        corruptions (`list[str]`, *optional*): OOD corruptions (all 19 by default).
        severities (`list[int]`, *optional*): OOD severities (1..5 by default).
        ood_max_samples (`int`, *optional*): Test samples used per corruption and severity.
        interpolation_points (`int`, *optional*, defaults to 11): Points on the line between two members (0: skip).
        interpolate (`tuple[int, int]`, *optional*, defaults to `(0, 1)`): The two members of the line.
        plane_grid (`int`, *optional*, defaults to 0): Grid size of the plane through members 0, 1, 2 (0: skip).
        batch_size (`int`, *optional*, defaults to 64): Evaluation batch size.
        max_samples (`int`, *optional*): Use only the first samples of each split.
        num_bins (`int`, *optional*, defaults to 15): ECE bins.
        device (`str`, *optional*): `cpu`, `cuda`, ...; CUDA when available by default.
        output_dir (`str`, *optional*): Where the report goes; `<run>/eval/` by default.
        plots (`bool`, *optional*, defaults to `True`): Write PNG plots.
        progress (`bool`, *optional*, defaults to `True`): Show progress bars.
    """

    dataset: str | None = None
    split: str = "test"
    validation_split: str = "validation"
    bn_split: str | None = None
    soup: str = "uniform"
    ood: bool = False
    corruptions: list[str] | None = None
    severities: list[int] | None = None
    ood_max_samples: int | None = None
    interpolation_points: int = 11
    interpolate: tuple[int, int] = (0, 1)
    plane_grid: int = 0
    batch_size: int = 64
    max_samples: int | None = None
    num_bins: int = DEFAULT_NUM_BINS
    device: str | None = None
    output_dir: str | None = None
    plots: bool = True
    progress: bool = True
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.soup not in ("uniform", "greedy", "none"):
            raise ValueError(f"`soup` should be one of uniform, greedy, none; got {self.soup!r}.")
        for name in ("batch_size", "num_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` should be positive, got {getattr(self, name)}.")
        for name in ("interpolation_points", "plane_grid"):
            value = getattr(self, name)
            if value < 0 or value == 1:
                raise ValueError(f"`{name}` should be 0 (skip) or at least 2, got {value}.")


def load_splits(path: str | os.PathLike) -> dict[str, Any]:
    """The splits of a `save_to_disk` folder (a lone `Dataset` is returned as `{"test": dataset}`)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No saved dataset at {path}.")
    try:
        data = load_from_disk(str(path))
    except Exception as err:  # datasets raises FileNotFoundError / ValueError for folders that are not datasets
        raise ValueError(f"{path} is not a `save_to_disk` dataset folder ({str(err).splitlines()[0]}).") from None
    if isinstance(data, DatasetDict):
        return dict(data)
    if isinstance(data, Dataset):
        return {"test": data}
    raise ValueError(f"{path} is not a saved `datasets.Dataset` / `DatasetDict`.")


def resolve_eval_data(run_dir: Path, settings: EvaluationSettings) -> tuple[Path, dict[str, Any]]:
    """The evaluation data: `settings.dataset`, else `<run>/eval_data/` (one-line error when neither exists)."""
    eval_data_dir = RunFolder(run_dir).eval_data_dir
    if settings.dataset is not None:
        path = Path(settings.dataset)
    elif eval_data_dir.exists():
        path = eval_data_dir
    else:
        raise FileNotFoundError(
            f"No evaluation data: pass `--dataset PATH` (a `save_to_disk` folder) or save one at {eval_data_dir}."
        )
    splits = load_splits(path)
    if settings.split not in splits:
        raise ValueError(f"`split` should be one of {sorted(splits)} in {path}, got {settings.split!r}.")
    return path, splits


def _image_processor(member: Path) -> Any:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(member))
    except (OSError, ValueError):
        return None


def evaluate_run(run_dir: str | os.PathLike, settings: EvaluationSettings | None = None) -> dict[str, Any]:
    """Evaluate the run in `run_dir` and write the report (see `hf_starsse.evaluation_report.write_report`).

    The soups go to `soups/<kind>/` and the report to `eval/` (names of [`RunFolder`]); each replaces the previous
    one crash-safely (a kill leaves the old or the new folder), and the results and the soups share one
    `evaluation_id` so that readers (`hf-starsse push`) can tell a soup from another evaluation.

    Returns:
        `dict`: the results written to `eval.json` (plus `written`: the report files).
    """
    settings = settings or EvaluationSettings()
    if not settings.progress:
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    manifest = run.read_manifest()
    members = run.member_paths(manifest)
    if not members:
        raise ValueError(f"The manifest of {run_dir} lists no finished members.")
    for i in settings.interpolate:
        if settings.interpolation_points and not 0 <= i < len(members):
            raise ValueError(
                f"`interpolate` should name members in 0..{len(members) - 1}, got {settings.interpolate}."
            )
    data_path, splits = resolve_eval_data(run_dir, settings)
    device = torch.device(settings.device) if settings.device else default_device()
    processor = _image_processor(members[0])
    # everything that can be checked before the long passes is checked here
    if settings.soup == "greedy" and settings.validation_split not in splits:
        raise ValueError(
            f"The greedy soup needs a held-out split: `{settings.validation_split}` is not in {sorted(splits)}."
        )
    if settings.bn_split is not None and settings.bn_split not in splits:
        raise ValueError(f"`bn_split` should be one of {sorted(splits)}, got {settings.bn_split!r}.")
    if settings.ood:
        from .ood import check_ood_settings, load_imagecorruptions

        check_ood_settings(settings.corruptions, settings.severities)
        load_imagecorruptions()
        if processor is None:
            raise ValueError(
                f"OOD evaluation needs the members' image processor (to undo the normalisation of `pixel_values`): "
                f"none could be loaded from {members[0]}."
            )

    def loader(split: str) -> Any:
        return make_eval_dataloader(
            splits[split], batch_size=settings.batch_size, image_processor=processor, max_samples=settings.max_samples
        )

    test_loader = loader(settings.split)
    bn_split = settings.bn_split or ("train" if "train" in splits else settings.validation_split)
    bn_loader = loader(bn_split) if bn_split in splits else None
    for folder in (run.soups_dir, run.eval_dir):  # finish what a killed evaluation left (old or new, never none)
        recover_replacements(folder)
    results: dict[str, Any] = {
        "evaluation_id": uuid.uuid4().hex,
        "run": str(run_dir),
        "strategy": manifest.strategy,
        "num_members": len(members),
        "data": {"path": str(data_path), "test": settings.split},
    }
    ensemble = Ensemble.from_pretrained(members, device=device)
    ensemble.names = [f"member-{m.index}" for m in manifest.members]
    results["test"] = ensemble.evaluate(
        test_loader, num_bins=settings.num_bins, progress="members + ensemble" if settings.progress else False
    )

    template = None
    soup_models: dict[str, torch.nn.Module] = {}
    if settings.soup != "none":
        template = load_member_model(members[0], device=device)
        needs_bn = has_batchnorm(template)
        if needs_bn and bn_loader is None:
            raise ValueError(
                f"The members have BatchNorm: soups need a `{bn_split}` split to recalibrate it (`--bn-split`)."
            )
        results["data"]["bn_recalibration"] = bn_split if needs_bn else None
        soups: dict[str, Any] = {}
        soup_vs_size = []
        sizes = range(1, len(members) + 1)
        for k in tqdm(sizes, desc="uniform soups of the first k members", disable=not settings.progress):
            load_soup_into(template, uniform_soup(members[:k]))
            if needs_bn:
                recalibrate_batchnorm(template, bn_loader, device=device)
            metrics = evaluate_model(template, test_loader, device=device, num_bins=settings.num_bins)
            soup_vs_size.append({"size": k, **metrics})
        results["soup_vs_size"] = soup_vs_size
        soups["uniform"] = _save(
            template, run, "uniform", members[0], list(range(len(members))), soup_vs_size[-1], results
        )
        if settings.soup == "greedy":
            val_loader = loader(settings.validation_split)
            score_fn = held_out_score_fn(
                template, val_loader, bn_dataloader=bn_loader if needs_bn else None, device=device
            )
            greedy = greedy_soup(members, score_fn, progress=settings.progress)
            load_soup_into(template, greedy.state_dict)
            if needs_bn:
                recalibrate_batchnorm(template, bn_loader, device=device)
            metrics = evaluate_model(template, test_loader, device=device, num_bins=settings.num_bins)
            soups["greedy"] = _save(template, run, "greedy", members[0], greedy.selected, metrics, results)
            soups["greedy"].update(
                {
                    "validation_accuracy": greedy.score,
                    "member_validation_accuracy": greedy.member_scores,
                    "history": greedy.history,
                }
            )
        results["soups"] = soups
        for kind in soups:
            soup_models[f"{kind} soup"] = (
                load_member_model(run.soup_dir(kind), device=device) if settings.ood else None
            )

    basin: dict[str, Any] = {
        "distances": distance_report(members, manifest.base_models[0] if manifest.base_models else None)
    }
    if settings.interpolation_points and len(members) >= 2:
        template = template or load_member_model(members[0], device=device)
        a, b = settings.interpolate
        points = interpolation_curve(
            template,
            uniform_soup([members[a]]),
            uniform_soup([members[b]]),
            test_loader,
            num_points=settings.interpolation_points,
            bn_dataloader=bn_loader if has_batchnorm(template) else None,
            device=device,
            num_bins=settings.num_bins,
            progress=settings.progress,
        )
        basin["interpolation"] = {"members": [a, b], "points": points}
    if settings.plane_grid and len(members) >= 3:
        template = template or load_member_model(members[0], device=device)
        plane = plane_grid(
            template,
            [uniform_soup([m]) for m in members[:3]],
            test_loader,
            grid_size=settings.plane_grid,
            bn_dataloader=bn_loader if has_batchnorm(template) else None,
            device=device,
            progress=settings.progress,
        )
        plane["names"] = ["member-0", "member-1", "member-2"]
        basin["plane"] = plane
    results["basin"] = basin

    if settings.ood:
        from .ood import evaluate_ood

        models = list(ensemble.models) + [m for m in soup_models.values() if m is not None]
        names = list(ensemble.names) + [n for n, m in soup_models.items() if m is not None]
        results["ood"] = evaluate_ood(
            models,
            names,
            splits[settings.split],
            processor,
            corruptions=settings.corruptions,
            severities=settings.severities,
            ensemble_indices=list(range(len(ensemble))),
            batch_size=settings.batch_size,
            max_samples=settings.ood_max_samples or settings.max_samples,
            seed=settings.seed,
            num_bins=settings.num_bins,
            device=device,
            progress=settings.progress,
        )
    output_dir = Path(settings.output_dir) if settings.output_dir else run.eval_dir
    written = write_report(results, output_dir, manifest=manifest, plots=settings.plots)
    results["written"] = {k: str(v) for k, v in written.items()}
    return results


def _save(
    model: torch.nn.Module,
    run: RunFolder,
    kind: str,
    reference: Path,
    selected: list[int],
    metrics: dict[str, float],
    results: dict[str, Any],
) -> dict[str, Any]:
    """Save the soup held by `model` (BatchNorm statistics included) to `soups/<kind>/`, replacing the previous one
    crash-safely, and describe it (its `soup.json` carries the evaluation's id)."""
    info = {"kind": kind, "members": selected, "metrics": metrics, "evaluation_id": results["evaluation_id"]}
    path = save_soup_model(model, run.soup_dir(kind), reference, info=info, overwrite=True)
    return {**info, "path": path.relative_to(run.root).as_posix()}

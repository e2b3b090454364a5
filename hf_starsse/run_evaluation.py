"""Evaluate a whole run: members, ensemble, soups, basin analysis and OOD, as `hf-starsse evaluate` does."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .ensemble import default_device
from .evaluation_report import write_report
from .evaluation_stages import evaluate_basin, evaluate_ood_stage, evaluate_soups, prepare_passes, print_plan
from .metrics import DEFAULT_NUM_BINS
from .ood import DEFAULT_OOD_SAMPLES
from .run_folder import RunFolder, recover_replacements


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
        soup_vs_size (`bool`, *optional*, defaults to `True`): Also evaluate the uniform soups of the first k members,
            k = 2..K-1 (each one BatchNorm recalibration and one pass); `False` keeps k = 1 (member 0) and K.
        ood (`bool`, *optional*, defaults to `False`): Evaluate on corrupted test data.
        corruptions (`list[str]`, *optional*): OOD corruptions (all 19 by default).
        severities (`list[int]`, *optional*): OOD severities (1..5 by default).
        ood_max_samples (`int`, *optional*, defaults to 200): Size of the seeded random subset of the test split used
            per corruption and severity (0: the whole split).
        interpolation_points (`int`, *optional*, defaults to 5): Points on the line between two members, end points
            (the members themselves, no extra pass) included (0: skip).
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
    soup_vs_size: bool = True
    ood: bool = False
    corruptions: list[str] | None = None
    severities: list[int] | None = None
    ood_max_samples: int | None = DEFAULT_OOD_SAMPLES
    interpolation_points: int = 5
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
        if self.ood_max_samples is not None and self.ood_max_samples < 0:
            raise ValueError(f"`ood_max_samples` should be >= 0 (0: the whole split), got {self.ood_max_samples}.")
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
    manifest = run.read_manifest().usable(run_dir)  # diverged members left out, non-finite refused
    members = run.member_paths(manifest)
    if not members:
        raise ValueError(f"The manifest of {run_dir} lists no finished (non-diverged) members.")
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

    for folder in (run.soups_dir, run.eval_dir):  # finish what a killed evaluation left (old or new, never none)
        recover_replacements(folder)
    passes, data = prepare_passes(run_dir, manifest, members, splits, data_path, processor, device, settings)
    results: dict[str, Any] = {
        "evaluation_id": uuid.uuid4().hex,
        "run": str(run_dir),
        "strategy": manifest.strategy,
        "num_members": len(members),
        "data": {"path": str(data_path), "test": settings.split},
    }
    print_plan(passes, data, settings, len(members))
    results["test"] = passes.ensemble_metrics(data["test"])
    soup_predictors = evaluate_soups(run_dir, passes, data, settings, results) if settings.soup != "none" else {}
    results["basin"] = evaluate_basin(manifest, members, passes, data["test"], settings)
    if settings.ood:
        results["ood"] = evaluate_ood_stage(passes, soup_predictors, splits[settings.split], data, processor, settings)
    stats = passes.cache.stats
    print(
        f"[evaluate] done: {stats['passes']} model passes over {stats['images']} images "
        f"(+ {stats['build_images']} for BatchNorm recalibration), {stats['reused']} cached results reused",
        flush=True,
    )
    output_dir = Path(settings.output_dir) if settings.output_dir else run.eval_dir
    written = write_report(results, output_dir, manifest=manifest, plots=settings.plots)
    results["written"] = {k: str(v) for k, v in written.items()}
    # the cost of this call is returned, not written: a repeated evaluation writes the same eval.json
    results["cost"] = {k: stats[k] for k in ("passes", "images", "build_images", "reused", "seconds")}
    return results

"""`hf-starsse sweep`: train and evaluate the paper's grid (SSE / StarSSE cycle ratios against Local DE) over seeds.

Every run is an ordinary run folder trained by `hf-starsse train`'s code path (`run_training`) from one recipe, and
evaluated by `hf-starsse evaluate`'s (`evaluate_run`, prediction cache included). Per seed, member 0 is trained once
and every SSE / StarSSE run of that seed takes it as given (`first_member`). A run is done once its result file exists
(see [`SweepFolder`]); a killed sweep, run again with the same command, keeps finished runs and resumes the others.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .file_utils import atomic_file, atomic_write_json
from .run_folder import RunFolder
from .sweep_config import SweepConfig
from .sweep_folder import SweepFolder, SweepRun, plan_sweep


def run_sweep(
    config: SweepConfig,
    command: str | None = None,
    log=print,
    stage: str = "all",
    shard: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """Train and evaluate every run of `config` that is not done yet, then write the report.

    Args:
        config ([`SweepConfig`]): What to run.
        command (`str`, *optional*): The command line, recorded in the report.
        log (`Callable`, *optional*, defaults to `print`): Where progress lines go.
        stage (`str`, *optional*, defaults to `"all"`): `first` (only the runs that train member 0, one per seed),
            `cycles` (only the SSE / StarSSE runs; their member 0 must be done) or `all`.
        shard (`tuple[int, int]`, *optional*, defaults to `(0, 1)`): `(i, n)`: this process takes every n-th run of
            the stage, starting at the i-th, so that n jobs split a stage (each run belongs to one shard).

    Returns:
        `dict`: the report of the runs done so far, as written to `sweep.json` (`sessions`: every call's wall time and
        what it trained, evaluated and kept).
    """
    from .sweep_report import write_sweep_report

    start = time.time()
    folder = SweepFolder(config.output_dir)
    plan = select_runs(plan_sweep(config), stage, shard)
    _check_or_write_config(folder, config)
    eval_data = _evaluation_dataset(folder, config)
    session = {"trained": [], "evaluated": [], "kept": []}
    for number, (run, first) in enumerate(plan, 1):
        if folder.result_path(run).is_file():
            session["kept"].append(run.name)
            continue
        if first is not None and not folder.result_path(first).is_file():
            raise ValueError(
                f"{run.name} starts from member 0 of {first.name}, which is not done yet: run `--stage first` "
                f"(every shard) before `--stage cycles`."
            )
        log(f"[sweep] {number}/{len(plan)} {run.name}", flush=True)
        if _train(folder, config, run, first):
            session["trained"].append(run.name)
        record_run_result(folder, config, run, first, eval_data)
        session["evaluated"].append(run.name)
    session["seconds"] = time.time() - start
    _append_session(folder, {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)), **session})
    report = write_sweep_report(folder, config, command=command)
    log(
        f"[sweep] done in {time.time() - start:.0f}s: {len(session['trained'])} run(s) trained, "
        f"{len(session['evaluated'])} evaluated, {len(session['kept'])} kept; report in {folder.report_md}",
        flush=True,
    )
    return report


STAGES = ("all", "first", "cycles")


def select_runs(
    plan: list[tuple[SweepRun, SweepRun | None]], stage: str, shard: tuple[int, int]
) -> list[tuple[SweepRun, SweepRun | None]]:
    """The runs of `stage` that belong to shard `(i, n)` (every n-th, from the i-th), in plan order."""
    if stage not in STAGES:
        raise ValueError(f"`stage` should be one of {', '.join(STAGES)}, got {stage!r}.")
    index, count = shard
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise ValueError(f"`shard` should be `i/n` with 0 <= i < n, got {index}/{count}.")
    if stage == "first":
        plan = [item for item in plan if item[1] is None]
    elif stage == "cycles":
        plan = [item for item in plan if item[1] is not None]
    return plan[index::count]


# ----- the sweep's own settings --------------------------------------------------------------------------------------
def _config_record(config: SweepConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _check_or_write_config(folder: SweepFolder, config: SweepConfig) -> None:
    """A sweep folder holds runs of one recipe and ensemble size: a rerun with another one is refused (the grid,
    the seeds and the evaluation settings may change: runs are named by their configuration)."""
    current = _config_record(config)
    if folder.config_path.is_file():
        saved = json.loads(folder.config_path.read_text(encoding="utf-8"))
        for key in ("recipe", "num_members"):
            if saved.get(key) != current[key]:
                raise ValueError(
                    f"`{key}` differs from the one the sweep in {folder.root} was started with "
                    f"({folder.config_path}); use another `output_dir`."
                )
    folder.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder.config_path, current)


def _append_session(folder: SweepFolder, session: dict[str, Any]) -> None:
    """Add this call to `sessions.json` (every call's wall time and what it trained, evaluated and kept), under a
    file lock: shards finishing at the same time each add theirs."""
    import fcntl

    with open(folder.root / ".sessions.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        atomic_write_json(folder.sessions_path, [*read_sessions(folder), session])


def read_sessions(folder: SweepFolder) -> list[dict[str, Any]]:
    if not folder.sessions_path.is_file():
        return []
    return json.loads(folder.sessions_path.read_text(encoding="utf-8"))


# ----- training ------------------------------------------------------------------------------------------------------
def run_recipe(config: SweepConfig, folder: SweepFolder, run: SweepRun, first: SweepRun | None) -> dict[str, Any]:
    """The recipe of one run: the sweep's recipe plus what defines the run."""
    recipe = {
        **config.recipe,
        "output_dir": str(folder.run_dir(run)),
        "ensemble_strategy": "local_de" if run.method == "member_0" else run.method,
        "num_members": run.num_members,
        "seed": run.seed,
    }
    if run.is_cycle_run:
        recipe["cycle_lr_ratio"] = run.lr_ratio
        recipe["cycle_epoch_ratio"] = run.epoch_ratio
        recipe["first_member"] = str(RunFolder(folder.run_dir(first)).member_dir(0))
    return recipe


def _train(folder: SweepFolder, config: SweepConfig, run: SweepRun, first: SweepRun | None) -> bool:
    """Train the run's missing members (none when its manifest lists them all); returns whether it trained."""
    from .train_entry import arguments_from_recipe, run_training

    run_folder = RunFolder(folder.run_dir(run))
    if run_folder.manifest_path.is_file() and len(run_folder.read_manifest().members) >= run.num_members:
        return False
    model_args, data_args, training_args, _ = arguments_from_recipe(run_recipe(config, folder, run, first))
    run_training(model_args, data_args, training_args)
    return True


# ----- evaluation ----------------------------------------------------------------------------------------------------
def _evaluation_dataset(folder: SweepFolder, config: SweepConfig) -> str:
    """The `save_to_disk` folder the runs are evaluated on: the recipe's dataset when it is such a folder with
    `train` (BatchNorm recalibration of the soups), `validation` (choosing each method's best configuration) and
    `test` splits, else its splits as training loads them (validation carved from train if needed) saved once into
    the sweep folder."""
    name = config.recipe.get("dataset_name")
    if name and Path(name).is_dir():
        from .run_evaluation import load_splits

        if {"train", "validation", "test"} <= set(load_splits(name)):
            return str(name)
    target = folder.root / "eval_data"
    if not target.is_dir():
        _save_evaluation_splits(config, target)
    return str(target)


def _save_evaluation_splits(config: SweepConfig, target: Path) -> None:
    from datasets import DatasetDict

    from .data import load_image_dataset
    from .file_utils import atomic_directory
    from .train_entry import _dataset_kwargs, arguments_from_recipe

    recipe = {**config.recipe, "output_dir": str(target)}
    model_args, data_args, training_args, _ = arguments_from_recipe(recipe)
    data = load_image_dataset(
        data_args.dataset_name, **_dataset_kwargs(data_args, training_args.seed, model_args.cache_dir)
    )
    if "test" not in data.splits:
        raise ValueError(f"`dataset_name` {data_args.dataset_name!r} has no test split to evaluate the sweep on.")
    splits = DatasetDict(
        {
            name: split.select_columns([data.image_column, data.label_column]).rename_columns(
                {data.image_column: "image", data.label_column: "label"}
            )
            for name, split in data.splits.items()
        }
    )
    with atomic_directory(target) as tmp:
        splits.save_to_disk(str(tmp))


def evaluation_settings(config: SweepConfig, eval_data: str, num_members: int) -> Any:
    """`hf-starsse evaluate`'s settings for a sweep run: the uniform soup of all members (BatchNorm recalibrated on
    the training split), no basin line, no plots."""
    from .run_evaluation import EvaluationSettings

    return EvaluationSettings(
        dataset=eval_data,
        bn_split="train",
        soup="uniform" if num_members > 1 else "none",
        soup_vs_size=False,
        interpolation_points=0,
        batch_size=config.eval_batch_size,
        device=config.device,
        plots=False,
        progress=False,
    )


def record_run_result(
    folder: SweepFolder, config: SweepConfig, run: SweepRun, first: SweepRun | None, eval_data: str
) -> dict[str, Any]:
    """Evaluate a trained run and write its result (metrics, cost, test predictions); the result file is written
    last, so its presence means the run is done."""
    from .run_evaluation import evaluate_run

    run_dir = folder.run_dir(run)
    settings = evaluation_settings(config, eval_data, run.num_members)
    results = evaluate_run(run_dir, settings)
    arrays, extra = _predictions(run_dir, settings, run.num_members > 1)
    manifest = RunFolder(run_dir).read_manifest()
    record = {
        "run": run.name,
        "config": run.config_name,
        "seed": run.seed,
        "method": run.method,
        "lr_ratio": run.lr_ratio,
        "epoch_ratio": run.epoch_ratio,
        "run_dir": str(run_dir),
        "num_members": len(manifest.members),
        "ensemble": _metrics(results["test"]["ensemble"]),
        "mean_member": _metrics(results["test"]["mean_member"]),
        "members": [_metrics(m) for m in results["test"]["members"]],
        "diversity": results["test"].get("diversity"),
        "ensemble_vs_size": [
            {k: float(row[k]) for k in ("size", "accuracy", "nll")} for row in results["test"]["quality_vs_size"]
        ],
        "soup": _metrics(results["soups"]["uniform"]["metrics"]) if "soups" in results else None,
        "distances": _distances(results["basin"]["distances"]),
        "cost": run_cost(manifest, _first_member_record(folder, first)),
        **extra,
    }
    with atomic_file(folder.predictions_path(run)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    atomic_write_json(folder.result_path(run), record)
    return record


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(values[k]) for k in ("accuracy", "nll", "ece", "brier") if k in values}


def _distances(report: dict[str, Any]) -> dict[str, Any]:
    between = np.asarray(report["between_members"], dtype=float)
    k = len(between)
    pairs = between[np.triu_indices(k, 1)] if k > 1 else np.zeros(0)
    to_pretrained = report.get("to_pretrained")
    return {
        "mean_between_members": float(pairs.mean()) if len(pairs) else None,
        "to_pretrained": to_pretrained,
        "from_member_0": between[0, 1:].tolist() if k > 1 else [],
    }


def _predictions(run_dir: Path, settings: Any, with_soup: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per test example: the ensemble's and the soup's correctness and log-probability of the true class; the
    validation accuracies that pick each method's best configuration; each member's training accuracy. The test
    passes come from the prediction cache `evaluate_run` just filled (validation and training passes run once)."""
    import torch

    from .ensemble import default_device
    from .evaluation_stages import prepare_passes
    from .metrics import accuracy
    from .run_evaluation import _image_processor, resolve_eval_data

    run = RunFolder(run_dir)
    manifest = run.read_manifest().usable(run_dir)
    members = run.member_paths(manifest)
    data_path, splits = resolve_eval_data(run_dir, settings)
    device = torch.device(settings.device) if settings.device else default_device()
    passes, data = prepare_passes(
        run_dir, manifest, members, splits, data_path, _image_processor(members[0]), device, settings
    )
    member_probs, labels = passes.probs(passes.predictors, data["test"])
    arrays = {"labels": labels.astype(np.int64)}
    extra: dict[str, Any] = {}
    ensemble = member_probs.mean(axis=0)
    arrays.update(_per_example("ensemble", ensemble, labels))
    val_probs, val_labels = passes.probs(passes.predictors, data["validation"])
    extra["validation"] = {"ensemble_accuracy": accuracy(val_probs.mean(axis=0), val_labels)}
    if data.get("bn") is not None:  # training accuracy of each member: did the fine-tuning fit, do cycles overfit?
        train_probs, train_labels = passes.probs(passes.predictors, data["bn"])
        extra["train_accuracy"] = [accuracy(p, train_labels) for p in train_probs]
    if with_soup:
        soup = passes.soup(range(len(members)), name="uniform soup", saved=run.soup_dir("uniform"))
        soup_probs, _ = passes.probs([soup], data["test"])
        arrays.update(_per_example("soup", soup_probs[0], labels))
        soup_val, _ = passes.probs([soup], data["validation"])
        extra["validation"]["soup_accuracy"] = accuracy(soup_val[0], val_labels)
    return arrays, extra


def _per_example(name: str, probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    true = probs[np.arange(len(labels)), labels]
    return {
        f"{name}_correct": probs.argmax(-1) == labels,
        f"{name}_log_prob": np.log(np.clip(true, 1e-12, None)).astype(np.float32),
    }


# ----- cost ----------------------------------------------------------------------------------------------------------
def _first_member_record(folder: SweepFolder, first: SweepRun | None) -> Any:
    if first is None:
        return None
    return RunFolder(folder.run_dir(first)).read_manifest().members[0]


def run_cost(manifest: Any, adopted_member_0: Any = None) -> dict[str, float]:
    """Optimizer steps, member-epochs and training seconds (the Trainer's `train_runtime` of each member) of a run;
    a member 0 taken as given is charged as trained (its record in the run that trained it)."""
    records = [adopted_member_0 if (m.adopted_from and adopted_member_0) else m for m in manifest.members]
    return {
        "steps": int(sum(m.num_steps for m in records)),
        "member_epochs": float(sum(m.num_epochs for m in records)),
        "train_seconds": float(sum(float(m.metrics.get("train_runtime", 0.0)) for m in records)),
    }


def load_run_results(folder: SweepFolder, runs: list[SweepRun]) -> list[dict[str, Any]]:
    """The result records of the runs that are done (in plan order)."""
    return [
        json.loads(folder.result_path(r).read_text(encoding="utf-8")) for r in runs if folder.result_path(r).is_file()
    ]


def load_run_predictions(folder: SweepFolder, seed: int, config_name: str) -> dict[str, np.ndarray]:
    """The per-example arrays `record_run_result` wrote for the run `seed-<seed>/<config_name>` (no pickles)."""
    with np.load(folder.predictions_file(seed, config_name), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def sweep_runs(config: SweepConfig) -> list[SweepRun]:
    return [run for run, _ in plan_sweep(config)]

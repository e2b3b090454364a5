"""What `hf-starsse push` publishes from a run folder: an allow-list of the layout's files, checked locally.

Nothing here talks to the Hub. [`plan_push`] reads the manifest through [`RunFolder`], chooses the root model (the
evaluated, BatchNorm-recalibrated soup `soups/<kind>/`, or on request the plain average of the members) and lists the
files to upload: per member its weights, config, processor files and `member.json`; the evaluation's `eval.json`,
`eval.md` and plots; the chosen soup. Every file is a regular file of the run reached without a symbolic link, so a
push never uploads anything from outside the run folder (a link on the way is refused with a one-line error).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .manifest import EnsembleManifest
from .run_folder import EVAL_DIR, MEMBER_INFO_NAME, SOUP_INFO_NAME, SOUP_KINDS, RunFolder

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Files of a `save_pretrained` model / processor folder that are published (anything else stays local).
MODEL_FILES = frozenset({CONFIG_NAME, SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, "generation_config.json"})
PROCESSOR_FILES = frozenset(
    {
        "preprocessor_config.json",
        "processor_config.json",
        "image_processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "spiece.model",
        "sentencepiece.bpe.model",
    }
)
WEIGHT_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
AVERAGE_KIND = "members-average"


def is_model_file(name: str) -> bool:
    """Whether a file of a model folder is one the repository gets (weights, config, processor files)."""
    return name in MODEL_FILES or name in PROCESSOR_FILES or bool(WEIGHT_SHARD.match(name))


@dataclass
class PushPlan:
    """The local side of a push, checked before anything is sent.

    Args:
        manifest (`EnsembleManifest`): The run's manifest.
        member_dirs (`list[Path]`): The members' folders (inside the run).
        files (`list[tuple[str, Path]]`): `(path in the repository, local regular file)` to upload as they are.
        root (`str`): What the repository root holds: `uniform` / `greedy` (the evaluated soup) or
            `members-average` (computed at push time, BatchNorm statistics averaged).
        eval_results (`dict`, *optional*): The run's `eval/eval.json`, when evaluated.
        plots (`list[str]`): Repository paths of the evaluation plots.
    """

    manifest: EnsembleManifest
    member_dirs: list[Path]
    files: list[tuple[str, Path]] = field(default_factory=list)
    root: str = "uniform"
    eval_results: dict[str, Any] | None = None
    plots: list[str] = field(default_factory=list)


def plan_push(run: RunFolder, soup: str = "uniform", average_members: bool = False) -> PushPlan:
    """Check the run and list what a push uploads (see the module docstring).

    Args:
        run ([`RunFolder`]): The run.
        soup (`str`, *optional*, defaults to `"uniform"`): The evaluated soup at the repository root.
        average_members (`bool`, *optional*, defaults to `False`): Publish the plain average of the members at the
            root instead (needed for a run never evaluated; BatchNorm statistics are then averaged, not recalibrated).

    Raises:
        `ValueError` / `FileNotFoundError`: one line, e.g. a run never evaluated without `average_members`.
    """
    if soup not in SOUP_KINDS:
        raise ValueError(f"`soup` should be one of {', '.join(SOUP_KINDS)}, got {soup!r}.")
    if not run.root.is_dir():
        raise FileNotFoundError(f"`run_dir` {run.root} is not a folder.")
    manifest = run.read_manifest()
    if not manifest.members:
        raise ValueError(f"The manifest {run.manifest_path} lists no finished member: nothing to push.")
    plan = PushPlan(manifest=manifest, member_dirs=run.member_paths(manifest))
    for record, folder in zip(manifest.members, plan.member_dirs):
        for name in (CONFIG_NAME, SAFE_WEIGHTS_NAME):
            if not (folder / name).is_file() and not (name == SAFE_WEIGHTS_NAME and _is_sharded(folder)):
                raise FileNotFoundError(f"Member {record.index} has no {name} in {folder}.")
        files = model_files(run, folder, f"member {record.index} file")
        info = folder / MEMBER_INFO_NAME
        if info.exists() or info.is_symlink():
            files.append(run.check_regular_file(info, f"member {record.index} file"))
        prefix = run.member_relpath(record.index)
        plan.files += [(f"{prefix}/{path.name}", path) for path in files]
    plan.eval_results = _read_eval(run)
    if plan.eval_results is not None:
        for path in [run.eval_json, run.eval_md, *run.eval_plots()]:
            if path.exists() or path.is_symlink():
                run.check_regular_file(path, "evaluation file")
                plan.files.append((f"{EVAL_DIR}/{path.name}", path))
        plan.plots = [p for p, _ in plan.files if p.startswith(f"{EVAL_DIR}/") and p.endswith(".png")]
    if average_members:
        plan.root = AVERAGE_KIND
        return plan
    plan.root = soup
    plan.files += _soup_files(run, soup, plan.eval_results)
    return plan


def model_files(run: RunFolder, folder: Path, what: str) -> list[Path]:
    """The allow-listed files of a model folder (weights, config, processor files), each checked to be a regular file
    of the run reached without a link."""
    files = sorted(p for p in folder.iterdir() if is_model_file(p.name))
    for path in files:
        run.check_regular_file(path, what)
    return files


def _is_sharded(folder: Path) -> bool:
    return (folder / SAFE_WEIGHTS_INDEX_NAME).is_file()


def _read_eval(run: RunFolder) -> dict[str, Any] | None:
    if not run.eval_json.exists() and not run.eval_json.is_symlink():
        return None
    run.check_regular_file(run.eval_json, "evaluation results")
    try:
        data = json.loads(run.eval_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"The evaluation results {run.eval_json} are not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("test"), dict):
        raise ValueError(f"{run.eval_json} is not an `hf-starsse evaluate` report: run `hf-starsse evaluate` again.")
    return data


def _soup_files(run: RunFolder, kind: str, eval_results: dict[str, Any] | None) -> list[tuple[str, Path]]:
    """The evaluated soup's files for the repository root, after checking it belongs to the evaluation results."""
    how = (
        f"run `hf-starsse evaluate {run.root}" + (" --soup greedy" if kind == "greedy" else "") + "` first (it writes "
        "the BatchNorm-recalibrated soups), or pass `--average-members` (`average_members=True`) to publish the plain "
        "average of the members"
    )
    if eval_results is None:
        raise ValueError(f"The run {run.root} was never evaluated (no {run.eval_json}): {how}.")
    folder = run.readable_soup_dir(kind)
    if folder is None or kind not in (eval_results.get("soups") or {}):
        raise ValueError(f"The evaluation of {run.root} has no {kind} soup ({run.soup_dir(kind)}): {how}.")
    info_path = run.check_regular_file(folder / SOUP_INFO_NAME, f"{kind} soup file")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if info.get("evaluation_id") != eval_results.get("evaluation_id"):
        raise ValueError(
            f"The {kind} soup {folder} and {run.eval_json} come from different evaluations (one was interrupted): "
            f"run `hf-starsse evaluate {run.root}` again."
        )
    files = model_files(run, folder, f"{kind} soup file")
    if not (folder / CONFIG_NAME).is_file() or not ((folder / SAFE_WEIGHTS_NAME).is_file() or _is_sharded(folder)):
        raise FileNotFoundError(f"The {kind} soup {folder} has no {CONFIG_NAME} / {SAFE_WEIGHTS_NAME}.")
    return [(path.name, path) for path in files] + [(SOUP_INFO_NAME, info_path)]


def check_push_arguments(repo_id: Any, max_retries: int, revision: Any) -> None:
    """One-line `ValueError`s for a bad `repo_id`, `max_retries` or `revision` (before anything is sent)."""
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"`repo_id` should be a repository id like `user/name`, got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"`repo_id` {repo_id!r} is not a valid repository id: {' '.join(str(err).split())}") from None
    if max_retries < 0:
        raise ValueError(f"`max_retries` should be >= 0, got {max_retries}.")
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise ValueError(f"`revision` should be a branch name, got {revision!r}.")

"""Model soups over members saved as `save_pretrained` folders (safetensors), as small pure functions."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .architecture import CONFIG_NAME, check_same_architecture  # noqa: F401  (re-exported)
from .file_utils import atomic_directory, atomic_write_json, crash_point
from .manifest import MEMBER_INFO_NAME

SAFE_WEIGHTS_NAME = "model.safetensors"
SOUP_INFO_NAME = "soup.json"
# files of a member folder that do not describe the architecture / preprocessing and are not copied into a soup
_NOT_COPIED = {MEMBER_INFO_NAME, "training_args.bin", "trainer_state.json", "optimizer.pt", "scheduler.pt"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


def member_weights_file(member: str | os.PathLike) -> Path:
    """The safetensors file of a member folder (or the file itself)."""
    path = Path(member)
    if path.is_dir():
        path = path / SAFE_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No safetensors weights at {path}.")
    return path


def weight_keys(member: str | os.PathLike) -> set[str]:
    """The tensor names stored in a member's safetensors file."""
    path = member_weights_file(member)
    with open_weights(path) as f:
        return set(f.keys())


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def open_weights(path: Path) -> Iterator[Any]:
    """`safe_open` with a one-line error naming the file when it is not a readable safetensors file."""
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own SafetensorError / OSError on a bad header
        raise ValueError(f"{path} is not a readable safetensors file ({_one_line(err)}).") from None
    with handle as f:
        yield f


def read_tensor(f: Any, key: str, path: Path) -> torch.Tensor:
    """Tensor `key` of an `open_weights` handle, with a one-line error naming the file when it cannot be read."""
    try:
        return f.get_tensor(key)
    except Exception as err:
        raise ValueError(f"{path}: cannot read tensor `{key}` ({_one_line(err)}): the file is corrupt.") from None


def uniform_soup(
    members: Sequence[str | os.PathLike], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """Average the members' state dicts, streaming one tensor at a time (peak memory ~ two models, whatever K).

    The soup of tensor `t` is `sum_i w_i * t_i / sum_i w_i`, accumulated in float32 in member order and cast back to
    the members' dtype; with uniform weights that is exactly `(t_0 + t_1 + ... + t_{K-1}) / K`.

    Args:
        members (`Sequence[str | os.PathLike]`):
            Member folders (`save_pretrained` output) or `.safetensors` files.
        weights (`Sequence[float]`, *optional*):
            Mixing weights (normalised to sum to 1). Uniform when omitted.

    Returns:
        `dict[str, torch.Tensor]`: the averaged state dict (integer buffers such as `num_batches_tracked` are taken
        from the first member; BatchNorm running statistics are averaged and should be recalibrated with
        `hf_starsse.bn_recalibration.recalibrate_batchnorm`).
    """
    if not members:
        raise ValueError("`members` should list at least one member, got an empty list.")
    if weights is None:
        weights = [1.0] * len(members)
    if len(weights) != len(members):
        raise ValueError(f"`weights` should have one entry per member ({len(members)}), got {len(weights)}.")
    if any(w < 0 for w in weights):
        raise ValueError(f"`weights` should be non-negative, got {list(weights)}.")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"`weights` should sum to a positive number, got {total}.")
    check_same_architecture(members)
    paths = [member_weights_file(m) for m in members]  # every file must exist before any work
    soup: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    reference: tuple[Path, set[str]] | None = None
    for i, (path, w) in enumerate(zip(paths, weights)):
        with open_weights(path) as f:
            keys = set(f.keys())
            if reference is None:
                reference = (path, keys)
            elif keys != reference[1]:
                diff = sorted(keys ^ reference[1])[:3]
                raise ValueError(
                    f"{path} has other tensors than {reference[0]} (e.g. {diff}): not the same architecture."
                )
            for key in sorted(keys):
                tensor = read_tensor(f, key, path)
                if i == 0:
                    dtypes[key] = tensor.dtype
                    if tensor.is_floating_point():
                        soup[key] = tensor.float() if w == 1.0 else tensor.float() * w
                        if soup[key].data_ptr() == tensor.data_ptr():
                            soup[key] = soup[key].clone()
                    else:
                        soup[key] = tensor.clone()
                    continue
                if tensor.shape != soup[key].shape:
                    raise ValueError(
                        f"{path}: tensor `{key}` has shape {tuple(tensor.shape)}, {reference[0]} has "
                        f"{tuple(soup[key].shape)}: not the same architecture."
                    )
                if tensor.is_floating_point():
                    soup[key].add_(tensor.float(), alpha=w)
                del tensor
    for key in soup:
        if soup[key].is_floating_point():
            soup[key].div_(total)
            soup[key] = soup[key].to(dtypes[key])
    return soup


def load_soup_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Load a soup's state dict (keys as stored in the members' safetensors files) into `model`, in place.

    When the file keys are the model's own keys the state dict is loaded directly; otherwise (transformers converts
    some checkpoint layouts while loading, e.g. ViT's attention names in transformers 5) it goes through
    `from_pretrained(None, config=model.config, state_dict=...)`, which applies the same conversion as loading a
    member. Any missing, unexpected or mis-shaped tensor raises a one-line `ValueError`.
    """
    own = model.state_dict()
    if set(state_dict) == set(own):
        for key, tensor in state_dict.items():
            if own[key].shape != tensor.shape:
                raise ValueError(
                    f"The soup's `{key}` has shape {tuple(tensor.shape)}, {type(model).__name__} expects "
                    f"{tuple(own[key].shape)}."
                )
        model.load_state_dict(state_dict, strict=True)
        return model
    if not hasattr(type(model), "from_pretrained") or not hasattr(model, "config"):
        missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
        raise ValueError(
            f"The soup does not fit {type(model).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}."
        )
    converted, info = type(model).from_pretrained(
        None, config=model.config, state_dict=state_dict, output_loading_info=True
    )
    problems = {k: sorted(map(str, v))[:3] for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        raise ValueError(f"The soup does not fit {type(model).__name__}: {problems or info['error_msgs'][:1]}.")
    model.load_state_dict(converted.state_dict(), strict=True)
    return model


def save_soup_model(
    model: Any,
    output_dir: str | os.PathLike,
    reference_member: str | os.PathLike,
    info: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a soup held by a model (e.g. after BatchNorm recalibration) with `model.save_pretrained`, plus the
    reference member's image-processor files and `soup.json`, atomically."""
    reference_member = Path(reference_member)
    output_dir = Path(output_dir)
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        _copy_processor_files(reference_member, tmp)
        atomic_write_json(tmp / SOUP_INFO_NAME, info or {})
        crash_point("soup_written")  # test hook: killed after writing the new soup, before replacing the old one
    return output_dir


def _copy_processor_files(reference_member: Path, target: Path) -> None:
    for child in sorted(reference_member.iterdir()):
        if (
            child.is_file()
            and not (target / child.name).exists()
            and child.name not in _NOT_COPIED
            and not child.name.endswith(_WEIGHT_SUFFIXES)
        ):
            shutil.copy2(child, target / child.name)


def save_soup(
    state_dict: dict[str, torch.Tensor],
    output_dir: str | os.PathLike,
    reference_member: str | os.PathLike,
    info: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a soup as a `save_pretrained` folder that `AutoModelForImageClassification.from_pretrained` loads.

    The folder gets `model.safetensors` (the soup), the reference member's `config.json` and image-processor files,
    and `soup.json` (`info`). It is written in a temporary folder and renamed: on failure nothing is left behind.

    Args:
        state_dict (`dict[str, torch.Tensor]`):
            The soup (e.g. from `uniform_soup` or `greedy_soup`).
        output_dir (`str` or `os.PathLike`):
            The folder to create.
        reference_member (`str` or `os.PathLike`):
            A member folder whose config and processor files describe the soup's architecture.
        info (`dict`, *optional*):
            What made the soup (kind, members, weights, scores), saved as `soup.json`.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace an existing `output_dir` (atomically); when `False` an existing folder raises `FileExistsError`.
    """
    if not state_dict:
        raise ValueError("`state_dict` is empty: nothing to save.")
    reference_member = Path(reference_member)
    if not (reference_member / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"No {CONFIG_NAME} in the reference member {reference_member}.")
    reference_keys = weight_keys(reference_member)
    if set(state_dict) != reference_keys:
        diff = sorted(set(state_dict) ^ reference_keys)[:3]
        raise ValueError(f"The soup's tensors differ from those of {reference_member} (e.g. {diff}).")
    output_dir = Path(output_dir)
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        _copy_processor_files(reference_member, tmp)
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        atomic_write_json(tmp / SOUP_INFO_NAME, info or {})
    return output_dir


def save_uniform_soup(
    members: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    weights: Sequence[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """`uniform_soup` + `save_soup` in one call (no BatchNorm recalibration): validates every member first, so a bad
    member leaves nothing at `output_dir`."""
    if not members:
        raise ValueError("`members` should list at least one member, got an empty list.")
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"Refusing to overwrite the finished folder {output_dir}.")
    state = uniform_soup(members, weights=weights)
    info = {"kind": "uniform", "members": [str(m) for m in members], "weights": list(weights) if weights else None}
    return save_soup(state, output_dir, members[0], info=info, overwrite=overwrite)


@dataclass
class GreedySoupResult:
    """The outcome of `greedy_soup`.

    Args:
        state_dict (`dict[str, torch.Tensor]`): The soup of the selected members.
        selected (`list[int]`): Indices (into `members`) of the members in the soup, in the order they were added.
        order (`list[int]`): All members sorted by their own held-out score, best first.
        member_scores (`list[float]`): Each member's own held-out score (indexed like `members`).
        score (`float`): Held-out score of the final soup.
        history (`list[dict]`): One entry per candidate: `index`, `score` of the soup with it, `accepted`.
    """

    state_dict: dict[str, torch.Tensor]
    selected: list[int]
    order: list[int]
    member_scores: list[float]
    score: float
    history: list[dict[str, Any]] = field(default_factory=list)


def greedy_soup(
    members: Sequence[str | os.PathLike],
    score_fn: Callable[[dict[str, torch.Tensor]], float],
    member_scores: Sequence[float] | None = None,
    progress: bool = False,
) -> GreedySoupResult:
    """Greedy soup (Wortsman et al. 2022): add members by decreasing held-out score, keep one only if it helps.

    Members are sorted by their own held-out score; the soup starts with the best one; each next member is added to
    the (uniform) soup only when the held-out score of the soup with it is strictly higher than without it.

    Args:
        members (`Sequence[str | os.PathLike]`):
            Member folders or `.safetensors` files.
        score_fn (`Callable[[dict[str, torch.Tensor]], float]`):
            Held-out score of a state dict, higher is better (e.g. `held_out_score_fn(...)`: validation accuracy).
        member_scores (`Sequence[float]`, *optional*):
            The members' own held-out scores when already known (e.g. from their `member.json`); computed with
            `score_fn` otherwise.
        progress (`bool`, *optional*, defaults to `False`):
            Show a progress bar.
    """
    if not members:
        raise ValueError("`members` should list at least one member, got an empty list.")
    check_same_architecture(members)
    for member in members:
        member_weights_file(member)
    if member_scores is None:
        member_scores = [
            float(score_fn(uniform_soup([m]))) for m in tqdm(members, "score members", disable=not progress)
        ]
    elif len(member_scores) != len(members):
        raise ValueError(
            f"`member_scores` should have one entry per member ({len(members)}), got {len(member_scores)}."
        )
    member_scores = [float(s) for s in member_scores]
    order = sorted(range(len(members)), key=lambda i: -member_scores[i])
    selected = [order[0]]
    best = member_scores[order[0]]
    history: list[dict[str, Any]] = [{"index": order[0], "score": best, "accepted": True}]
    for index in tqdm(order[1:], "greedy soup", disable=not progress):
        candidate = uniform_soup([members[i] for i in selected + [index]])
        score = float(score_fn(candidate))
        accepted = score > best
        history.append({"index": index, "score": score, "accepted": accepted})
        if accepted:
            selected.append(index)
            best = score
        del candidate
    return GreedySoupResult(
        state_dict=uniform_soup([members[i] for i in selected]),
        selected=selected,
        order=order,
        member_scores=member_scores,
        score=best,
        history=history,
    )


def held_out_score_fn(
    model: torch.nn.Module,
    dataloader: Any,
    metric: str = "accuracy",
    bn_dataloader: Any = None,
    device: torch.device | str | None = None,
) -> Callable[[dict[str, torch.Tensor]], float]:
    """A `score_fn` for `greedy_soup`: load the state dict into `model`, optionally recalibrate its BatchNorm on
    `bn_dataloader`, and return the held-out `metric` (`accuracy`, or `nll` / `ece` / `brier` negated so higher is
    better) on `dataloader`."""
    from .bn_recalibration import has_batchnorm, recalibrate_batchnorm
    from .ensemble import predict_probs
    from .metrics import classification_metrics

    if metric not in ("accuracy", "nll", "ece", "brier"):
        raise ValueError(f"`metric` should be one of accuracy, nll, ece, brier, got {metric!r}.")

    def score(state_dict: dict[str, torch.Tensor]) -> float:
        load_soup_into(model, state_dict)
        if bn_dataloader is not None and has_batchnorm(model):
            recalibrate_batchnorm(model, bn_dataloader, device=device)
        probs, labels = predict_probs([model], dataloader, device=device)
        value = classification_metrics(probs[0], labels)[metric]
        return value if metric == "accuracy" else -value

    return score

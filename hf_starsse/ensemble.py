"""`Ensemble`: evaluate the members of a run (or any list of checkpoints) as one predictor.

The ensemble predicts the mean of its members' softmax probabilities, computed by the same functions as the pipeline
model [`hf_starsse.modeling_ensemble.EnsembleForImageClassification`] (`member_probs` / `average_probs`). All members
see each batch in turn, so the data is read once whatever K is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .eval_data import model_inputs
from .metrics import DEFAULT_NUM_BINS, classification_metrics, ensemble_metrics
from .modeling_ensemble import average_probs, check_same_labels, member_probs
from .run_folder import RunFolder


def default_device() -> torch.device:
    """`cuda` when available, else `cpu`."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_member_model(name_or_path: str | os.PathLike, device: torch.device | str | None = None, **kwargs: Any) -> Any:
    """`AutoModelForImageClassification.from_pretrained` in eval mode on `device`, with a one-line error."""
    from transformers import AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(str(name_or_path), **kwargs)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Cannot load the classifier {name_or_path}: {first_line}") from None
    return model.to(device or default_device()).eval()


@torch.no_grad()
def predict_probs(
    models: Sequence[torch.nn.Module],
    dataloader: Iterable[Any],
    device: torch.device | str | None = None,
    progress: bool | str = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax probabilities of each model over one pass of `dataloader`.

    Args:
        models (`Sequence[torch.nn.Module]`):
            Classifiers returning an output with `logits` (or a logits tensor).
        dataloader (`Iterable`):
            Batches as dicts (`{"pixel_values": ..., "labels": ...}`), `(inputs, labels)` tuples or tensors.
        device (`torch.device` or `str`, *optional*):
            Where inputs go; defaults to the first model's device.
        progress (`bool` or `str`, *optional*, defaults to `False`):
            Show a progress bar (a string is used as its description).

    Returns:
        `(probs, labels)`: `probs` of shape `(len(models), N, C)` (float32) and `labels` of shape `(N,)` (or `None`
        when the batches carry no labels).
    """
    if not models:
        raise ValueError("`models` should hold at least one model, got none.")
    if device is None:
        device = next(models[0].parameters()).device
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    member_chunks: list[list[torch.Tensor]] = [[] for _ in models]
    label_chunks: list[torch.Tensor] = []
    bar = tqdm(
        dataloader, desc=progress if isinstance(progress, str) else "predict", disable=not progress, leave=False
    )
    try:
        for batch in bar:
            inputs, labels = model_inputs(batch, device)
            for chunks, probs in zip(member_chunks, member_probs(models, inputs).cpu()):
                chunks.append(probs)
            if labels is not None:
                label_chunks.append(torch.as_tensor(labels).cpu())
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    if not member_chunks[0]:
        raise ValueError("The dataloader yielded no batches.")
    probs = torch.stack([torch.cat(chunks) for chunks in member_chunks]).numpy()
    labels = torch.cat(label_chunks).numpy().astype(np.int64) if label_chunks else None
    return probs, labels


class Ensemble:
    """Members of an ensemble, evaluated together: the prediction is the mean of the members' probabilities.

    Args:
        models (`Sequence[transformers.PreTrainedModel]`):
            The members (image classifiers with the same label set).
        names (`Sequence[str]`, *optional*):
            A name per member (defaults to `member-<i>`).
        device (`torch.device` or `str`, *optional*):
            Where to run; defaults to CUDA when available, else CPU.

    Example:

    ```python
    >>> from hf_starsse.ensemble import Ensemble
    >>> from hf_starsse.eval_data import load_eval_dataset, make_eval_dataloader
    >>> ensemble = Ensemble.from_run("runs/star_sse")
    >>> loader = make_eval_dataloader(load_eval_dataset("runs/star_sse/eval_data", "test"))
    >>> ensemble.evaluate(loader)["ensemble"]["accuracy"]
    ```
    """

    def __init__(
        self,
        models: Sequence[torch.nn.Module],
        names: Sequence[str] | None = None,
        device: torch.device | str | None = None,
    ):
        if not models:
            raise ValueError("`models` should hold at least one member, got an empty list.")
        names = list(names) if names is not None else [f"member-{i}" for i in range(len(models))]
        if len(names) != len(models):
            raise ValueError(f"`names` should have one entry per member ({len(models)}), got {len(names)}.")
        check_same_labels(models)
        self.device = torch.device(device) if device is not None else default_device()
        self.models = [m.to(self.device).eval() for m in models]
        self.names = names
        self.paths: list[Path] = []

    @classmethod
    def from_pretrained(
        cls, members: Sequence[str | os.PathLike], device: torch.device | str | None = None, **kwargs: Any
    ) -> Ensemble:
        """Load members from `save_pretrained` folders or Hub repo ids (`kwargs` go to `from_pretrained`)."""
        if not members:
            raise ValueError("`members` should list at least one member folder or repo id, got an empty list.")
        device = torch.device(device) if device is not None else default_device()
        models = [load_member_model(m, device=device, **kwargs) for m in members]
        ensemble = cls(models, names=[Path(str(m)).name for m in members], device=device)
        ensemble.paths = [Path(str(m)) for m in members]
        return ensemble

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: torch.device | str | None = None, **kwargs: Any) -> Ensemble:
        """Load the finished members listed in `run_dir/ensemble.json` (read and checked by [`RunFolder`]: member paths
        stay inside the run)."""
        run = RunFolder(run_dir)
        manifest = run.read_manifest()
        if not manifest.members:
            raise ValueError(f"The manifest of {run_dir} lists no finished members.")
        return cls.from_pretrained(run.member_paths(manifest), device=device, **kwargs)

    def __len__(self) -> int:
        return len(self.models)

    def member_probs(self, dataloader: Iterable[Any], progress: bool | str = False) -> tuple[np.ndarray, np.ndarray]:
        """Each member's probabilities `(K, N, C)` and the labels `(N,)`, in one pass over `dataloader`."""
        return predict_probs(self.models, dataloader, device=self.device, progress=progress)

    def predict_proba(self, dataloader: Iterable[Any], progress: bool | str = False) -> np.ndarray:
        """The ensemble's probabilities `(N, C)`: the mean of the members' softmax probabilities."""
        return self.member_probs(dataloader, progress=progress)[0].mean(axis=0)

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Probabilities of one batch of `pixel_values` (mean of the members' softmax, as the pipeline model's)."""
        return average_probs(self.models, {"pixel_values": pixel_values.to(self.device)})

    def evaluate(
        self, dataloader: Iterable[Any], num_bins: int = DEFAULT_NUM_BINS, progress: bool | str = False
    ) -> dict[str, Any]:
        """Per-member and ensemble metrics, quality vs ensemble size and diversity (see `metrics.ensemble_metrics`)."""
        probs, labels = self.member_probs(dataloader, progress=progress)
        if labels is None:
            raise ValueError("The dataloader's batches carry no `labels`: cannot evaluate.")
        result = ensemble_metrics(probs, labels, num_bins=num_bins)
        result["member_names"] = list(self.names)
        result["num_samples"] = int(len(labels))
        return result


def evaluate_model(
    model: torch.nn.Module,
    dataloader: Iterable[Any],
    device: torch.device | str | None = None,
    num_bins: int = DEFAULT_NUM_BINS,
    progress: bool | str = False,
) -> dict[str, float]:
    """Accuracy, NLL, ECE and Brier of one model (e.g. a soup)."""
    probs, labels = predict_probs([model], dataloader, device=device, progress=progress)
    if labels is None:
        raise ValueError("The dataloader's batches carry no `labels`: cannot evaluate.")
    return classification_metrics(probs[0], labels, num_bins=num_bins)

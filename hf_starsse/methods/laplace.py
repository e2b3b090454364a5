"""KFAC Laplace (Ritter et al. 2018) through `laplace-torch`, as a post-hoc builder over a fine-tuned member 0.

Member 0 is the MAP. `laplace-torch` fits a Gaussian posterior around it (last layer by default, Kronecker-factored
Hessian), optionally tunes the prior precision by the marginal likelihood, and each member is one seeded sample of the
posterior written into a copy of member 0 (sample `i` uses a generator seeded `seed + i`). The fitted `Laplace` object
is also returned, for its own predictive.

Limits of `laplace-torch`: full-network (`subset_of_weights="all"`) KFAC does not support BatchNorm layers (its issues
#18 and #210); such a request is refused before fitting, with a hint to use the last layer.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
from torch.nn.utils import vector_to_parameters
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, default_data_collator

from ._common import BuildOutput, PosthocConfig, RunWriter, _check, _recalibrate_bn, has_batchnorm, load_member0

LAPLACE_SUBSETS = ("last_layer", "all")
LAPLACE_HESSIANS = ("kron", "diag", "full")


@dataclass
class LaplaceConfig(PosthocConfig):
    """Settings of the Laplace approximation (the optimisation fields of [`PosthocConfig`] are unused: no training).

    Args:
        subset_of_weights (`str`, *optional*, defaults to `"last_layer"`):
            `"last_layer"` or `"all"` (full network; not for BatchNorm models).
        hessian_structure (`str`, *optional*, defaults to `"kron"`):
            `"kron"` (KFAC), `"diag"` or `"full"`.
        prior_precision (`float`, *optional*, defaults to 1.0):
            Precision of the isotropic Gaussian prior (the starting value when it is optimised).
        optimize_prior_precision (`bool`, *optional*, defaults to `True`):
            Tune the prior precision by maximising the marginal likelihood after fitting.
        last_layer_name (`str`, *optional*):
            The module name of the last layer; found automatically when `None`.
        input_keys (`tuple[str]`, *optional*, defaults to `("pixel_values",)`):
            Batch keys passed to the model (the rest, e.g. `labels`, are not).
    """

    subset_of_weights: str = "last_layer"
    hessian_structure: str = "kron"
    prior_precision: float = 1.0
    optimize_prior_precision: bool = True
    last_layer_name: str | None = None
    input_keys: tuple[str, ...] = ("pixel_values",)

    def validate(self) -> None:
        super().validate()
        _check(
            self.subset_of_weights in LAPLACE_SUBSETS,
            "subset_of_weights",
            self.subset_of_weights,
            f"should be one of {LAPLACE_SUBSETS}",
        )
        _check(
            self.hessian_structure in LAPLACE_HESSIANS,
            "hessian_structure",
            self.hessian_structure,
            f"should be one of {LAPLACE_HESSIANS}",
        )
        _check(self.prior_precision > 0, "prior_precision", self.prior_precision, "should be positive")
        _check(len(self.input_keys) >= 1, "input_keys", self.input_keys, "should name at least one batch key")


class LogitsModel(torch.nn.Module):
    """Wraps a Hugging Face classifier for `laplace-torch`: takes the whole dict batch, returns the logits tensor."""

    def __init__(self, model: PreTrainedModel, input_keys: tuple[str, ...] = ("pixel_values",)):
        super().__init__()
        self.model = model
        self.input_keys = tuple(input_keys)

    def forward(self, batch) -> torch.Tensor:
        return self.model(**{k: batch[k] for k in self.input_keys if k in batch}).logits


KFAC_LAYERS = (torch.nn.Linear, torch.nn.Conv2d)


def check_laplace_supported(model: torch.nn.Module, config: LaplaceConfig) -> None:
    """Refuse what `laplace-torch` cannot do, before any fitting."""
    if config.subset_of_weights != "all":
        return
    if has_batchnorm(model):
        raise ValueError(
            "`subset_of_weights='all'`: full-network Laplace in laplace-torch does not support BatchNorm layers "
            "(laplace-torch issues #18, #210) and this model has BatchNorm; use `subset_of_weights='last_layer'`."
        )
    if config.hessian_structure == "kron":
        unsupported = [
            name or type(model).__name__
            for name, module in model.named_modules()
            if not isinstance(module, KFAC_LAYERS) and any(p.requires_grad for p in module.parameters(recurse=False))
        ]
        if unsupported:
            raise ValueError(
                "`subset_of_weights='all'` with `hessian_structure='kron'`: laplace-torch's KFAC backend supports "
                f"only Linear and Conv2d parameters, and this model has trainable parameters in {unsupported[:3]}"
                f"{' ...' if len(unsupported) > 3 else ''}; use `subset_of_weights='last_layer'`, or freeze those "
                "parameters (`requires_grad=False`)."
            )


def fit_laplace(model: PreTrainedModel, train_dataset, config: LaplaceConfig, data_collator=None):
    """Fit `laplace-torch`'s Laplace approximation around `model` (the MAP) on `train_dataset`.

    Returns:
        `(la, wrapped)`: the fitted `laplace-torch` object and the [`LogitsModel`] around `model` it was fitted on
        (last-layer Laplace works on a deep copy of it).
    """
    try:
        from laplace import Laplace
    except ImportError as err:
        raise ImportError("The Laplace builder needs `laplace-torch`: `pip install laplace-torch`.") from err
    check_laplace_supported(model, config)
    wrapped = LogitsModel(model, config.input_keys).eval()
    kwargs = {"prior_precision": config.prior_precision, "dict_key_x": config.input_keys[0], "dict_key_y": "labels"}
    if config.subset_of_weights == "last_layer" and config.last_layer_name is not None:
        kwargs["last_layer_name"] = "model." + config.last_layer_name
    la = Laplace(
        wrapped,
        "classification",
        subset_of_weights=config.subset_of_weights,
        hessian_structure=config.hessian_structure,
        **kwargs,
    )
    loader = DataLoader(
        train_dataset, batch_size=config.batch_size, shuffle=False, collate_fn=data_collator or default_data_collator
    )
    la.fit(loader)
    if config.optimize_prior_precision:
        la.optimize_prior_precision(method="marglik")
    return la, wrapped


def posterior_parameters(la, wrapped: LogitsModel) -> list[torch.nn.Parameter]:
    """`wrapped`'s parameters the posterior is over, in the order of `la.mean` (its last layer or all of them)."""
    last_layer_name = getattr(la.model, "_last_layer_name", None)
    if getattr(la.model, "last_layer", None) is not None and last_layer_name is not None:
        return list(wrapped.get_submodule(last_layer_name).parameters())
    return [p for p in wrapped.parameters() if p.requires_grad]


def dense_posterior_covariance(la) -> torch.Tensor:
    """The posterior covariance as a dense matrix (for small posteriors, e.g. a last layer)."""
    precision = la.posterior_precision
    if hasattr(precision, "to_matrix"):  # Kronecker-factored
        return precision.to_matrix(exponent=-1)
    if precision.dim() == 1:  # diagonal
        return torch.diag(1.0 / precision)
    return torch.linalg.inv(precision)


def build_laplace(
    member0: str | os.PathLike | PreTrainedModel,
    train_dataset,
    output_dir: str | os.PathLike,
    config: LaplaceConfig,
    data_collator=None,
) -> BuildOutput:
    """Fit a Laplace approximation around member 0 and write `num_members` seeded posterior samples.

    Args:
        member0 (`str`, `os.PathLike` or `PreTrainedModel`):
            The fine-tuned model (the MAP).
        train_dataset (`Dataset`):
            Training data yielding dict examples with `labels`.
        output_dir (`str` or `os.PathLike`):
            The new run folder (must not hold a run).
        config ([`LaplaceConfig`]):
            The settings.
        data_collator (`Callable`, *optional*):
            Collates examples; `transformers.default_data_collator` when omitted.

    Returns:
        [`BuildOutput`] with `details["laplace"]` (the fitted `laplace-torch` object) and `details["map"]` (the
        posterior mean vector).
    """
    model, source, name = load_member0(member0)
    model = copy.deepcopy(model)
    check_laplace_supported(model, config)
    writer = RunWriter(output_dir, "laplace", config, name, source)
    writer.data_seed = None  # no shuffled data: the fit reads the training set in order
    writer.start()
    la, wrapped = fit_laplace(model, train_dataset, config, data_collator)
    params = posterior_parameters(la, wrapped)
    num_params = sum(p.numel() for p in params)
    if num_params != la.mean.numel():
        raise RuntimeError(f"The posterior has {la.mean.numel()} parameters, the model's matching ones {num_params}.")
    last_layer = getattr(la.model, "_last_layer_name", None)
    map_vector = la.mean.detach().clone()
    prior = la.prior_precision
    prior = prior.tolist() if prior.numel() > 1 else float(prior)
    bn = has_batchnorm(model) and config.subset_of_weights == "all"
    for i in range(config.num_members):
        seed = config.seed + i
        sample = la.sample(1, generator=torch.Generator(device=map_vector.device).manual_seed(seed))[0]
        with torch.no_grad():
            vector_to_parameters(sample.to(params[0].dtype), params)
        if bn:
            _recalibrate_bn(model, train_dataset, config.batch_size, config.bn_recalibration_batches)
        writer.save_member(
            model,
            seed=seed,
            metrics={
                "role": "laplace_sample",
                "sample_seed": seed,
                "prior_precision": prior,
                "subset_of_weights": config.subset_of_weights,
                "last_layer": last_layer.removeprefix("model.") if last_layer else None,
            },
        )
    with torch.no_grad():
        vector_to_parameters(map_vector, params)
    return BuildOutput(writer.run_dir, writer.manifest, {"laplace": la, "map": map_vector})

"""Train M independent ensemble members at once in one process, vectorised with `torch.func`.

The parallel stage of StarSSE (members 1..K-1, each starting from member 0) and every Local DE member are independent
trainings of one architecture. Instead of running them one after another, [`VectorizedMembers`] stacks the members'
parameters and buffers along a new leading dimension (`torch.func.stack_module_state`) and runs one forward/backward
for all of them (`torch.func.vmap` over `torch.func.functional_call`):

- each member gets its own batch (a stacked batch `[M, B, ...]`, e.g. from one seeded dataloader per member, see
  [`member_dataloaders`]), so data order / seed stay per member;
- the members' losses are independent, so the gradient of their sum w.r.t. the stacked parameters is, slice by slice,
  each member's own gradient;
- gradient clipping is per member: each member's gradient norm is computed over its own slices only;
- the optimizer runs over the stacked parameters. The usual optimizers (SGD with momentum, Adam, AdamW, RMSprop,
  ...) are elementwise, so one optimizer over stacked tensors is exactly M optimizers; optimizers that use per-tensor
  statistics (LAMB, LARS, Adafactor, ...) are not, and are refused;
- BatchNorm in train mode: running statistics are stacked buffers passed through `vmap`; the in-place updates that
  BatchNorm does inside `functional_call` land in each member's slice, so every member keeps its own statistics;
- [`VectorizedMembers.unstack`] copies the result back into M regular models, ready for `save_pretrained`.

Under `vmap`, a convolution whose input and weight are both batched becomes one grouped convolution (M groups), a
linear layer a batched matmul: larger kernels, one Python dispatch for all members.

Speed (`benchmarks/parallel_members.py`): this saves per-kernel overhead (Python dispatch, kernel launches), which
matters for small models on a GPU. On CPU the work is compute-bound and oneDNN runs a grouped convolution no faster
than M separate ones, so expect no gain there (about 0.9x of sequential for a 1M-parameter CNN, measured); M-times
larger activations also cross glibc's 32 MB mmap threshold, so run CPU jobs with a caching malloc (jemalloc /
tcmalloc, or `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296`). On CPU,
member-parallel processes are the faster way to use several cores. Transformers models: pick
`attn_implementation="eager"`, as `vmap` has no batching rule for the CPU SDPA kernel and falls back to a loop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset

from .cyclic_schedule import get_cyclic_cosine_schedule
from .seeds import member_data_seed

# Optimizers whose update is elementwise given the (shared) learning rate and step count: running one of them over
# stacked parameters is exactly running one per member.
ELEMENTWISE_OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}

Batch = Mapping[str, Tensor] | Sequence[Tensor] | Tensor


def _default_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits, labels)


def _logits(outputs: Any) -> Tensor:
    """The logits of a model output: a tensor as is, `outputs.logits` for transformers' `ModelOutput`s."""
    if isinstance(outputs, Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, Mapping):
        logits = outputs.get("logits")
    if logits is None and isinstance(outputs, (tuple, list)):
        logits = outputs[0]
    if not isinstance(logits, Tensor):
        raise TypeError(f"Cannot find the logits in a model output of type {type(outputs).__name__}.")
    return logits


def stack_member_batches(batches: Sequence[Batch]) -> Batch:
    """Stack M per-member batches (dicts, tuples/lists or tensors of the same structure) into one `[M, B, ...]` batch.

    Args:
        batches (`Sequence` of batches):
            One batch per member, each as a dataloader yields it.

    Return:
        The batch of the same structure with every tensor stacked along a new leading member dimension.
    """
    if len(batches) == 0:
        raise ValueError("`batches` should hold one batch per member, got none.")
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.stack(list(batches))
    if isinstance(first, Mapping):
        return {key: torch.stack([batch[key] for batch in batches]) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(torch.stack([batch[i] for batch in batches]) for i in range(len(first)))
    raise TypeError(f"Cannot stack batches of type {type(first).__name__}; expected dict, tuple/list or tensor.")


def member_dataloaders(
    dataset: Dataset, batch_size: int, seeds: Sequence[int], drop_last: bool = True, **dataloader_kwargs: Any
) -> list[DataLoader]:
    """One shuffled dataloader per member, each with its own seeded generator (its own data order).

    Args:
        dataset (`torch.utils.data.Dataset`):
            The training set, shared by all members.
        batch_size (`int`):
            Per-member batch size.
        seeds (`Sequence[int]`):
            The members' seeds (`MemberPlan.seed`): the data order of member i is drawn, epoch after epoch, from one
            generator seeded `hf_starsse.seeds.member_data_seed(seeds[i], i)`, like every other training path.
        drop_last (`bool`, *optional*, defaults to `True`):
            Drop the last incomplete batch (all members see the same batch sizes either way, since they share the
            dataset; kept `True` to match the usual training setup).
        dataloader_kwargs:
            Passed on to `torch.utils.data.DataLoader` (`collate_fn`, `num_workers`, ...).
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` should be positive, got {batch_size}.")
    return [
        DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(member_data_seed(int(seed), index)),
            **dataloader_kwargs,
        )
        for index, seed in enumerate(seeds)
    ]


def iterate_member_batches(loaders: Sequence[Iterable[Batch]]) -> Iterator[Batch]:
    """Zip M per-member dataloaders and yield stacked `[M, B, ...]` batches (stops with the shortest loader)."""
    for batches in zip(*loaders):
        yield stack_member_batches(batches)


class VectorizedMembers:
    r"""
    M members of one architecture, trained at once with `torch.func.vmap`.

    Args:
        models (`Sequence[torch.nn.Module]`):
            The M members' starting models, of the same class and parameter shapes (for StarSSE's parallel stage: M
            copies of member 0, see [`VectorizedMembers.from_model`]). They are copied, not modified; get the trained
            members back with [`VectorizedMembers.unstack`].
        loss_fn (`Callable[[Tensor, Tensor], Tensor]`, *optional*):
            `loss_fn(logits, labels)` for ONE member's batch, returning a scalar. Defaults to the mean cross-entropy.
        input_name (`str`, *optional*, defaults to `"pixel_values"`):
            Key of the model input in dict batches, passed to the model as that keyword (transformers models). With
            tuple/list batches `(inputs, labels)` the input is passed positionally (plain `nn.Module`s).
        label_name (`str`, *optional*, defaults to `"labels"`):
            Key of the labels in dict batches. The labels are not passed to the model: the loss is `loss_fn` on the
            logits (`outputs.logits` for transformers models).
        randomness (`str`, *optional*, defaults to `"different"`):
            `vmap`'s randomness mode: `"different"` draws independent dropout / drop-path masks per member (what M
            separate trainings do, though not bit-identical to them), `"same"` one mask for all, `"error"` refuses
            random ops.

    Example:

    ```python
    >>> members = VectorizedMembers.from_model(member_0, num_members=4)
    >>> members.create_optimizer("sgd", learning_rate=0.05, momentum=0.9, weight_decay=1e-4)
    >>> members.create_scheduler(num_first_steps=1000, num_cycle_steps=1000, num_cycles=4, step_offset=1000)
    >>> loaders = member_dataloaders(train_set, batch_size=64, seeds=[1, 2, 3, 4], collate_fn=collate)
    >>> for batch in iterate_member_batches(loaders):
    ...     losses = members.training_step(batch, max_grad_norm=1.0)  # one loss per member
    >>> models = members.unstack()  # 4 regular models: models[i].save_pretrained(...)
    ```
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        input_name: str = "pixel_values",
        label_name: str = "labels",
        randomness: str = "different",
    ) -> None:
        models = list(models)
        if len(models) == 0:
            raise ValueError("`models` should hold at least one model, got none.")
        if randomness not in ("different", "same", "error"):
            raise ValueError(f"`randomness` should be 'different', 'same' or 'error', got {randomness!r}.")
        reference = {name: tensor.shape for name, tensor in models[0].state_dict().items()}
        for index, model in enumerate(models[1:], start=1):
            if type(model) is not type(models[0]):
                raise ValueError(
                    f"`models[{index}]` is a {type(model).__name__}, expected {type(models[0]).__name__} like "
                    "`models[0]`."
                )
            shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
            if shapes != reference:
                raise ValueError(f"`models[{index}]` has different parameter names or shapes than `models[0]`.")
        self.num_members = len(models)
        self.loss_fn = loss_fn if loss_fn is not None else _default_loss
        self.input_name = input_name
        self.label_name = label_name
        self.randomness = randomness
        self._positional_input = False  # set per batch: dict batches pass `input_name=`, tuple batches positionally
        # One template module: its tensors are swapped for a member's slices inside `functional_call`, and it is
        # copied to build the unstacked models.
        self.template = copy.deepcopy(models[0])
        self.template.train(models[0].training)
        params, buffers = stack_module_state(models)
        self.params: dict[str, Tensor] = params
        self.buffers: dict[str, Tensor] = buffers
        self.optimizer: Optimizer | None = None
        self.lr_scheduler: LambdaLR | None = None
        self._vmapped_forward = vmap(self._member_forward, in_dims=(0, 0, 0), randomness=randomness)
        self._vmapped_loss = vmap(self._member_loss, in_dims=(0, 0, 0, 0), randomness=randomness)

    @classmethod
    def from_model(cls, model: nn.Module, num_members: int, **kwargs: Any) -> VectorizedMembers:
        """M members that all start from `model`'s weights (StarSSE's parallel stage: all start from member 0)."""
        if num_members < 1:
            raise ValueError(f"`num_members` should be positive, got {num_members}.")
        return cls([model] * num_members, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # mode, device

    @property
    def training(self) -> bool:
        return self.template.training

    def train(self, mode: bool = True) -> VectorizedMembers:
        """Set train mode (BatchNorm uses batch statistics and updates each member's running statistics)."""
        self.template.train(mode)
        return self

    def eval(self) -> VectorizedMembers:
        return self.train(False)

    # ----------------------------------------------------------------------------------------------------------------
    # forward

    def _call(self, params: dict[str, Tensor], buffers: dict[str, Tensor], inputs: Tensor) -> Tensor:
        if self._positional_input:
            outputs = functional_call(self.template, (params, buffers), (inputs,))
        else:
            outputs = functional_call(self.template, (params, buffers), (), {self.input_name: inputs})
        return _logits(outputs)

    def _member_forward(self, params: dict[str, Tensor], buffers: dict[str, Tensor], inputs: Tensor) -> Tensor:
        return self._call(params, buffers, inputs)

    def _member_loss(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor], inputs: Tensor, labels: Tensor
    ) -> Tensor:
        return self.loss_fn(self._call(params, buffers, inputs), labels)

    def _split_batch(self, batch: Batch | Sequence[Batch]) -> tuple[Tensor, Tensor | None]:
        """`(inputs [M, B, ...], labels [M, B, ...] or None)`; a list of M per-member batches is stacked first."""
        if isinstance(batch, (list, tuple)) and len(batch) == self.num_members and not isinstance(batch[0], Tensor):
            batch = stack_member_batches(batch)
        if isinstance(batch, Mapping):
            if self.input_name not in batch:
                raise KeyError(f"The batch has no `{self.input_name}` (the `input_name`); it has {sorted(batch)}.")
            self._positional_input = False
            inputs, labels = batch[self.input_name], batch.get(self.label_name)
        elif isinstance(batch, (tuple, list)):
            self._positional_input = True
            inputs, labels = batch[0], (batch[1] if len(batch) > 1 else None)
        elif isinstance(batch, Tensor):
            self._positional_input = True
            inputs, labels = batch, None
        else:
            raise TypeError(f"Unsupported batch type {type(batch).__name__}; expected dict, tuple/list or tensor.")
        for name, tensor in (("inputs", inputs), ("labels", labels)):
            if tensor is not None and (tensor.dim() == 0 or tensor.shape[0] != self.num_members):
                raise ValueError(
                    f"The batch's {name} should be stacked per member with a leading dimension of "
                    f"{self.num_members} (num_members), got shape {tuple(tensor.shape)}."
                )
        return inputs, labels

    def forward(self, batch: Batch | Sequence[Batch]) -> Tensor:
        """The members' logits `[M, B, ...]` for a stacked batch (each member on its own slice)."""
        inputs, _ = self._split_batch(batch)
        return self._vmapped_forward(self.params, self.buffers, inputs)

    __call__ = forward

    def compute_losses(self, batch: Batch | Sequence[Batch]) -> Tensor:
        """The members' losses `[M]`, each `loss_fn` on the member's own slice of the batch."""
        inputs, labels = self._split_batch(batch)
        if labels is None:
            raise ValueError(f"The batch has no labels (`{self.label_name}` or the second tuple item).")
        return self._vmapped_loss(self.params, self.buffers, inputs, labels)

    # ----------------------------------------------------------------------------------------------------------------
    # optimisation

    def trainable_parameters(self) -> dict[str, Tensor]:
        """The stacked parameters that require grad, by name."""
        return {name: param for name, param in self.params.items() if param.requires_grad}

    def create_optimizer(
        self,
        optimizer: str | type[Optimizer] = "sgd",
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        decay_parameter_names: Iterable[str] | None = None,
        **optimizer_kwargs: Any,
    ) -> Optimizer:
        """Create one optimizer over the stacked parameters; exact as M optimizers for elementwise optimizers.

        Args:
            optimizer (`str` or `type[torch.optim.Optimizer]`, *optional*, defaults to `"sgd"`):
                A name in `ELEMENTWISE_OPTIMIZERS` (`sgd`, `adam`, `adamw`, ...) or one of those classes.
            learning_rate (`float`, *optional*, defaults to 1e-3):
                The peak learning rate, shared by all members.
            weight_decay (`float`, *optional*, defaults to 0.0):
                Weight decay of the parameters in `decay_parameter_names`.
            decay_parameter_names (`Iterable[str]`, *optional*):
                Names of the parameters that get weight decay (e.g. `Trainer.get_decay_parameter_names(model)`: no
                decay on norms and biases). Defaults to all parameters.
            optimizer_kwargs:
                Passed on to the optimizer (`momentum`, `betas`, `eps`, `nesterov`, ...).
        """
        if isinstance(optimizer, str):
            if optimizer.lower() not in ELEMENTWISE_OPTIMIZERS:
                raise ValueError(
                    f"`optimizer` should be one of {sorted(ELEMENTWISE_OPTIMIZERS)} (elementwise optimizers, exact "
                    f"over stacked members), got {optimizer!r}."
                )
            optimizer_cls = ELEMENTWISE_OPTIMIZERS[optimizer.lower()]
        elif optimizer in ELEMENTWISE_OPTIMIZERS.values():
            optimizer_cls = optimizer
        else:
            raise ValueError(
                f"`optimizer` {optimizer!r} is not a known elementwise optimizer: over stacked members only "
                f"{sorted(c.__name__ for c in ELEMENTWISE_OPTIMIZERS.values())} are exact."
            )
        if learning_rate <= 0:
            raise ValueError(f"`learning_rate` should be positive, got {learning_rate}.")
        trainable = self.trainable_parameters()
        if not trainable:
            raise ValueError("The models have no parameter that requires grad.")
        if decay_parameter_names is None:
            groups = [{"params": list(trainable.values()), "weight_decay": weight_decay}]
        else:
            decay = set(decay_parameter_names)
            unknown = decay - set(self.params)
            if unknown:
                raise ValueError(f"`decay_parameter_names` has names that are not parameters: {sorted(unknown)[:5]}.")
            groups = [
                {"params": [p for n, p in trainable.items() if n in decay], "weight_decay": weight_decay},
                {"params": [p for n, p in trainable.items() if n not in decay], "weight_decay": 0.0},
            ]
            groups = [group for group in groups if group["params"]]
        self.optimizer = optimizer_cls(groups, lr=learning_rate, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(
        self,
        num_first_steps: int,
        num_cycle_steps: int,
        num_cycles: int,
        cycle_lr_ratio: float = 1.0,
        num_first_warmup_steps: int = 0,
        num_cycle_warmup_steps: int = 0,
        step_offset: int = 0,
    ) -> LambdaLR:
        """The cyclic cosine schedule (see [`get_cyclic_cosine_schedule`]) on the stacked optimizer.

        All members of the parallel stage run the same cycle, so one schedule serves them all; for StarSSE members
        pass `step_offset=num_first_steps` (each member is one cycle after the first fine-tuning).
        """
        if self.optimizer is None:
            raise ValueError("Call `create_optimizer` before `create_scheduler`.")
        self.lr_scheduler = get_cyclic_cosine_schedule(
            self.optimizer,
            num_first_steps=num_first_steps,
            num_cycle_steps=num_cycle_steps,
            num_cycles=num_cycles,
            cycle_lr_ratio=cycle_lr_ratio,
            num_first_warmup_steps=num_first_warmup_steps,
            num_cycle_warmup_steps=num_cycle_warmup_steps,
            step_offset=step_offset,
        )
        return self.lr_scheduler

    @torch.no_grad()
    def grad_norms(self, norm_type: float = 2.0) -> Tensor:
        """Each member's total gradient norm `[M]`, over its own slices of all parameters (as `clip_grad_norm_`)."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if not grads:
            return torch.zeros(self.num_members)
        per_param = torch.stack([torch.linalg.vector_norm(g.flatten(1), norm_type, dim=1) for g in grads])
        return torch.linalg.vector_norm(per_param, norm_type, dim=0)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> Tensor:
        """Clip each member's gradient to `max_norm` on its own, as `torch.nn.utils.clip_grad_norm_` per member.

        Return:
            `torch.Tensor` of shape `[M]`: each member's total gradient norm before clipping.
        """
        if max_norm <= 0:
            raise ValueError(f"`max_norm` should be positive, got {max_norm}.")
        norms = self.grad_norms(norm_type)
        # Same formula as torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1.
        coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
        for p in self.params.values():
            if p.grad is not None:
                p.grad.mul_(coef.to(p.grad.dtype).view(-1, *([1] * (p.grad.dim() - 1))))
        return norms

    def training_step(self, batch: Batch | Sequence[Batch], max_grad_norm: float | None = None) -> Tensor:
        """One optimizer step of every member on its own slice of `batch`; returns the members' losses `[M]`.

        Args:
            batch (stacked batch or `Sequence` of M per-member batches):
                A dict (`input_name`, `label_name`) or `(inputs, labels)` of tensors `[M, B, ...]`.
            max_grad_norm (`float`, *optional*):
                Clip each member's gradient norm to this value (per member).
        """
        if self.optimizer is None:
            raise ValueError("Call `create_optimizer` before `training_step`.")
        if not self.training:
            self.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.compute_losses(batch)
        # Members are independent: d(sum of losses)/d(member m's slice) is member m's own gradient.
        losses.sum().backward()
        if max_grad_norm is not None:
            self.clip_grad_norm_(max_grad_norm)
        self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return losses.detach()

    def fit(
        self,
        batches: Iterable[Batch | Sequence[Batch]],
        num_steps: int | None = None,
        max_grad_norm: float | None = None,
    ) -> Tensor:
        """Run `training_step` over `batches` (e.g. `iterate_member_batches(loaders)`), at most `num_steps` steps.

        Return:
            `torch.Tensor` of shape `[steps, M]`: the members' training losses.
        """
        if num_steps is not None and num_steps < 1:
            raise ValueError(f"`num_steps` should be positive, got {num_steps}.")
        history = []
        for step, batch in enumerate(batches):
            if num_steps is not None and step >= num_steps:
                break
            history.append(self.training_step(batch, max_grad_norm=max_grad_norm))
        return torch.stack(history) if history else torch.empty(0, self.num_members)

    # ----------------------------------------------------------------------------------------------------------------
    # back to M models

    def member_state_dict(self, index: int) -> dict[str, Tensor]:
        """Member `index`'s state dict (the template's `state_dict()` keys), as views of the stacked tensors."""
        if not 0 <= index < self.num_members:
            raise IndexError(f"`index` should be in [0, {self.num_members}), got {index}.")
        # named_parameters()/named_buffers() drop tied aliases that state_dict() keeps: map each key to its tensor.
        canonical = {}
        for names, dedup in (
            (self.template.named_parameters(remove_duplicate=False), dict(self.template.named_parameters())),
            (self.template.named_buffers(remove_duplicate=False), dict(self.template.named_buffers())),
        ):
            ids = {id(tensor): name for name, tensor in dedup.items()}
            for name, tensor in names:
                canonical[name] = ids[id(tensor)]
        stacked = {**self.params, **self.buffers}
        return {key: stacked[canonical[key]][index].detach() for key in self.template.state_dict()}

    @torch.no_grad()
    def unstack(self, models: Sequence[nn.Module] | None = None) -> list[nn.Module]:
        """Load each member into a regular model (`load_state_dict`), e.g. to `save_pretrained` it as a member.

        Args:
            models (`Sequence[torch.nn.Module]`, *optional*):
                M models of the same architecture to load into. Defaults to M new copies of the template.

        Return:
            `list[torch.nn.Module]`: the M models, in the mode (train/eval) of these members.
        """
        if models is None:
            models = [copy.deepcopy(self.template) for _ in range(self.num_members)]
        models = list(models)
        if len(models) != self.num_members:
            raise ValueError(f"`models` should hold {self.num_members} models (num_members), got {len(models)}.")
        for index, model in enumerate(models):
            model.load_state_dict({k: v.clone() for k, v in self.member_state_dict(index).items()})
            # Non-persistent buffers (not in state_dict) are copied directly.
            persistent = set(model.state_dict())
            for name, buffer in model.named_buffers():
                if name not in persistent and name in self.buffers:
                    buffer.copy_(self.buffers[name][index])
            model.train(self.training)
        return models

"""SPRO: a simplex of models around a fine-tuned member 0 (Benton et al. 2021, "Loss Surface Simplexes"), as a
post-hoc builder.

Vertex 0 is member 0. Vertices 1..V-1 are added one at a time; vertex `j` starts at member 0 plus Gaussian noise
(`init_std`) and is trained with the earlier vertices frozen, on the loss at a random point of the simplex
`theta = sum_i alpha_i v_i`, `alpha ~ Dirichlet(1, ..., 1)` (uniform on the simplex), minus `volume_regularization`
times the log volume of the simplex:

    log vol = 0.5 * logdet(G) - log(j!),   G = B B^T,   B = [v_1 - v_0; ...; v_j - v_0]

so the vertices spread while every point of the simplex keeps a low loss. Members are seeded uniform samples inside
the final simplex (sample `i` seeded `seed + i`, its barycentric weights recorded in its `member.json`), BatchNorm
statistics recomputed for each. The vertices are saved as `spro_vertices.safetensors` in the run folder.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.func import functional_call
from transformers import PreTrainedModel

from ._common import (
    BuildOutput,
    PosthocConfig,
    RunWriter,
    _check,
    _recalibrate_bn,
    batches,
    flat_params,
    has_batchnorm,
    load_flat_params,
    load_member0,
    make_optimizer,
    steps_from,
    train_steps,
    trainable_names,
)

VERTICES_NAME = "spro_vertices.safetensors"


@dataclass
class SPROConfig(PosthocConfig):
    """Settings of SPRO (all of [`PosthocConfig`] plus the simplex).

    Args:
        num_vertices (`int`, *optional*, defaults to 3):
            Vertices of the simplex, member 0 included (at least 2).
        vertex_steps (`int`, *optional*):
            Optimizer steps to train each new vertex. Give this or `vertex_epochs`.
        vertex_epochs (`float`, *optional*):
            The same in epochs.
        volume_regularization (`float`, *optional*, defaults to 0.01):
            Weight of the `-log volume` term (the paper's lambda); 0 trains the vertices without spreading them.
        init_std (`float`, *optional*, defaults to 0.01):
            Standard deviation of the Gaussian noise added to member 0 to start a new vertex (must be positive: a
            vertex on top of member 0 gives a zero volume).
    """

    num_vertices: int = 3
    vertex_steps: int | None = None
    vertex_epochs: float | None = None
    volume_regularization: float = 0.01
    init_std: float = 0.01

    def validate(self) -> None:
        super().validate()
        _check(
            self.num_vertices >= 2, "num_vertices", self.num_vertices, "should be at least 2 (member 0 and one more)"
        )
        if self.vertex_steps is None and self.vertex_epochs is None:
            raise ValueError("Give the training length of each vertex: `vertex_steps` or `vertex_epochs`.")
        if self.vertex_steps is not None:
            _check(self.vertex_steps >= 1, "vertex_steps", self.vertex_steps, "should be >= 1")
        _check(self.volume_regularization >= 0, "volume_regularization", self.volume_regularization, "should be >= 0")
        _check(self.init_std > 0, "init_std", self.init_std, "should be positive")


def sample_simplex_weights(num_vertices: int, generator: torch.Generator) -> torch.Tensor:
    """Barycentric weights uniform on the simplex (Dirichlet(1, ..., 1)), drawn with `generator`."""
    e = -torch.log(torch.rand(num_vertices, generator=generator, dtype=torch.float64).clamp_min(1e-300))
    return (e / e.sum()).float()


def simplex_log_volume(vertices: list[torch.Tensor]) -> torch.Tensor:
    """Log volume of the simplex spanned by flat vectors `vertices` (`0.5 logdet(B B^T) - log(k!)`)."""
    b = torch.stack([v - vertices[0] for v in vertices[1:]])
    gram = b @ b.T
    return 0.5 * torch.logdet(gram) - math.lgamma(len(vertices))


def build_spro(
    member0: str | os.PathLike | PreTrainedModel,
    train_dataset,
    output_dir: str | os.PathLike,
    config: SPROConfig,
    data_collator=None,
) -> BuildOutput:
    """Train a simplex around member 0 and write `num_members` seeded samples from inside it.

    Args:
        member0 (`str`, `os.PathLike` or `PreTrainedModel`):
            The fine-tuned starting point (vertex 0).
        train_dataset (`Dataset`):
            Training data yielding dict examples.
        output_dir (`str` or `os.PathLike`):
            The new run folder (must not hold a run).
        config ([`SPROConfig`]):
            The settings.
        data_collator (`Callable`, *optional*):
            Collates examples; `transformers.default_data_collator` when omitted.

    Returns:
        [`BuildOutput`] with `details["vertices"]` (`(V, P)` flat vectors), `details["names"]` (their parameters)
        and `details["weights"]` (barycentric weights of each member).
    """
    per_epoch = config.steps_per_epoch(len(train_dataset))
    vertex_steps = steps_from(config.vertex_steps, config.vertex_epochs, "vertex_steps", "vertex_epochs", per_epoch)
    model, source, name = load_member0(member0)
    writer = RunWriter(output_dir, "spro", config, name, source, {"resolved_vertex_steps": vertex_steps})
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    names = trainable_names(model)
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    dtypes = [params[n].dtype for n in names]
    writer.start()

    vertices = [flat_params(model, names).to(device)]
    generator = torch.Generator().manual_seed(config.seed)
    batch_iter = batches(train_dataset, config.batch_size, config.seed, device, data_collator)
    for _j in range(1, config.num_vertices):
        init = vertices[0] + config.init_std * torch.randn(vertices[0].shape, generator=generator).to(device)
        vertex = torch.nn.Parameter(init)
        fixed = list(vertices)

        def loss_fn(module, batch, vertex=vertex, fixed=fixed):
            alpha = sample_simplex_weights(len(fixed) + 1, generator).to(device)
            theta = alpha[-1] * vertex
            for a, v in zip(alpha[:-1], fixed):
                theta = theta + a * v
            chunks = torch.split(theta, sizes)
            point = {n: c.view(s).to(d) for n, c, s, d in zip(names, chunks, shapes, dtypes)}
            loss = functional_call(module, point, args=(), kwargs=batch).loss
            if config.volume_regularization > 0:
                loss = loss - config.volume_regularization * simplex_log_volume([*fixed, vertex])
            return loss

        optimizer = make_optimizer([vertex], config)
        train_steps(
            model,
            batch_iter,
            optimizer,
            lambda step: config.learning_rate,
            vertex_steps,
            max_grad_norm=config.max_grad_norm,
            loss_fn=loss_fn,
            desc=f"spro: vertex {len(vertices)} of {config.num_vertices}",
        )
        vertices.append(vertex.detach().clone())
    stacked = torch.stack(vertices).cpu()
    _save_vertices(writer.run_dir / VERTICES_NAME, stacked, names)

    bn = has_batchnorm(model)
    weights = []
    total_steps = (config.num_vertices - 1) * vertex_steps
    for i in range(config.num_members):
        seed = config.seed + i
        alpha = sample_simplex_weights(config.num_vertices, torch.Generator().manual_seed(seed))
        weights.append(alpha)
        load_flat_params(model, names, alpha @ stacked)
        _recalibrate_bn(model, train_dataset, config.batch_size, config.bn_recalibration_batches)
        writer.save_member(
            model,
            seed=seed,
            learning_rate=config.learning_rate,
            num_steps=total_steps,
            num_epochs=total_steps / per_epoch,
            metrics={"role": "simplex_sample", "simplex_weights": alpha.tolist(), "bn_recalibrated": bn},
        )
    return BuildOutput(
        writer.run_dir,
        writer.manifest,
        {"vertices": stacked, "names": names, "weights": torch.stack(weights), "vertex_steps": vertex_steps},
    )


def _save_vertices(path: Path, vertices: torch.Tensor, names: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"vertices": vertices.contiguous()}, str(tmp), metadata={"names": json.dumps(names)})
    os.replace(tmp, path)

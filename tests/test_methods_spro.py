"""SPRO (hf_starsse.methods.spro): the vertices span a non-degenerate simplex, the volume term spreads them, and the
members lie inside the simplex."""

from hf_starsse.methods import SPROConfig, build_spro
from hf_starsse.methods.spro import VERTICES_NAME, sample_simplex_weights, simplex_log_volume

import math

import pytest
import torch
from methods_fixtures import make_image_dataset, make_member0, trainable_vector
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def member0(tmp_path_factory):
    return make_member0(tmp_path_factory.mktemp("spro"))


@pytest.fixture(scope="module")
def spro_run(member0, tmp_path_factory):
    config = SPROConfig(
        num_members=4, num_vertices=3, vertex_steps=6, volume_regularization=0.5, learning_rate=0.05, batch_size=8
    )
    return build_spro(member0, make_image_dataset(32), tmp_path_factory.mktemp("spro-run") / "run", config)


def test_vertices_span_a_non_degenerate_simplex(member0, spro_run):
    vertices = spro_run.details["vertices"].double()
    assert vertices.shape[0] == 3
    assert torch.equal(vertices[0].float(), trainable_vector(member0))  # vertex 0 is member 0
    edges = vertices[1:] - vertices[0]
    singular = torch.linalg.svdvals(edges)
    assert singular.min() / singular.max() > 0.05  # well conditioned: the edges are far from collinear
    assert math.isfinite(simplex_log_volume(list(vertices)).item())
    saved = load_file(str(spro_run.run_dir / VERTICES_NAME))["vertices"]
    assert torch.equal(saved, spro_run.details["vertices"])


def test_members_lie_inside_the_simplex(spro_run):
    """Each member's weights = sum_i alpha_i v_i with alpha_i >= 0, sum alpha = 1 (barycentric coordinates recovered by
    least squares on the edges, residual < 1e-5 relative), equal to the weights recorded in its member.json."""
    vertices = spro_run.details["vertices"].double()
    edges = (vertices[1:] - vertices[0]).T
    for record, folder in zip(spro_run.manifest.members, spro_run.manifest.member_paths(spro_run.run_dir)):
        theta = trainable_vector(folder).double()
        beta = torch.linalg.lstsq(edges, (theta - vertices[0]).unsqueeze(1)).solution.squeeze(1)
        alpha = torch.cat([1 - beta.sum(0, keepdim=True), beta])
        residual = (edges @ beta + vertices[0] - theta).norm() / theta.norm()
        assert residual < 1e-5
        assert bool((alpha >= -1e-5).all()) and alpha.sum().item() == pytest.approx(1.0)
        assert alpha.tolist() == pytest.approx(record.metrics["simplex_weights"], abs=1e-4)
        assert record.metrics["bn_recalibrated"] is True
    assert spro_run.manifest.strategy == "spro" and len(spro_run.manifest.members) == 4


def test_volume_regularizer_spreads_the_simplex(member0, spro_run, tmp_path):
    config = SPROConfig(
        num_members=1, num_vertices=3, vertex_steps=6, volume_regularization=0.0, learning_rate=0.05, batch_size=8
    )
    flat = build_spro(member0, make_image_dataset(32), tmp_path / "run", config)
    with_volume = simplex_log_volume(list(spro_run.details["vertices"].double()))
    without = simplex_log_volume(list(flat.details["vertices"].double()))
    assert with_volume > without + 0.5


def test_simplex_weights_are_uniform_on_the_simplex():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_simplex_weights(3, g) for _ in range(3000)])
    assert bool((draws >= 0).all()) and torch.allclose(draws.sum(1), torch.ones(3000))
    # Dirichlet(1, 1, 1): each coordinate has mean 1/3 and variance 1/18
    assert draws.mean(0).tolist() == pytest.approx([1 / 3] * 3, abs=0.02)
    assert draws.var(0).tolist() == pytest.approx([1 / 18] * 3, abs=0.006)


def test_invalid_settings_name_the_field():
    with pytest.raises(ValueError, match="`num_vertices`"):
        SPROConfig(num_vertices=1, vertex_steps=2)
    with pytest.raises(ValueError, match="`init_std`"):
        SPROConfig(vertex_steps=2, init_std=0.0)
    with pytest.raises(ValueError, match="`vertex_steps`.*`vertex_epochs`"):
        SPROConfig()
    with pytest.raises(ValueError, match="`volume_regularization`"):
        SPROConfig(vertex_steps=2, volume_regularization=-1)

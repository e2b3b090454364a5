"""KFAC Laplace (hf_starsse.methods.laplace, through laplace-torch): samples centred on the MAP, a positive definite
last-layer posterior covariance, BatchNorm + full network refused up front."""

import pytest
import torch
from methods_fixtures import make_image_dataset, make_member0

pytest.importorskip("laplace")

from hf_starsse.methods import LaplaceConfig, build_laplace  # noqa: E402
from hf_starsse.methods.laplace import dense_posterior_covariance  # noqa: E402

from transformers import AutoModelForImageClassification  # noqa: E402

NUM_DRAWS = 4000


@pytest.fixture(scope="module")
def laplace_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("laplace")
    member0 = make_member0(tmp)
    out = build_laplace(member0, make_image_dataset(32), tmp / "run", LaplaceConfig(num_members=3, batch_size=8))
    return member0, out


def _head(folder):
    model = AutoModelForImageClassification.from_pretrained(folder)
    return model, torch.cat([p.detach().reshape(-1) for p in model.classifier[1].parameters()])


def test_posterior_is_over_the_last_layer_and_positive_definite(laplace_run):
    member0, out = laplace_run
    la = out.details["laplace"]
    assert type(la).__name__ == "KronLLLaplace"
    _, head = _head(member0)
    assert la.n_params == head.numel() == 16 * 4 + 4  # the 4-way Linear head on 16 features
    torch.testing.assert_close(la.mean.detach(), head)  # the MAP is member 0's head
    cov = dense_posterior_covariance(la).double()
    torch.testing.assert_close(cov, cov.T)
    assert torch.linalg.eigvalsh(cov).min() > 0  # positive definite
    assert float(la.prior_precision.min()) > 0


def test_samples_are_centred_on_the_map(laplace_run):
    """Mean of 4000 posterior samples within 5 standard errors (sqrt(diag(cov) / 4000)) of the MAP, and their
    covariance within 0.1 of the posterior's in the correlation scale."""
    _, out = laplace_run
    la = out.details["laplace"]
    draws = la.sample(NUM_DRAWS, generator=torch.Generator().manual_seed(0)).double()
    cov = dense_posterior_covariance(la).double()
    sem = (cov.diagonal() / NUM_DRAWS).sqrt()
    assert ((draws.mean(0) - la.mean.double()).abs() / sem).max() < 5
    sd = cov.diagonal().sqrt()
    empirical = torch.cov(draws.T)
    assert ((empirical - cov) / torch.outer(sd, sd)).abs().max() < 0.1


def test_members_are_seeded_posterior_samples_of_the_head(laplace_run):
    member0, out = laplace_run
    la = out.details["laplace"]
    base, base_head = _head(member0)
    heads = []
    for record, folder in zip(out.manifest.members, out.manifest.member_paths(out.run_dir)):
        model, head = _head(folder)
        expected = la.sample(1, generator=torch.Generator().manual_seed(record.seed))[0]
        torch.testing.assert_close(head, expected.detach())
        body = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier")}
        assert all(torch.equal(v, base.state_dict()[k]) for k, v in body.items())  # only the last layer is sampled
        heads.append(head)
    assert out.manifest.strategy == "laplace" and len(heads) == 3
    assert (heads[0] - heads[1]).abs().max() > 0 and (heads[0] - base_head).abs().max() > 0


def test_full_network_on_batchnorm_is_refused_before_fitting(laplace_run, tmp_path):
    member0, _ = laplace_run
    with pytest.raises(ValueError, match="`subset_of_weights='all'`.*BatchNorm.*last_layer"):
        build_laplace(member0, make_image_dataset(32), tmp_path / "run", LaplaceConfig(subset_of_weights="all"))
    assert not (tmp_path / "run").exists()


def test_full_network_kfac_on_unsupported_layers_is_refused(tmp_path):
    member0 = make_member0(tmp_path, "vit", train_steps=0)  # LayerNorm, embeddings: not KFAC layers
    with pytest.raises(ValueError, match="`subset_of_weights='all'`.*Linear and Conv2d"):
        build_laplace(member0, make_image_dataset(32), tmp_path / "run", LaplaceConfig(subset_of_weights="all"))
    with pytest.raises(ValueError, match="`hessian_structure`"):
        LaplaceConfig(hessian_structure="lowrank2")


def test_full_network_diagonal_laplace_where_the_backend_supports_it(tmp_path):
    """A ViT (no BatchNorm) with a diagonal full-network posterior: the MAP is all of member 0's trainable weights and
    the members move the body too, not only the head."""
    from hf_starsse.methods._common import flat_params, trainable_names

    member0 = make_member0(tmp_path, "vit", train_steps=0)
    config = LaplaceConfig(num_members=2, batch_size=8, subset_of_weights="all", hessian_structure="diag")
    out = build_laplace(member0, make_image_dataset(32), tmp_path / "run", config)
    la = out.details["laplace"]
    base = AutoModelForImageClassification.from_pretrained(member0)
    torch.testing.assert_close(la.mean.detach(), flat_params(base, trainable_names(base)))
    assert bool((la.posterior_variance > 0).all())
    member = AutoModelForImageClassification.from_pretrained(out.manifest.member_paths(out.run_dir)[0])
    changed = [k for k, v in member.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert any(k.startswith("vit.layers") for k in changed) and any(k.startswith("classifier") for k in changed)

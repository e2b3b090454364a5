import hf_starsse  # noqa: F401, I001  (first: torchvision compatibility)
from hf_starsse.bn_recalibration import batchnorm_modules, recalibrate_batchnorm
from hf_starsse.eval_data import make_eval_dataloader
from hf_starsse.soups import load_soup_into, uniform_soup

import os

import pytest
import torch
from run_folder_helpers import eval_dataset_dict, single_thread, tiny_model
from torch.nn.modules.batchnorm import _BatchNorm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


@pytest.fixture(scope="module")
def averaged_soup(tmp_path_factory):
    """The uniform soup of two BN ResNets whose running statistics were set to arbitrary values."""
    root = tmp_path_factory.mktemp("bn")
    paths = []
    for seed in (0, 1):
        model = tiny_model("resnet", seed=seed)
        generator = torch.Generator().manual_seed(seed)
        for bn in batchnorm_modules(model):
            bn.running_mean.normal_(generator=generator)
            bn.running_var.uniform_(0.5, 2.0, generator=generator)
        model.save_pretrained(root / f"m{seed}")
        paths.append(root / f"m{seed}")
    return uniform_soup(paths)


def _dict_batches(batch_size=16):
    data = eval_dataset_dict(num_train=64, num_val=8, num_test=8, seed=3)
    loader = make_eval_dataloader(data["train"], batch_size=batch_size)
    first = next(iter(loader))
    assert isinstance(first, dict) and set(first) == {"pixel_values", "labels"}
    return loader


def _hand_computed_stats(model, loader):
    """Per BN layer: the mean over batches of each batch's per-channel mean and unbiased variance of its input, in a
    train-mode pass (BN layers normalise with batch statistics in train mode, whatever their running stats)."""
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [
        module.register_forward_pre_hook(lambda mod, args, name=name: inputs.setdefault(name, []).append(args[0]))
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
    ]
    model.train()
    with torch.no_grad():
        for batch in loader:
            model(pixel_values=batch["pixel_values"])
    for hook in hooks:
        hook.remove()
    stats = {}
    for name, xs in inputs.items():
        means = [x.double().mean(dim=(0, 2, 3)) for x in xs]
        variances = [x.double().permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(dim=1, unbiased=True) for x in xs]
        stats[name] = (torch.stack(means).mean(0), torch.stack(variances).mean(0), len(xs))
    return stats


def test_recalibrated_stats_equal_hand_computed_stats(averaged_soup):
    loader = _dict_batches()
    model = load_soup_into(tiny_model("resnet", seed=5), averaged_soup)
    reference = load_soup_into(tiny_model("resnet", seed=5), averaged_soup)
    expected = _hand_computed_stats(reference, loader)
    model.eval()
    before = {name: m.running_mean.clone() for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
    recalibrate_batchnorm(model, loader)
    assert len(expected) == len(before) >= 5
    for name, module in model.named_modules():
        if not isinstance(module, _BatchNorm):
            continue
        mean, var, num_batches = expected[name]
        assert num_batches == 4
        assert torch.allclose(module.running_mean.double(), mean, atol=1e-5), name
        assert torch.allclose(module.running_var.double(), var, atol=1e-5), name
        assert int(module.num_batches_tracked) == num_batches
        assert not torch.allclose(module.running_mean, before[name], atol=1e-3)  # the averaged stats were replaced
        assert module.momentum == 0.1  # restored
    assert not model.training and not any(m.training for m in model.modules())  # eval mode restored
    # the first BN's input is the stem convolution of the pixels: check it without hooks too
    stem = model.resnet.embedder.embedder
    with torch.no_grad():
        conv = [stem.convolution(b["pixel_values"]) for b in loader]
    first_mean = torch.stack([c.double().mean(dim=(0, 2, 3)) for c in conv]).mean(0)
    assert torch.allclose(stem.normalization.running_mean.double(), first_mean, atol=1e-5)


def test_recalibration_under_accelerate_matches(averaged_soup):
    from accelerate import Accelerator

    loader = _dict_batches()
    plain = recalibrate_batchnorm(load_soup_into(tiny_model("resnet", seed=5), averaged_soup), loader)
    accelerator = Accelerator(cpu=True)
    model, prepared = accelerator.prepare(load_soup_into(tiny_model("resnet", seed=5), averaged_soup), loader)
    assert accelerator.num_processes == 1
    model.train()  # modes are restored to what they were, whatever that is
    recalibrate_batchnorm(model, prepared, accelerator=accelerator)
    assert model.training
    unwrapped = accelerator.unwrap_model(model)
    for (name, a), b in zip(plain.named_buffers(), unwrapped.buffers()):
        assert torch.allclose(a.double(), b.double(), atol=1e-5), name


def test_models_without_batchnorm_are_untouched():
    model = tiny_model("vit")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrate_batchnorm(model, _dict_batches())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_bad_arguments():
    with pytest.raises(ValueError, match="`num_batches` should be positive, got 0"):
        recalibrate_batchnorm(tiny_model("resnet"), [], num_batches=0)
    with pytest.raises(ValueError, match="yielded no batches"):
        recalibrate_batchnorm(tiny_model("resnet"), [])

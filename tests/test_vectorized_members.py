"""Vectorised members (torch.func) train exactly like M separate trainings on the same batches.

Tolerance: float32, `atol=1e-5`, `rtol=1e-4` on every weight and buffer after a few steps. The vectorised run is the
same arithmetic as the separate runs but not in the same order: under `vmap` a convolution becomes one grouped
convolution over the M members and a linear layer a batched matmul, whose kernels sum the products in another order
(and BatchNorm reduces its statistics with another kernel). Each op then differs by a few float32 ulps (~1e-7
relative), which a few optimizer steps carry into the weights at the 1e-7..1e-6 level; 1e-5 leaves margin while still
catching any real mix-up between members (wrong slice, shared optimizer state or shared clipping: differences of
order lr x grad, 1e-3 and above here).
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hf_starsse  # noqa: E402, F401  (first: makes torchvision importable for transformers' vision models)

# isort: split
from hf_starsse.cyclic_schedule import get_cyclic_cosine_schedule  # noqa: E402
from hf_starsse.vectorized_members import (  # noqa: E402
    ELEMENTWISE_OPTIMIZERS,
    VectorizedMembers,
    iterate_member_batches,
    member_dataloaders,
)

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

ATOL, RTOL = 1e-5, 1e-4
NUM_MEMBERS = 3
NUM_STEPS = 4
SCHEDULE = {
    "num_first_steps": 6,
    "num_cycle_steps": NUM_STEPS,
    "num_cycles": 2,
    "cycle_lr_ratio": 2.0,
    "step_offset": 6,
}
OPTIMIZERS = {
    "sgd": {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
    "adamw": {"learning_rate": 1e-3, "weight_decay": 0.05},
}


class SmallCNN(nn.Module):
    """A plain torch CNN with BatchNorm, called with a positional tensor."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


class MLP(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.GELU(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.net(x)


def tiny_resnet() -> nn.Module:
    return ResNetForImageClassification(
        ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4)
    )


def tiny_vit() -> nn.Module:
    config = ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=4, attn_implementation="eager",
    )  # fmt: skip
    return ViTForImageClassification(config)


MODELS = {
    "cnn_bn": (SmallCNN, "tuple"),
    "mlp": (MLP, "tuple"),
    "hf_resnet_bn": (tiny_resnet, "dict"),
    "hf_vit": (tiny_vit, "dict"),
}


def make_batches(kind: str, num_steps: int, batch_size: int = 6, scales=None, seed: int = 0):
    """`num_steps` stacked batches `[M, B, ...]`, different data per member (and optionally a scale per member)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_steps):
        x = torch.randn(NUM_MEMBERS, batch_size, 3, 8, 8, generator=generator)
        if scales is not None:
            x = x * torch.tensor(scales).view(-1, 1, 1, 1, 1)
        y = torch.randint(0, 4, (NUM_MEMBERS, batch_size), generator=generator)
        batches.append({"pixel_values": x, "labels": y} if kind == "dict" else (x, y))
    return batches


def member_slice(batch, index: int):
    if isinstance(batch, dict):
        return batch["pixel_values"][index], batch["labels"][index]
    return batch[0][index], batch[1][index]


def logits_of(model, x, kind):
    return model(pixel_values=x).logits if kind == "dict" else model(x)


def train_separately(start_models, batches, kind, optimizer_name, max_grad_norm=None, schedule=None):
    """The reference: M ordinary trainings, one after another, each with its own optimizer (and scheduler)."""
    trained, all_norms = [], []
    for index, start in enumerate(start_models):
        model = copy.deepcopy(start).train()
        kwargs = dict(OPTIMIZERS[optimizer_name])
        lr = kwargs.pop("learning_rate")
        optimizer = ELEMENTWISE_OPTIMIZERS[optimizer_name](model.parameters(), lr=lr, **kwargs)
        scheduler = get_cyclic_cosine_schedule(optimizer, **schedule) if schedule else None
        norms = []
        for batch in batches:
            x, y = member_slice(batch, index)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(logits_of(model, x, kind), y)
            loss.backward()
            if max_grad_norm is not None:
                norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm))
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        trained.append(model)
        all_norms.append(norms)
    return trained, all_norms


def assert_same_state(vectorized_models, reference_models):
    for index, (got, expected) in enumerate(zip(vectorized_models, reference_models)):
        got_state, expected_state = got.state_dict(), expected.state_dict()
        assert got_state.keys() == expected_state.keys()
        for key in expected_state:
            torch.testing.assert_close(
                got_state[key], expected_state[key], atol=ATOL, rtol=RTOL, msg=f"member {index}, {key} differs"
            )


def start_models(factory, distinct: bool):
    torch.manual_seed(0)
    if not distinct:  # StarSSE: every member starts from member 0
        return [factory()] * NUM_MEMBERS
    return [factory() for _ in range(NUM_MEMBERS)]


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_vectorized_training_matches_separate_trainings(model_name, optimizer_name):
    factory, kind = MODELS[model_name]
    models = start_models(factory, distinct=model_name in ("mlp", "hf_resnet_bn"))
    batches = make_batches(kind, NUM_STEPS)

    members = VectorizedMembers(models)
    members.create_optimizer(optimizer_name, **OPTIMIZERS[optimizer_name])
    members.create_scheduler(**SCHEDULE)
    losses = members.fit(batches)
    vectorized = members.unstack()
    reference, _ = train_separately(models, batches, kind, optimizer_name, schedule=SCHEDULE)

    assert losses.shape == (NUM_STEPS, NUM_MEMBERS)
    assert_same_state(vectorized, reference)
    # the test is not vacuous: every member moved, and the members differ from each other
    for model, start in zip(vectorized, models):
        moved = max((p - q).abs().max().item() for p, q in zip(model.parameters(), start.parameters()))
        assert moved > 1e-3
    first, second = vectorized[0].state_dict(), vectorized[1].state_dict()
    assert any(not torch.allclose(first[k].float(), second[k].float(), atol=1e-4) for k in first)
    # BatchNorm: each member kept its own running statistics, and they were updated NUM_STEPS times
    for name, buffer in members.buffers.items():
        if name.endswith("num_batches_tracked"):
            assert buffer.tolist() == [NUM_STEPS] * NUM_MEMBERS
        if name.endswith("running_mean"):
            assert not torch.allclose(buffer[0], buffer[1])


@pytest.mark.parametrize("model_name", ["cnn_bn", "hf_vit"])
def test_gradient_clipping_stays_per_member(model_name):
    factory, kind = MODELS[model_name]
    models = start_models(factory, distinct=False)
    # members see inputs of very different scales, hence very different gradient norms
    batches = make_batches(kind, NUM_STEPS, scales=[0.1, 1.0, 30.0])
    # pick max_norm between the members' first-step gradient norms: some members are clipped, others not
    first = sorted(float(norms[0]) for norms in train_separately(models, batches[:1], kind, "sgd", 1e9)[1])
    max_norm = (first[0] + first[-1]) / 2

    members = VectorizedMembers(models)
    members.create_optimizer("sgd", **OPTIMIZERS["sgd"])
    step_norms = []
    for batch in batches:
        members.optimizer.zero_grad()
        members.compute_losses(batch).sum().backward()
        step_norms.append(members.clip_grad_norm_(max_norm))
        members.optimizer.step()
    reference, reference_norms = train_separately(models, batches, kind, "sgd", max_grad_norm=max_norm)

    assert_same_state(members.unstack(), reference)
    got = torch.stack(step_norms)  # [steps, M]
    expected = torch.tensor([[float(n) for n in norms] for norms in reference_norms]).T
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert (got[0] > max_norm).any() and (got[0] < max_norm).any()


def test_member_dataloaders_give_each_member_its_own_order():
    generator = torch.Generator().manual_seed(0)
    dataset = torch.utils.data.TensorDataset(torch.randn(24, 3, 8, 8, generator=generator), torch.arange(24) % 4)
    loaders = member_dataloaders(dataset, batch_size=6, seeds=[1, 2, 3])
    batches = list(iterate_member_batches(loaders))
    assert len(batches) == 4 and batches[0][0].shape == (NUM_MEMBERS, 6, 3, 8, 8)
    assert not torch.equal(batches[0][0][0], batches[0][0][1])
    # same seeds, same order: the vectorised run equals separate runs over each member's own loader
    models = start_models(SmallCNN, distinct=False)
    members = VectorizedMembers(models)
    members.create_optimizer("sgd", **OPTIMIZERS["sgd"])
    members.fit(iterate_member_batches(member_dataloaders(dataset, batch_size=6, seeds=[1, 2, 3])), max_grad_norm=1.0)
    reference, _ = train_separately(models, batches, "tuple", "sgd", max_grad_norm=1.0)
    assert_same_state(members.unstack(), reference)


def test_forward_in_eval_mode_and_unstack_save_pretrained(tmp_path):
    models = start_models(tiny_resnet, distinct=True)
    members = VectorizedMembers(models)
    members.create_optimizer("sgd", **OPTIMIZERS["sgd"])
    members.fit(make_batches("dict", 2))
    trained = members.unstack()
    members.eval()
    x = torch.randn(NUM_MEMBERS, 5, 3, 8, 8)
    logits = members({"pixel_values": x})
    for index, model in enumerate(trained):
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(logits[index], model(pixel_values=x[index]).logits, atol=ATOL, rtol=RTOL)
        model.save_pretrained(tmp_path / f"member-{index}")
        reloaded = ResNetForImageClassification.from_pretrained(tmp_path / f"member-{index}")
        for key, value in model.state_dict().items():
            torch.testing.assert_close(reloaded.state_dict()[key], value, atol=0, rtol=0)
    # a member's state dict (views of the stacked tensors) saves directly too
    trained[0].save_pretrained(tmp_path / "direct", state_dict=members.member_state_dict(1))
    reloaded = ResNetForImageClassification.from_pretrained(tmp_path / "direct")
    for key, value in trained[1].state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, atol=0, rtol=0)
    # unstacking into given models loads in place
    targets = [tiny_resnet() for _ in range(NUM_MEMBERS)]
    members.unstack(targets)
    torch.testing.assert_close(targets[2].classifier[1].weight, trained[2].classifier[1].weight, atol=0, rtol=0)


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="at least one model"):
        VectorizedMembers([])
    with pytest.raises(ValueError, match="different parameter names or shapes"):
        VectorizedMembers([SmallCNN(4), SmallCNN(5)])
    with pytest.raises(ValueError, match="num_members"):
        VectorizedMembers.from_model(SmallCNN(), num_members=0)
    members = VectorizedMembers.from_model(SmallCNN(), num_members=2)
    with pytest.raises(ValueError, match="elementwise"):
        members.create_optimizer("lamb")
    with pytest.raises(ValueError, match="create_optimizer"):
        members.training_step((torch.randn(2, 4, 3, 8, 8), torch.zeros(2, 4, dtype=torch.long)))
    members.create_optimizer("sgd", learning_rate=0.1)
    with pytest.raises(ValueError, match="leading dimension of 2"):
        members.training_step((torch.randn(3, 4, 3, 8, 8), torch.zeros(3, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match="`max_norm` should be positive"):
        members.clip_grad_norm_(0)


@pytest.mark.parametrize("randomness", ["different", "same"])
def test_dropout_masks_per_member(randomness):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.Dropout(0.5), nn.Linear(32, 4))
    members = VectorizedMembers.from_model(model, num_members=NUM_MEMBERS, randomness=randomness)
    members.create_optimizer("sgd", learning_rate=0.1)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    # every member gets the same batch: only the dropout masks can make them differ
    members.training_step((x.expand(NUM_MEMBERS, *x.shape), y.expand(NUM_MEMBERS, *y.shape)))
    weights = members.params["1.weight"]
    assert torch.equal(weights[0], weights[1]) == (randomness == "same")

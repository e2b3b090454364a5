"""Data order of every (member, epoch) of a run, on every training path: no two pairs may share an order (issue 14).

A data collator records the dataset indices (an `idx` column) of every batch; the orders of a member are cut into
epochs of the training set's length. With member data seeds `seed + i`, accelerate's sampler shuffled member i's
epoch e with `seed + i + e`, so member i + 1's epoch e - 1 replayed it; these tests failed on that code.
"""

from hf_starsse import EnsembleManifest, EnsembleTrainer, EnsembleTrainingArguments, member_dir
from hf_starsse.member_parallel import train_member_locally
from hf_starsse.methods import (
    CSGLDConfig,
    FGEConfig,
    SPROConfig,
    SWAGConfig,
    build_csgld,
    build_fge,
    build_spro,
    build_swag,
)
from hf_starsse.seeds import derive_seed, member_data_seed
from hf_starsse.vectorized_members import member_dataloaders

import hashlib

import pytest
import torch
from ensemble_fixtures import global_model_init, make_image_dataset, make_pretrained, model_init_for
from methods_fixtures import make_member0
from torch.utils.data import DataLoader, RandomSampler
from transformers import TrainerCallback, default_data_collator

N = 16  # training examples: 2 batches of 8 per epoch
STRATEGIES = ["local_de", "global_de", "sse", "star_sse"]


class OrderRecorder:
    """A data collator that records the `idx` of every example it batches, grouped by member."""

    def __init__(self):
        self.members: list[list[int]] = []

    def start_member(self) -> None:
        self.members.append([])

    def __call__(self, features):
        if not self.members:
            self.start_member()
        self.members[-1].extend(int(f.pop("idx")) for f in features)
        return default_data_collator(features)


class MemberStart(TrainerCallback):
    def __init__(self, recorder: OrderRecorder):
        self.recorder = recorder

    def on_train_begin(self, args, state, control, **kwargs):
        self.recorder.start_member()


def indexed_dataset(num_examples: int = N):
    data = make_image_dataset(num_examples)
    return data.add_column("idx", list(range(num_examples))).with_format("torch")


def epochs_of(indices: list[int], whole_only: bool = False) -> list[tuple[int, ...]]:
    """The recorded indices of one member (or trajectory) cut into epochs of `N` examples."""
    if not whole_only:
        assert len(indices) % N == 0, f"{len(indices)} examples is not a whole number of epochs"
    return [tuple(indices[i : i + N]) for i in range(0, len(indices) - N + 1, N)]


def assert_no_shared_order(orders: dict[tuple[int, int], tuple[int, ...]]) -> None:
    """Every (member, epoch) has an order of its own."""
    assert len(orders) >= 4
    first_seen: dict[tuple[int, ...], tuple[int, int]] = {}
    for key, order in orders.items():
        assert sorted(order) == list(range(N)), f"{key} is not one pass over the data"
        assert order not in first_seen, f"(member, epoch) {key} replays the order of {first_seen[order]}"
        first_seen[order] = key


def persistent_orders(data_seed: int, num_epochs: int, sampler_only: bool = False) -> list[tuple[int, ...]]:
    """Successive epochs of a loader whose one generator is seeded `data_seed` (persistent-generator paths): a
    `DataLoader(shuffle=True, generator=...)`, which also draws its workers' base seed from it, or a bare
    `RandomSampler(generator=...)` (`sampler_only`, the member-parallel loop)."""
    generator = torch.Generator().manual_seed(data_seed)
    if sampler_only:
        loader = DataLoader(range(N), batch_size=N, sampler=RandomSampler(range(N), generator=generator))
    else:
        loader = DataLoader(range(N), batch_size=N, shuffle=True, generator=generator)
    return [tuple(torch.cat(list(loader)).tolist()) for _ in range(num_epochs)]  # whole epochs, as training reads them


def _trainer(tmp_path, strategy: str, recorder: OrderRecorder, **kwargs) -> EnsembleTrainer:
    if strategy == "global_de":
        checkpoints = [make_pretrained(tmp_path / f"p{i}", "resnet", seed=i) for i in range(3)]
        kwargs["pretrained_checkpoints"] = checkpoints
        model_init = global_model_init
    else:
        model_init = model_init_for(make_pretrained(tmp_path / "pretrained", "resnet"))
    args = EnsembleTrainingArguments(
        output_dir=str(tmp_path / f"run-{strategy}"),
        ensemble_strategy=strategy,
        num_members=3,
        num_train_epochs=3,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        remove_unused_columns=False,  # keep `idx` for the recorder
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        use_cpu=True,
        **kwargs,
    )
    return EnsembleTrainer(
        model_init=model_init,
        args=args,
        train_dataset=indexed_dataset(),
        data_collator=recorder,
        callbacks=[MemberStart(recorder)],
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_trainer_loop_gives_every_member_epoch_its_own_order(tmp_path, strategy):
    recorder = OrderRecorder()
    output = _trainer(tmp_path, strategy, recorder).train()
    manifest = EnsembleManifest.load(output.run_dir)
    assert len(recorder.members) == 3
    orders = {
        (record.index, e): order
        for record, seen in zip(manifest.members, recorder.members)
        for e, order in enumerate(epochs_of(seen))
    }
    assert len(orders) == 9  # 3 members x 3 epochs (cycles as long as the first fine-tuning)
    assert_no_shared_order(orders)
    for record in manifest.members:  # the recorded data seed is the one used: epoch e is shuffled with seed + e
        assert record.data_seed == member_data_seed(record.seed, record.index)
        for e in range(3):
            generator = torch.Generator().manual_seed(record.data_seed + e)
            assert orders[(record.index, e)] == tuple(torch.randperm(N, generator=generator).tolist())


@pytest.mark.parametrize("strategy", ["local_de", "global_de", "star_sse"])
def test_member_parallel_loop_gives_every_member_epoch_its_own_order(tmp_path, strategy):
    """The loop each process runs for its own members (`train_member_locally`), here all in one process."""
    recorder = OrderRecorder()
    trainer = _trainer(tmp_path, strategy, recorder, member_parallel=True)
    plans = [plan for plan in trainer.plan() if trainer._is_independent(plan)]
    for plan in plans:
        recorder.start_member()
        train_member_locally(trainer, trainer.model, plan, trainer._schedule)
    orders = {}
    for plan, seen in zip(plans, recorder.members, strict=True):
        epochs = epochs_of(seen)
        assert len(epochs) == 3 and epochs == persistent_orders(plan.data_seed, 3, sampler_only=True)
        orders.update({(plan.index, e): order for e, order in enumerate(epochs)})
    assert_no_shared_order(orders)


def test_vectorized_member_dataloaders_give_every_member_epoch_its_own_order(tmp_path):
    seeds = EnsembleTrainingArguments(output_dir=str(tmp_path), num_members=3, seed=42).seeds
    recorder = OrderRecorder()
    loaders = member_dataloaders(indexed_dataset(), batch_size=8, seeds=seeds, drop_last=False, collate_fn=recorder)
    for loader in loaders:  # each loader has its own generator: reading them one after the other changes nothing
        recorder.start_member()
        for _ in range(3):
            list(loader)
    orders = {}
    for index, (seed, seen) in enumerate(zip(seeds, recorder.members, strict=True)):
        epochs = epochs_of(seen)
        assert epochs == persistent_orders(member_data_seed(seed, index), 3)
        orders.update({(index, e): order for e, order in enumerate(epochs)})
    assert_no_shared_order(orders)


POSTHOC = {
    "fge": (build_fge, lambda: FGEConfig(num_members=4, cycle_steps=4, batch_size=8)),
    "swag": (build_swag, lambda: SWAGConfig(num_members=2, num_snapshots=4, collect_every_steps=2, batch_size=8)),
    "csgld": (build_csgld, lambda: CSGLDConfig(num_members=2, cycle_steps=4, exploration_fraction=0.5, batch_size=8)),
    "spro": (build_spro, lambda: SPROConfig(num_members=2, num_vertices=3, vertex_steps=4, batch_size=8)),
}


@pytest.mark.parametrize("method", sorted(POSTHOC))
def test_posthoc_builders_give_every_epoch_its_own_order(tmp_path, method):
    """A post-hoc run is one trajectory from member 0; its members are points along it, so its epochs must differ."""
    build, make_config = POSTHOC[method]
    recorder, config = OrderRecorder(), make_config()
    out = build(make_member0(tmp_path, "vit"), indexed_dataset(), tmp_path / "run", config, data_collator=recorder)
    data_seed = member_data_seed(config.seed, 0)
    assert {record.data_seed for record in out.manifest.members} == {data_seed}
    epochs = epochs_of(recorder.members[0], whole_only=True)
    assert len(epochs) >= 4 and epochs == persistent_orders(data_seed, len(epochs))
    assert_no_shared_order({(0, e): order for e, order in enumerate(epochs)})


def test_derived_seeds_are_spread_apart():
    """Neighbouring seeds / indices give unrelated 32-bit seeds, far more than any run's epochs apart."""
    seeds = sorted(member_data_seed(42 + i, i) for i in range(100))
    assert all(0 <= s < 2**32 for s in seeds) and len(set(seeds)) == 100
    assert min(b - a for a, b in zip(seeds, seeds[1:])) > 10_000
    assert member_data_seed(42, 1) != member_data_seed(43, 0) and member_data_seed(7, 0) != member_data_seed(7, 1)
    assert derive_seed(42, "noise") != derive_seed(42, "data", 0) and derive_seed(42, "x") == derive_seed(42, "x")


@pytest.mark.parametrize("strategy", ["local_de", "star_sse"])
def test_same_command_twice_gives_bit_identical_members(tmp_path, strategy):
    runs = []
    for attempt in ("a", "b"):
        output = _trainer(tmp_path / attempt, strategy, OrderRecorder()).train()
        manifest = EnsembleManifest.load(output.run_dir)
        weights = [(member_dir(output.run_dir, m.index) / "model.safetensors").read_bytes() for m in manifest.members]
        runs.append(([hashlib.sha256(w).hexdigest() for w in weights], [m.data_seed for m in manifest.members]))
    assert runs[0] == runs[1]
    assert len(set(runs[0][0])) == 3  # and the members differ from each other

"""EnsembleTrainer semantics (arXiv 2303.03374): who starts from what, seeds, the LR schedule, optimizer resets."""

from hf_starsse import EnsembleManifest, EnsembleTrainer, EnsembleTrainingArguments, member_dir
from hf_starsse.cyclic_schedule import _get_cyclic_cosine_lr_lambda

import hashlib
import json
import math

import pytest
import torch
from ensemble_fixtures import _load, global_model_init, make_image_dataset, make_pretrained, model_init_for
from transformers import AutoModelForImageClassification, TrainerCallback

LR = 0.05


class Recorder(TrainerCallback):
    """Records, per member phase: the starting weights, the optimizer state size and the LR of every step."""

    def __init__(self):
        self.phases = []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.phases.append(
            {
                "start": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "optimizer_state_size": len(optimizer.state),
                "lrs": [],
            }
        )

    def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self.phases[-1]["lrs"].append(lr_scheduler.get_last_lr()[0])


def _args(tmp_path, strategy, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / f"run-{strategy}"),
        ensemble_strategy=strategy,
        num_members=3,
        num_train_epochs=2,
        per_device_train_batch_size=8,
        learning_rate=LR,
        optim="sgd",
        optim_args="momentum=0.9",
        max_grad_norm=0.0,
        cycle_lr_ratio=2.0,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        use_cpu=True,
    )
    defaults.update(kwargs)
    return EnsembleTrainingArguments(**defaults)


def _train(tmp_path, strategy, family="resnet", model_init=None, **kwargs):
    base = make_pretrained(tmp_path / f"pretrained-{family}", family)
    recorder = Recorder()
    trainer = EnsembleTrainer(
        model_init=model_init or model_init_for(base),
        args=_args(tmp_path, strategy, **kwargs),
        train_dataset=make_image_dataset(32),
        eval_dataset=make_image_dataset(16, seed=1),
        callbacks=[recorder],
    )
    output = trainer.train()
    return trainer, output, recorder, base


def _saved(run_dir, i):
    return AutoModelForImageClassification.from_pretrained(member_dir(run_dir, i)).state_dict()


def _equal(a, b, skip=()):
    return all(torch.equal(a[k], b[k]) for k in a if not any(s in k for s in skip))


def _is_float(t):
    return t.is_floating_point()


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_star_sse_members_start_from_member0_and_end_different(tmp_path, family):
    trainer, output, recorder, _ = _train(tmp_path, "star_sse", family)
    run = output.run_dir
    assert output.trained == [0, 1, 2]
    member0 = _saved(run, 0)
    for i in (1, 2):  # exactly member 0's final weights, classifier head included
        start = recorder.phases[i]["start"]
        assert set(start) == set(member0)
        assert all(torch.equal(start[k], member0[k]) for k in member0)
    finals = [_saved(run, i) for i in range(3)]
    for i in range(3):
        for j in range(i + 1, 3):
            diff = max(
                (finals[i][k].float() - finals[j][k].float()).abs().max().item()
                for k in member0
                if _is_float(member0[k])
            )
            assert diff > 1e-4, f"members {i} and {j} are identical"
    manifest = EnsembleManifest.load(run)
    assert [m.parent for m in manifest.members] == [None, 0, 0]
    assert [m.seed for m in manifest.members] == [42, 43, 44]
    assert [m.learning_rate for m in manifest.members] == pytest.approx([LR, 2 * LR, 2 * LR])


def test_sse_member_starts_from_previous_member(tmp_path):
    _, output, recorder, _ = _train(tmp_path, "sse")
    for i in (1, 2):
        previous = _saved(output.run_dir, i - 1)
        assert _equal(recorder.phases[i]["start"], previous)
    assert [m.parent for m in EnsembleManifest.load(output.run_dir).members] == [None, 0, 1]
    assert [m.schedule_offset for m in EnsembleManifest.load(output.run_dir).members] == [0, 8, 16]


def test_local_de_members_share_pretrained_body_but_heads_differ_by_seed(tmp_path):
    _, output, recorder, base = _train(tmp_path, "local_de")
    pretrained = AutoModelForImageClassification.from_pretrained(base).state_dict()
    starts = [p["start"] for p in recorder.phases]
    body = [k for k in starts[0] if not k.startswith("classifier")]
    head = [k for k in starts[0] if k.startswith("classifier") and _is_float(starts[0][k])]
    assert body and head
    for start in starts:
        assert all(torch.equal(start[k], pretrained[k]) for k in body)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(starts[i][head[0]], starts[j][head[0]])
    assert [m.parent for m in EnsembleManifest.load(output.run_dir).members] == [None, None, None]


def test_local_de_head_init_is_reproducible_by_seed(tmp_path):
    _, _, first, _ = _train(tmp_path / "a", "local_de", num_members=2)
    _, _, second, _ = _train(tmp_path / "b", "local_de", num_members=2, member_seeds=[43, 7])
    head = [k for k in first.phases[0]["start"] if k.startswith("classifier")][0]
    assert torch.equal(first.phases[1]["start"][head], second.phases[0]["start"][head])  # both seed 43


def test_global_de_member_i_starts_from_checkpoint_i(tmp_path):
    checkpoints = [make_pretrained(tmp_path / f"p{i}", "resnet", seed=i) for i in range(2)]
    _, output, recorder, _ = _train(
        tmp_path, "global_de", model_init=global_model_init, num_members=2, pretrained_checkpoints=checkpoints
    )
    for i, checkpoint in enumerate(checkpoints):
        pretrained = AutoModelForImageClassification.from_pretrained(checkpoint).state_dict()
        assert _equal(recorder.phases[i]["start"], pretrained, skip=("classifier",))
    assert EnsembleManifest.load(output.run_dir).base_models == checkpoints


def test_lr_of_every_step_follows_the_closed_form(tmp_path):
    trainer, output, recorder, _ = _train(tmp_path, "sse", cycle_warmup_steps=2)
    manifest = EnsembleManifest.load(output.run_dir)
    schedule = trainer._schedule
    assert (schedule.num_first_steps, schedule.num_cycle_steps, schedule.num_cycles) == (8, 8, 2)
    for member, phase in zip(manifest.members, recorder.phases):
        expected = [
            LR
            * _get_cyclic_cosine_lr_lambda(
                s,
                num_first_steps=8,
                num_cycle_steps=8,
                num_cycles=2,
                cycle_lr_ratio=2.0,
                num_cycle_warmup_steps=2,
                step_offset=member.schedule_offset,
            )
            for s in range(member.num_steps)
        ]
        assert phase["lrs"] == pytest.approx(expected)
    # handful of points by hand: member 0 starts at LR, the cycles warm up to 2 * LR then decay
    assert recorder.phases[0]["lrs"][0] == pytest.approx(LR)
    assert recorder.phases[1]["lrs"][:3] == pytest.approx([2 * LR / 3, 4 * LR / 3, 2 * LR])
    assert recorder.phases[2]["lrs"][-1] == pytest.approx(2 * LR * 0.5 * (1 + math.cos(math.pi * 5 / 6)))


def test_optimizer_momentum_is_empty_at_each_cycle_start(tmp_path):
    _, _, recorder, _ = _train(tmp_path, "sse")
    assert [p["optimizer_state_size"] for p in recorder.phases] == [0, 0, 0]


def test_optimizer_state_carries_over_when_not_reset(tmp_path):
    _, _, recorder, _ = _train(tmp_path, "sse", reset_optimizer_each_cycle=False)
    sizes = [p["optimizer_state_size"] for p in recorder.phases]
    assert sizes[0] == 0 and sizes[1] > 0 and sizes[2] > 0


def test_members_are_save_pretrained_folders_with_their_facts(tmp_path):
    _, output, _, _ = _train(tmp_path, "star_sse", num_members=2)
    folder = member_dir(output.run_dir, 1)
    assert {"config.json", "model.safetensors", "member.json"} <= {p.name for p in folder.iterdir()}
    info = json.loads((folder / "member.json").read_text())
    assert info["parent"] == 0 and info["seed"] == 43 and info["learning_rate"] == pytest.approx(2 * LR)
    assert "eval_loss" in info["metrics"] and "train_loss" in info["metrics"]
    assert not list(folder.parent.glob(".*"))  # no temporary leftovers
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in folder.rglob("*"))  # safetensors only


def test_first_member_is_taken_as_given_and_cycles_start_from_it(tmp_path):
    from hf_starsse.run_folder import RunFolder

    from safetensors.torch import load_file

    base = make_pretrained(tmp_path / "pretrained-resnet", "resnet")
    given = _load(base)  # an "already fine-tuned" member 0: the pre-trained model with a 4-way head, perturbed
    with torch.no_grad():
        for p in given.parameters():
            p.add_(0.01)
    given.save_pretrained(tmp_path / "given")
    source_bytes = (tmp_path / "given" / "model.safetensors").read_bytes()
    for strategy in ("star_sse", "sse"):
        recorder = Recorder()
        args = _args(tmp_path, strategy, first_member=str(tmp_path / "given"))
        trainer = EnsembleTrainer(
            model_init=model_init_for(base), args=args, train_dataset=make_image_dataset(), callbacks=[recorder]
        )
        output = trainer.train()
        run = RunFolder(args.output_dir)
        assert output.adopted == [0] and output.trained == [1, 2]
        assert len(recorder.phases) == 2  # member 0 was not trained
        assert (run.member_dir(0) / "model.safetensors").read_bytes() == source_bytes  # copied, byte-identical
        expected = load_file(str(tmp_path / "given" / "model.safetensors"))
        first_cycle = recorder.phases[0]["start"]
        assert all(torch.equal(first_cycle[k], v) for k, v in expected.items())  # member 1 starts from the given
        if strategy == "star_sse":
            assert all(torch.equal(recorder.phases[1]["start"][k], v) for k, v in expected.items())
        member1 = load_file(str(run.member_dir(1) / "model.safetensors"))
        assert not torch.equal(member1["classifier.1.weight"], expected["classifier.1.weight"])  # cycles trained
        manifest = EnsembleManifest.load(args.output_dir)
        record = manifest.members[0]
        assert record.adopted_from["source"] == str(tmp_path / "given") and record.num_steps == 0
        assert record.adopted_from["sha256"] == hashlib.sha256(source_bytes).hexdigest()
        assert manifest.hyperparameters["first_member"] == str(tmp_path / "given")
    with pytest.raises(ValueError, match="`first_member` is only used by `ensemble_strategy` sse / star_sse"):
        _args(tmp_path, "local_de", first_member=str(tmp_path / "given"))

"""Training faults: divergence (stop / skip), bad argument types, the cyclic schedule's refusal of
`lr_scheduler_type`, empty training sets, the BatchNorm tail-batch warning and the optimizer's decay groups."""

from hf_starsse import EnsembleManifest, EnsembleTrainer, EnsembleTrainingArguments, member_dir
from hf_starsse.divergence import MemberDivergedError
from hf_starsse.ensemble import Ensemble

import json
import logging
import re

import pytest
import torch
from ensemble_fixtures import file_digests, make_image_dataset, make_pretrained, model_init_for

COMMON = dict(report_to="none", save_strategy="no", disable_tqdm=True, logging_strategy="no", use_cpu=True)
DIVERGED = re.compile(
    r"member (\d) diverged at step (\d+)/4 \(learning rate \S+\): its training loss is nan; nothing was saved for "
    r"it\. Lower the cycle learning rate \(`cycle_lr_ratio` / `cycle_learning_rate`\), or set "
    r"`on_divergence='skip'` to record it and go on\."
)


def _args(tmp_path, **kwargs):
    base = dict(
        output_dir=str(tmp_path / "run"),
        num_members=3,
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=0.01,
        optim="sgd",
        max_grad_norm=0.0,
        evaluate_members=False,
        **COMMON,
    )
    return EnsembleTrainingArguments(**{**base, **kwargs})


def _trainer(tmp_path, **kwargs):
    checkpoint = make_pretrained(tmp_path / "pretrained", "resnet")
    return EnsembleTrainer(
        model_init=model_init_for(checkpoint), args=_args(tmp_path, **kwargs), train_dataset=make_image_dataset(32)
    )


def test_divergence_stops_the_run_naming_member_step_and_lr(tmp_path):
    trainer = _trainer(tmp_path, ensemble_strategy="star_sse", cycle_learning_rate=1e38)
    with pytest.raises(MemberDivergedError) as info:
        trainer.train()
    message = str(info.value)
    assert "\n" not in message and DIVERGED.fullmatch(message), message
    assert DIVERGED.fullmatch(message).group(1) == "1"
    run = tmp_path / "run"
    assert [m.index for m in EnsembleManifest.load(run).members] == [0]  # member 0 kept, nothing for member 1
    assert not member_dir(run, 1).exists()
    before = file_digests(member_dir(run, 0))
    with pytest.raises(MemberDivergedError):  # the same command again: member 0 untouched, member 1 diverges again
        _trainer(tmp_path, ensemble_strategy="star_sse", cycle_learning_rate=1e38).train()
    assert file_digests(member_dir(run, 0)) == before


def test_divergence_skip_records_members_without_weights_and_ensembles_leave_them_out(tmp_path, caplog):
    trainer = _trainer(tmp_path, ensemble_strategy="local_de", learning_rate=1e38, on_divergence="skip", num_members=2)
    output = trainer.train()
    run = tmp_path / "run"
    records = EnsembleManifest.load(run).members
    assert output.trained == [0, 1] and all(r.diverged for r in records)
    assert records[0].diverged["reason"] == "its training loss is nan" and records[0].diverged["step"] >= 1
    assert sorted(p.name for p in member_dir(run, 1).iterdir()) == ["member.json"]  # no weights
    info = json.loads((member_dir(run, 1) / "member.json").read_text())
    assert info["diverged"]["learning_rate"] > 1e37
    with pytest.raises(ValueError, match=r"lists no finished \(non-diverged\) members"):
        Ensemble.from_run(run, device="cpu")
    assert "member 0 diverged during training (step" in caplog.text


def test_star_sse_members_after_a_diverged_member_0_fail_clearly(tmp_path):
    trainer = _trainer(tmp_path, ensemble_strategy="star_sse", learning_rate=1e38, on_divergence="skip")
    with pytest.raises(ValueError) as info:
        trainer.train()
    assert str(info.value) == (
        "member 1 would start from member 0, which diverged (step "
        f"{EnsembleManifest.load(tmp_path / 'run').members[0].diverged['step']}, learning rate "
        f"{EnsembleManifest.load(tmp_path / 'run').members[0].diverged['learning_rate']}) and has no weights: the "
        "star_sse run cannot go on; start a new run (another `output_dir`) with a lower learning rate."
    )
    assert [m.index for m in EnsembleManifest.load(tmp_path / "run").members] == [0]


def test_sse_skip_keeps_member_0_and_refuses_the_cycle_after_a_diverged_one(tmp_path, caplog):
    trainer = _trainer(tmp_path, ensemble_strategy="sse", cycle_learning_rate=1e38, on_divergence="skip")
    with pytest.raises(ValueError, match="^member 2 would start from member 1, which diverged"):
        trainer.train()
    run = tmp_path / "run"
    records = EnsembleManifest.load(run).members
    assert [(m.index, bool(m.diverged)) for m in records] == [(0, False), (1, True)]
    ensemble = Ensemble.from_run(run, device="cpu")  # member 1 left out, with a warning
    assert ensemble.names == ["member-0"]
    assert "member 1 diverged during training" in caplog.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_members=True), "`num_members` should be a positive integer, got True."),
        (dict(num_members=2.0), "`num_members` should be a positive integer, got 2.0."),
        (dict(on_divergence="ignore"), "`on_divergence` should be one of stop, skip, got 'ignore'."),
        (
            dict(weight_decay_on_norm_and_bias="yes"),
            "`weight_decay_on_norm_and_bias` should be True or False, got 'yes'.",
        ),
        (dict(cycle_steps=True), "`cycle_steps` should be an integer, got True."),
        (dict(member_seeds=[0, 1.5, 2, 3, 4]), "`member_seeds` should be integers, got [0, 1.5, 2, 3, 4]."),
        (
            dict(lr_scheduler_type="constant"),
            "`lr_scheduler_type` is not used by an ensemble run, got 'constant': the cyclic cosine schedule (first "
            "fine-tuning, then one cycle per member) is the method; set `warmup_steps` and the `cycle_*` fields "
            "instead.",
        ),
    ],
)
def test_bad_argument_types_are_refused_in_one_line(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as info:
        EnsembleTrainingArguments(output_dir=str(tmp_path / "run"), **{**COMMON, **kwargs})
    assert str(info.value) == message
    assert not (tmp_path / "run").exists()


def test_empty_in_memory_training_set_is_one_line(tmp_path):
    trainer = _trainer(tmp_path, ensemble_strategy="local_de")
    trainer.train_dataset = make_image_dataset(8).select([])
    with pytest.raises(ValueError) as info:
        trainer.train()
    assert str(info.value) == "`train_dataset` is empty (0 examples): nothing to train the members on."
    assert not (tmp_path / "run" / "ensemble.json").exists()


@pytest.mark.parametrize(
    "family, num_examples, drop_last, warns",
    [
        ("resnet", 20, False, True),
        ("resnet", 20, True, False),
        ("resnet", 24, False, False),
        ("vit", 20, False, False),
    ],
)
def test_batchnorm_tail_batch_warning(tmp_path, caplog, family, num_examples, drop_last, warns):
    checkpoint = make_pretrained(tmp_path / "pretrained", family)
    args = _args(tmp_path, ensemble_strategy="local_de", num_members=1, max_steps=1, dataloader_drop_last=drop_last)
    trainer = EnsembleTrainer(
        model_init=model_init_for(checkpoint), args=args, train_dataset=make_image_dataset(num_examples)
    )
    with caplog.at_level(logging.WARNING, logger="hf_starsse"):
        trainer.train()
    expected = (
        "The last training batch of every epoch holds 4 sample(s) per process (20 examples, batch 8) and the model "
        "has BatchNorm: in train mode it normalises over those 4 samples and their statistics enter the running "
        "averages; set `dataloader_drop_last=True` (or a batch size that divides the training set)."
    )
    assert (expected in caplog.messages) == warns


@pytest.mark.parametrize("decay_all", [True, False])
def test_weight_decay_on_norm_and_bias_decays_every_parameter(tmp_path, decay_all):
    trainer = _trainer(
        tmp_path, ensemble_strategy="local_de", weight_decay=0.1, weight_decay_on_norm_and_bias=decay_all
    )
    optimizer = trainer.create_optimizer()
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    names = {n for n, p in trainer.model.named_parameters() if id(p) not in decayed}
    if decay_all:
        assert names == set()  # like torch.optim.SGD(model.parameters(), weight_decay=0.1)
    else:
        assert names and all(n.endswith("bias") for n in names)  # the Trainer's grouping: biases not decayed
    hparams = trainer.args.ensemble_hyperparameters()
    assert hparams["weight_decay_on_norm_and_bias"] is decay_all and hparams["max_grad_norm"] == 0.0


def test_weights_check_catches_nonfinite_buffers_before_saving(tmp_path):
    trainer = _trainer(tmp_path, ensemble_strategy="local_de", num_members=1)
    original = trainer.training_step

    def poison(model, inputs, num_items_in_batch=None):  # BatchNorm running mean goes infinite, the loss stays finite
        loss = original(model, inputs, num_items_in_batch)
        with torch.no_grad():
            trainer.model.resnet.embedder.embedder.normalization.running_var.fill_(float("inf"))
        return loss

    trainer.training_step = poison
    with pytest.raises(MemberDivergedError) as info:
        trainer.train()
    assert str(info.value) == (
        "member 0 diverged at step 4/4 (learning rate 0.01): 1 of "
        f"{len(trainer.model.state_dict())} weight tensors are not finite when it ends (e.g. "
        "`resnet.embedder.embedder.normalization.running_var`); nothing was saved for it. Lower `learning_rate`, or "
        "set `on_divergence='skip'` to record it and go on."
    )
    assert not member_dir(tmp_path / "run", 0).exists()

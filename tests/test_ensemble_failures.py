"""Bad arguments fail before training naming the field; failures and interruptions never lose finished members."""

from hf_starsse import EnsembleManifest, EnsembleTrainer, EnsembleTrainingArguments

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ensemble_fixtures import file_digests, global_model_init, make_image_dataset, make_pretrained, model_init_for
from transformers import TrainerCallback

COMMON = dict(report_to="none", save_strategy="no", disable_tqdm=True, logging_strategy="no", use_cpu=True)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(ensemble_strategy="deep_ensemble"), "ensemble_strategy"),
        (dict(num_members=0), "num_members"),
        (dict(cycle_steps=0), "cycle_steps"),
        (dict(cycle_epochs=-1.0), "cycle_epochs"),
        (dict(cycle_epoch_ratio=0.0), "cycle_epoch_ratio"),
        (dict(cycle_learning_rate=0.0), "cycle_learning_rate"),
        (dict(cycle_lr_ratio=-2.0), "cycle_lr_ratio"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(cycle_steps=5, cycle_epochs=1.0), "cycle_epochs"),
        (dict(member_seeds=[1, 2]), "member_seeds"),
        (
            dict(ensemble_strategy="global_de", num_members=3, pretrained_checkpoints=["a", "b"]),
            "pretrained_checkpoints",
        ),
        (dict(ensemble_strategy="global_de", num_members=2), "pretrained_checkpoints"),
        (dict(ensemble_strategy="sse", pretrained_checkpoints=["a"] * 5), "pretrained_checkpoints"),
    ],
)
def test_bad_arguments_name_the_field(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        EnsembleTrainingArguments(output_dir=str(tmp_path / "run"), **{**COMMON, **kwargs})
    assert not (tmp_path / "run").exists()


def test_global_de_checkpoints_of_different_architectures_fail_before_training(tmp_path):
    checkpoints = [make_pretrained(tmp_path / "resnet", "resnet"), make_pretrained(tmp_path / "vit", "vit")]
    args = EnsembleTrainingArguments(
        output_dir=str(tmp_path / "run"),
        ensemble_strategy="global_de",
        num_members=2,
        pretrained_checkpoints=checkpoints,
        **COMMON,
    )
    with pytest.raises(ValueError, match="`pretrained_checkpoints` should share one architecture"):
        EnsembleTrainer(model_init=global_model_init, args=args, train_dataset=make_image_dataset(8))
    assert not (tmp_path / "run").exists()


def test_local_de_without_model_init_is_refused(tmp_path):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(make_pretrained(tmp_path / "p"))
    args = EnsembleTrainingArguments(output_dir=str(tmp_path / "run"), ensemble_strategy="local_de", **COMMON)
    with pytest.raises(ValueError, match="`model_init` is required"):
        EnsembleTrainer(model=model, args=args, train_dataset=make_image_dataset(8))


class FailAtMember(TrainerCallback):
    def __init__(self, member):
        self.member, self.calls = member, 0

    def on_step_end(self, args, state, control, **kwargs):
        if self.calls == self.member and state.global_step == 2:
            raise RuntimeError(f"boom in member {self.member}")

    def on_train_end(self, args, state, control, **kwargs):
        self.calls += 1


def _star_args(run_dir, **kwargs):
    settings = dict(ensemble_strategy="star_sse", num_members=4, num_train_epochs=1, per_device_train_batch_size=8)
    return EnsembleTrainingArguments(output_dir=str(run_dir), learning_rate=0.05, **{**COMMON, **settings, **kwargs})


def test_failure_in_member_j_keeps_members_before_j(tmp_path):
    base = make_pretrained(tmp_path / "p")
    run = tmp_path / "run"
    trainer = EnsembleTrainer(
        model_init=model_init_for(base),
        args=_star_args(run),
        train_dataset=make_image_dataset(32),
        callbacks=[FailAtMember(2)],
    )
    with pytest.raises(RuntimeError, match="boom in member 2"):
        trainer.train()
    assert sorted(p.name for p in (run / "members").iterdir()) == ["member-0", "member-1"]  # no partial member-2
    assert [m.index for m in EnsembleManifest.load(run).members] == [0, 1]
    before = file_digests(run / "members")
    # the same command again trains only members 2 and 3 and leaves 0 and 1 untouched
    trainer = EnsembleTrainer(
        model_init=model_init_for(base), args=_star_args(run), train_dataset=make_image_dataset(32)
    )
    output = trainer.train()
    assert output.skipped == [0, 1] and output.trained == [2, 3]
    after = file_digests(run / "members")
    assert {k: v for k, v in after.items() if k.split("/")[0] in ("member-0", "member-1")} == before


def test_resume_with_other_settings_is_refused(tmp_path):
    base = make_pretrained(tmp_path / "p")
    run = tmp_path / "run"
    EnsembleTrainer(
        model_init=model_init_for(base), args=_star_args(run, num_members=2), train_dataset=make_image_dataset(16)
    ).train()
    trainer = EnsembleTrainer(
        model_init=model_init_for(base),
        args=_star_args(run, num_members=2, cycle_lr_ratio=4.0),
        train_dataset=make_image_dataset(16),
    )
    with pytest.raises(ValueError, match="`cycle_lr_ratio`"):
        trainer.train()


RUN_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, {tests!r})
    import hf_starsse  # first: makes torchvision importable on CPU-only torch
    from ensemble_fixtures import make_image_dataset, model_init_for
    from transformers import TrainerCallback
    from hf_starsse import EnsembleTrainer, EnsembleTrainingArguments

    class KillDuringMember(TrainerCallback):  # a hard kill (SIGKILL) half-way through member `kill_at`
        def __init__(self, kill_at):
            self.kill_at, self.phase = kill_at, 0
        def on_step_end(self, args, state, control, **kwargs):
            if self.phase == self.kill_at and state.global_step == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        def on_train_end(self, args, state, control, **kwargs):
            self.phase += 1

    base, run, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = EnsembleTrainingArguments(
        output_dir=run, ensemble_strategy="star_sse", num_members=5, num_train_epochs=1, per_device_train_batch_size=8,
        learning_rate=0.05, report_to="none", save_strategy="no", disable_tqdm=True, logging_strategy="no",
        use_cpu=True)
    callbacks = [KillDuringMember(kill_at)] if kill_at >= 0 else []
    out = EnsembleTrainer(model_init=model_init_for(base), args=args, train_dataset=make_image_dataset(32),
                          callbacks=callbacks).train()
    print("RESULT " + json.dumps({{"trained": out.trained, "skipped": out.skipped}}))
    """
)


def test_interrupted_star_sse_run_resumes_with_the_same_command(tmp_path):
    tests_dir = str(Path(__file__).parent)
    script = tmp_path / "train.py"
    script.write_text(RUN_SCRIPT.format(tests=tests_dir))
    base = make_pretrained(tmp_path / "p")
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(
        [sys.executable, str(script), base, str(run), "3"], env=env, capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-2000:]  # killed while member 3 trained
    assert sorted(p.name for p in (run / "members").iterdir() if not p.name.startswith(".")) == [
        "member-0",
        "member-1",
        "member-2",
    ]
    before = file_digests(run / "members")
    resumed = subprocess.run(
        [sys.executable, str(script), base, str(run), "-1"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = json.loads(resumed.stdout.split("RESULT ")[1])
    assert result == {"trained": [3, 4], "skipped": [0, 1, 2]}
    after = file_digests(run / "members")
    kept = {k: v for k, v in after.items() if k.split("/")[0] in ("member-0", "member-1", "member-2")}
    assert kept == before  # same bytes, same modification times: not rewritten
    assert not [p for p in (run / "members").iterdir() if p.name.startswith(".")]  # the killed member's temp is gone
    assert [m.parent for m in EnsembleManifest.load(run).members] == [None, 0, 0, 0, 0]

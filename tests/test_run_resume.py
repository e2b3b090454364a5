"""Resuming a run: refused before training with another base model, data or labels (naming the field); member folders
the index does not list are adopted only when they match the plan; `member_indices` trains only members whose
dependencies are finished; recovery never removes a live writer's temporaries."""

import hf_starsse  # noqa: F401, I001  (first)
from hf_starsse import EnsembleTrainer, EnsembleTrainingArguments
from hf_starsse.run_folder import RunFolder, owner_tag

import json
import shutil
import subprocess
import sys
from functools import partial

import pytest
from ensemble_fixtures import make_image_dataset, make_pretrained, model_init_for
from transformers import AutoModelForImageClassification, TrainerCallback

COMMON = dict(report_to="none", save_strategy="no", disable_tqdm=True, logging_strategy="no", use_cpu=True)


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def _args(run_dir, strategy="local_de", **kwargs):
    settings = dict(num_members=2, num_train_epochs=1, per_device_train_batch_size=8, learning_rate=0.05)
    return EnsembleTrainingArguments(
        output_dir=str(run_dir), ensemble_strategy=strategy, **{**COMMON, **settings, **kwargs}
    )


def _train(run_dir, base, data=None, model_init=None, **kwargs):
    counter = CountSteps()
    trainer = EnsembleTrainer(
        model_init=model_init or model_init_for(base),
        args=_args(run_dir, **kwargs),
        train_dataset=data if data is not None else make_image_dataset(16),
        callbacks=[counter],
    )
    return trainer.train(), counter


def _load_with_labels(checkpoint, names):
    return AutoModelForImageClassification.from_pretrained(
        checkpoint,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        ignore_mismatched_sizes=True,
    )


@pytest.fixture()
def partial_run(tmp_path):
    """A Local DE run of 2 members of which member 0 is finished."""
    base = make_pretrained(tmp_path / "base")
    output, _ = _train(tmp_path / "run", base, member_indices=[0])
    assert output.trained == [0]
    return tmp_path, base


def _refused(run_dir, match, **kwargs):
    with pytest.raises(ValueError, match=match) as err:
        _train(run_dir, **kwargs)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in (run_dir / "members").iterdir()) == ["member-0"]
    assert not RunFolder(run_dir).member_lock_path(1).exists()  # refused before member 1 started training
    return str(err.value)


def test_resume_with_another_base_model_is_refused(partial_run):
    tmp_path, _ = partial_run
    other = make_pretrained(tmp_path / "other", seed=1)
    message = _refused(tmp_path / "run", "`model_name_or_path`", base=other)
    assert "`base_model.sha256`" in message


def test_resume_with_the_same_weights_in_another_folder_is_accepted(partial_run):
    tmp_path, base = partial_run
    moved = shutil.copytree(base, tmp_path / "moved")
    output, _ = _train(tmp_path / "run", str(moved))
    assert output.skipped == [0] and output.trained == [1]


def test_resume_with_another_dataset_is_refused(partial_run):
    tmp_path, base = partial_run
    message = _refused(tmp_path / "run", "`dataset_name`", base=base, data=make_image_dataset(24))
    assert "`train_data.num_rows`: 16 on disk vs 24 now" in message
    _refused(tmp_path / "run", "`train_data.fingerprint`", base=base, data=make_image_dataset(16, seed=5))


def test_resume_with_other_labels_is_refused(partial_run):
    tmp_path, base = partial_run
    names = ["north", "south", "east", "west"]
    message = _refused(tmp_path / "run", "label names", base=base, model_init=partial(_load_with_labels, base, names))
    assert "`labels`" in message


def test_unlisted_member_folder_is_adopted_when_it_matches(partial_run):
    tmp_path, base = partial_run
    run = RunFolder(tmp_path / "run")
    run.manifest_path.unlink()  # e.g. killed before the index was first written
    output, _ = _train(run.root, base)
    assert output.skipped == [0] and output.trained == [1]
    assert [m.index for m in run.read_manifest().members] == [0, 1]


def test_unlisted_member_folder_that_does_not_match_is_named(partial_run):
    tmp_path, base = partial_run
    run = RunFolder(tmp_path / "run")
    info = json.loads(run.member_info_path(0).read_text())
    run.manifest_path.unlink()
    run.member_info_path(0).write_text(json.dumps({**info, "seed": 99}))
    message = _refused(run.root, "does not match this run", base=base)
    assert "`seed`: 99 in the folder vs 42 planned" in message and "member-0" in message


def test_member_indices_needs_finished_dependencies(tmp_path):
    base = make_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="`member_indices`: member 2 starts from member 0, which is neither"):
        _train(tmp_path / "star", base, strategy="star_sse", num_members=3, member_indices=[2])
    with pytest.raises(ValueError, match="`member_indices`: member 2 starts from member 1"):
        _train(tmp_path / "sse", base, strategy="sse", num_members=3, member_indices=[0, 2])
    output, _ = _train(tmp_path / "star", base, strategy="star_sse", num_members=3, member_indices=[0, 2])
    assert output.trained == [0, 2]
    assert [m.index for m in RunFolder(tmp_path / "star").read_manifest().members] == [0, 2]


BAD_INDICES = [
    ("a,b", "should be member indices like"),
    ("5", r"should be in \[0, 2\)"),
    ("1,1", "should be distinct"),
    ([-1], "should be in"),
]


@pytest.mark.parametrize("value, message", BAD_INDICES)
def test_bad_member_indices_name_the_field(tmp_path, value, message):
    with pytest.raises(ValueError, match=f"`member_indices` {message}"):
        _args(tmp_path / "run", member_indices=value)


def test_member_indices_from_the_command_line(tmp_path):
    from hf_starsse.train_entry import parse_arguments

    argv = ["--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", str(tmp_path), "--num_members", "5"]
    *_, args, _ = parse_arguments([*argv, "--member_indices", "3,4"])
    assert args.member_indices == [3, 4]


def test_recover_keeps_live_writers_temporaries(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.members_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = owner_tag().split("~", 1)[1]
    live = run.members_dir / f".member-1.{owner_tag()}.abc.tmp"  # this process: alive
    gone = run.members_dir / f".member-2.w{dead.stdout.strip()}~{host}.abc.tmp"
    unknown = run.members_dir / ".member-3.abc.tmp"  # no writer in its name
    with run.writing():  # a writer holds the run: only the dead writer's temporary goes
        for path in (live, gone, unknown):
            path.mkdir()
        assert run.recover() == [gone]
    assert live.exists() and unknown.exists()
    assert run.recover() == [unknown]  # no writer holds the run any more
    assert live.exists()


def test_a_member_another_job_is_training_is_refused(tmp_path):
    from hf_starsse.run_folder import MemberBusyError

    base = make_pretrained(tmp_path / "base")
    with RunFolder(tmp_path / "run").member_lock(1):  # held as by another job
        with pytest.raises(MemberBusyError, match="member 1 is being trained by another process"):
            _train(tmp_path / "run", base, member_indices=[1])
    output, _ = _train(tmp_path / "run", base, member_indices=[1])
    assert output.trained == [1]


def test_cli_resume_with_another_model_or_dataset_is_refused(tmp_path, capsys):
    """The issue's journey: a partial Local DE run resumed with another `--model_name_or_path` / `--dataset_name`."""
    from hf_starsse.cli import main as cli_main

    from recipe_fixtures import make_checkpoint, save_dataset

    model_a, model_b = make_checkpoint(tmp_path / "a", "resnet"), make_checkpoint(tmp_path / "b", "resnet", seed=1)
    data_a, data_b = save_dataset(tmp_path / "da", num_train=16), save_dataset(tmp_path / "db", num_train=20)
    run = tmp_path / "run"

    def train(model, data, *extra):
        argv = ["train", "--model_name_or_path", model, "--dataset_name", data, "--output_dir", str(run)]
        argv += ["--ensemble_strategy", "local_de", "--num_members", "2", "--max_steps", "1", "--use_cpu", "true"]
        argv += ["--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--validation_size", "4"]
        code = cli_main([*argv, *extra])
        return code, capsys.readouterr().err

    assert train(model_a, data_a, "--member_indices", "0")[0] == 0
    code, err = train(model_b, data_a)
    assert code == 1 and "another `model_name_or_path`" in err and "`base_model.sha256`" in err
    code, err = train(model_a, data_b)
    assert code == 1 and "another `dataset_name`" in err and "`train_data.source`" in err
    assert sorted(p.name for p in (run / "members").iterdir()) == ["member-0"]
    assert train(model_a, data_a)[0] == 0
    assert [m.index for m in RunFolder(run).read_manifest().members] == [0, 1]

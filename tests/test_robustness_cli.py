"""`hf-starsse train` faults end to end: one line on stderr, exit code 1, finished members unchanged; a full disk
and an interrupted member resume with the same command (`--resume_from_checkpoint true`)."""

from hf_starsse import EnsembleManifest, EnsembleTrainer, member_dir
from hf_starsse.cli import main as cli_main
from hf_starsse.train_entry import parse_arguments

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from ensemble_fixtures import file_digests
from recipe_fixtures import CLASS_NAMES, make_checkpoint, save_dataset
from run_folder_helpers import single_thread
from safetensors.torch import load_file
from transformers import TrainerCallback

AUG = "none"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return make_checkpoint(root / "resnet", "resnet"), save_dataset(root / "data")


def _argv(inputs, out, *extra, num_members="2"):
    checkpoint, data = inputs
    return [
        "train",
        *("--model_name_or_path", checkpoint, "--dataset_name", data, "--output_dir", str(out)),
        *(("--num_members", num_members) if num_members else ()),
        *("--ensemble_strategy", "star_sse", "--max_steps", "8"),
        *("--per_device_train_batch_size", "8", "--learning_rate", "0.01", "--optim", "sgd", "--max_grad_norm", "0"),
        *("--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"),
        *(
            "--evaluate_members",
            "false",
            "--image_size",
            "16",
            "--dataloader_drop_last",
            "true",
            "--train_augmentation",
            AUG,
        ),
        *extra,
    ]


def _run(argv, capsys):
    """Exit code and the error lines on stderr (progress bars and load reports aside); never a traceback."""
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if "error:" in line]


def test_divergence_exits_1_with_one_line_naming_member_step_and_lr(inputs, tmp_path, capsys):
    code, err = _run(_argv(inputs, tmp_path / "run", "--cycle_learning_rate", "1e38"), capsys)
    assert code == 1 and len(err) == 1
    assert err[0].startswith("hf-starsse train: error: member 1 diverged at step ")
    assert "its training loss is nan; nothing was saved for it. Lower the cycle learning rate" in err[0]
    assert [m.index for m in EnsembleManifest.load(tmp_path / "run").members] == [0]


def test_lr_scheduler_type_is_refused(inputs, tmp_path, capsys):
    code, err = _run(_argv(inputs, tmp_path / "run", "--lr_scheduler_type", "constant"), capsys)
    assert code == 1 and err == [
        "hf-starsse train: error: `lr_scheduler_type` is not used by an ensemble run, got 'constant': the cyclic "
        "cosine schedule (first fine-tuning, then one cycle per member) is the method; set `warmup_steps` and the "
        "`cycle_*` fields instead."
    ]
    assert not (tmp_path / "run").exists()


def test_boolean_num_members_in_a_recipe_is_refused(inputs, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("num_members: true\n")
    code, err = _run(_argv(inputs, tmp_path / "run", "--config", str(recipe), num_members=None), capsys)
    assert code == 1 and err == ["hf-starsse train: error: `num_members` should be a positive integer, got True."]


def test_empty_train_split_on_disk_is_one_line(inputs, tmp_path, capsys):
    features = Features({"image": Image(), "label": ClassLabel(names=CLASS_NAMES)})
    empty = Dataset.from_dict({"image": [], "label": []}, features=features)
    DatasetDict({"train": empty, "test": empty}).save_to_disk(str(tmp_path / "empty"))
    argv = _argv((inputs[0], str(tmp_path / "empty")), tmp_path / "run")
    code, err = _run(argv, capsys)
    assert code == 1 and err == [
        f"hf-starsse train: error: Cannot load dataset {str(tmp_path / 'empty')!r}: split 'train' is empty "
        "(0 examples)."
    ]


def test_resume_flag_bad_path_is_one_line(inputs, tmp_path, capsys):
    code, err = _run(_argv(inputs, tmp_path / "run", "--resume_from_checkpoint", str(tmp_path / "nope")), capsys)
    assert code == 1 and err == [
        f"hf-starsse train: error: `resume_from_checkpoint` {str(tmp_path / 'nope')!r} is not a checkpoint folder "
        "(or `true`)."
    ]


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    """A tmpfs mounted at `path` (root only); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_output_dir_is_one_line(inputs, tmp_path, capsys):
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        context = contextlib.nullcontext(ro)
        reason = "Permission denied"
    else:
        context = _tmpfs(tmp_path / "ro", "ro,size=1m")
        reason = "Read-only file system"
    with context as ro:
        out = ro / "run"
        code, err = _run(_argv(inputs, out), capsys)
    assert code == 1 and err == [
        f"hf-starsse train: error: `output_dir` {out} is not writable ({reason}): choose another `output_dir`."
    ]


class FillDiskAtMember(TrainerCallback):
    """Fill the file system of `folder` when member `member` starts training."""

    def __init__(self, folder: Path, member: int):
        self.folder, self.member, self.calls = folder, member, 0

    def on_train_begin(self, args, state, control, **kwargs):
        if self.calls == self.member:
            stat = os.statvfs(self.folder)
            with open(self.folder / "filler", "wb") as f:
                with contextlib.suppress(OSError):
                    f.write(b"\0" * (stat.f_bavail * stat.f_frsize))
        self.calls += 1


def _trainer_from_cli(inputs, out, callbacks=()):
    from hf_starsse.data import build_transforms, image_spec_from_processor, load_image_dataset, with_image_transforms
    from hf_starsse.model_loading import make_model_init

    from transformers import AutoImageProcessor

    _, _, args, _ = parse_arguments(_argv(inputs, out, num_members="3")[1:])
    args.remove_unused_columns = False
    data = load_image_dataset(inputs[1])
    processor = AutoImageProcessor.from_pretrained(inputs[0])
    splits = with_image_transforms(data, *build_transforms(image_spec_from_processor(processor, 16), "none"))
    return EnsembleTrainer(
        model_init=make_model_init(inputs[0], data.num_labels),
        args=args,
        train_dataset=splits["train"],
        processing_class=processor,
        callbacks=list(callbacks),
    )


def test_disk_full_is_one_line_and_a_rerun_after_freeing_space_resumes(inputs, tmp_path):
    with _tmpfs(tmp_path / "small", "size=2m") as disk:
        out = disk / "run"
        with pytest.raises(OSError) as info:
            _trainer_from_cli(inputs, out, [FillDiskAtMember(disk, 1)]).train()
        assert str(info.value) == (
            f"Cannot write member 1 into {out}/members/member-1: No space left on device. Finished members are "
            "unchanged; fix the cause (e.g. free disk space) and run the same command again to resume."
        )
        assert [m.index for m in EnsembleManifest.load(out).members] == [0]
        assert sorted(p.name for p in (out / "members").iterdir()) == ["member-0"]  # no half-written member
        before = file_digests(member_dir(out, 0))
        (disk / "filler").unlink()
        output = _trainer_from_cli(inputs, out).train()
        assert output.skipped == [0] and output.trained == [1, 2]
        assert file_digests(member_dir(out, 0)) == before


def test_interrupted_member_resumes_from_its_last_checkpoint_and_equals_an_uninterrupted_run(inputs, tmp_path, capsys):
    ckpt = ["--save_strategy", "steps", "--save_steps", "2"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_STARSSE_CRASH_AT": "train_step-member-1-after-5",
    }
    crashed = subprocess.run(
        [sys.executable, "-m", "hf_starsse.cli", *_argv(inputs, tmp_path / "run", *ckpt)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert crashed.returncode == -9, crashed.stderr[-2000:]  # SIGKILLed at the start of member 1's 6th step
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "member-1").iterdir())
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    with contextlib.contextmanager(
        single_thread
    )():  # as the subprocess (OMP_NUM_THREADS=1): the same float reductions
        assert cli_main(_argv(inputs, tmp_path / "run", *ckpt, "--resume_from_checkpoint", "true")) == 0
        assert "member-1: resuming from checkpoint-4 (step 4 of 8)" in capsys.readouterr().out
        assert cli_main(_argv(inputs, tmp_path / "reference", *ckpt)) == 0
    for i in (0, 1):
        resumed = load_file(member_dir(tmp_path / "run", i) / "model.safetensors")
        reference = load_file(member_dir(tmp_path / "reference", i) / "model.safetensors")
        assert resumed.keys() == reference.keys()
        assert all(torch.equal(resumed[k], reference[k]) for k in resumed), f"member {i} differs"

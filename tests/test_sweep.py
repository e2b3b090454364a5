"""`hf-starsse sweep`: a tiny grid (2 LR ratios x 1 epoch ratio x 2 seeds x 3 members) on a tiny BatchNorm model,
SIGKILLed half-way and run again with the same command, then one of its runs pushed to the local test Hub; stages and
shards for jobs; and the statistics of its report."""

import hf_starsse  # noqa: F401, I001  (first: torchvision compatibility)

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import HUB_TOKEN
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from recipe_fixtures import make_checkpoint, save_dataset

from ensemble_fixtures import file_digests
from hf_starsse.cli import main as cli_main
from hf_starsse.file_utils import CRASH_POINT_ENV
from hf_starsse.prediction_cache import file_sha256
from hf_starsse.run_folder import RunFolder
from hf_starsse.sweep_config import SweepConfig
from hf_starsse.sweep_folder import SweepFolder, plan_sweep
from hf_starsse.sweep_stats import bootstrap_interval, paired_difference, seed_interval, verdict

SEEDS = (0, 1000)
# member folders trained and renamed into place per seed: Local DE 3 + 2 configurations x 2 methods x 2 cycles (the
# adopted member 0 is copied in, not counted)
RENAMES_PER_SEED = 3 + 2 * 2 * 2


def _recipe(tmp_path) -> str:
    recipe = {
        "model_name_or_path": make_checkpoint(tmp_path / "resnet", "resnet"),  # BatchNorm everywhere
        "dataset_name": save_dataset(tmp_path / "data", num_train=32, num_test=16, with_validation=True),
        "output_dir": str(tmp_path / "ignored"),  # a training recipe's: the sweep names its runs itself
        "ensemble_strategy": "star_sse",
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "learning_rate": 0.05,
        "optim": "sgd",
        "train_augmentation": "none",
        "dataloader_drop_last": True,
        "evaluate_members": False,
        "use_cpu": True,
        "seed": 0,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _sweep(argv: list[str], crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop(CRASH_POINT_ENV, None)
    if crash_at:
        env[CRASH_POINT_ENV] = crash_at
    command = [sys.executable, "-c", "import sys; from hf_starsse.cli import main; sys.exit(main())", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def _member_0_trainings(log: str) -> dict[int, int]:
    """Member-0 trainings started, per seed (`local_de member-0 of 3: from <checkpoint>, seed S, ...`)."""
    seeds = re.findall(r"local_de member-0 of \d+: from .*?, seed (\d+),", log)
    return {s: seeds.count(str(s)) for s in SEEDS}


def test_tiny_sweep_trains_member_0_once_per_seed_and_resumes_after_sigkill(tmp_path, hub):
    out = tmp_path / "sweep"
    argv = ["sweep", "--config", _recipe(tmp_path), "--output-dir", str(out), "--lr-ratios", "0.5,4"]
    argv += ["--epoch-ratios", "1", "--seeds", "2", "--num-members", "3", "--bootstrap-samples", "200"]
    folder = SweepFolder(out)

    # killed after member 1 of seed 1000's second run: seed 0's five runs and seed 1000's Local DE are done
    killed = _sweep(argv, crash_at=f"member_renamed:{RENAMES_PER_SEED + 3 + 1}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    done_before = sorted(p.name for p in folder.results_dir.glob("*.json"))
    assert len(done_before) == 6 and all(name.startswith("seed-0__") for name in done_before[:5]), done_before
    kept = {p.name: p.read_bytes() for p in folder.results_dir.iterdir()}
    weights = {d: file_digests(d) for d in folder.runs_dir.glob("seed-*/*/members/member-*")}

    again = _sweep(argv)
    assert again.returncode == 0, again.stderr[-3000:]
    # finished runs kept as they were: results byte-identical, no member trained again
    assert all((folder.results_dir / name).read_bytes() == data for name, data in kept.items())
    finished = {d: digest for d, digest in weights.items() if "seed-0/" in str(d) or "seed-1000/local_de" in str(d)}
    assert all(file_digests(d) == digest for d, digest in finished.items())
    sessions = json.loads(folder.sessions_path.read_text())
    assert len(sessions) == 1 and sorted(sessions[0]["kept"]) == [n.replace("__", "/")[:-5] for n in done_before]
    assert not set(sessions[0]["trained"]) & set(sessions[0]["kept"])

    # member 0 trained exactly once per seed, over both calls
    log = killed.stdout + killed.stderr + again.stdout + again.stderr
    assert _member_0_trainings(log) == {0: 1, 1000: 1}
    config = SweepConfig(
        output_dir=str(out), recipe={"seed": 0}, lr_ratios=(0.5, 4), epoch_ratios=(1,), num_seeds=2, num_members=3
    )
    for run, first in plan_sweep(config):
        manifest = RunFolder(folder.run_dir(run)).read_manifest()
        assert [m.index for m in manifest.members] == [0, 1, 2]
        if first is None:
            assert manifest.members[0].adopted_from is None and manifest.members[0].num_steps > 0
            continue
        # every cycle run's members 1..K-1 start from that seed's member 0 (StarSSE directly, SSE through the chain)
        source = RunFolder(folder.run_dir(first)).member_dir(0) / "model.safetensors"
        assert first.seed == run.seed and manifest.members[0].adopted_from["sha256"] == file_sha256(source)
        parents = [m.parent for m in manifest.members[1:]]
        assert parents == ([0, 0] if run.method == "star_sse" else [0, 1]), (run.name, parents)

    # the report: one row per (method, configuration), mean and std over both seeds of the per-run results
    report = json.loads(folder.report_json.read_text())
    assert [r["config"] for r in report["rows"]] == [
        "local_de", "sse-lr0.5-ep1", "star_sse-lr0.5-ep1", "sse-lr4-ep1", "star_sse-lr4-ep1",
    ]  # fmt: skip
    for row in report["rows"]:
        results = [
            json.loads(folder.result_path(r).read_text())
            for r, _ in plan_sweep(config)
            if r.config_name == row["config"]
        ]
        accuracies = [r["ensemble"]["accuracy"] for r in results]
        assert row["seeds"] == list(SEEDS) and len(accuracies) == 2
        assert row["ensemble_accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
        assert row["ensemble_accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    table = folder.report_md.read_text().split("## Per configuration")[1].split("\n\n")[1]
    assert len(table.strip().splitlines()) == 2 + 5
    assert sorted(p.name for p in folder.figures_dir.iterdir()) == [
        "accuracy_vs_compute.png", "accuracy_vs_ensemble_size.png", "accuracy_vs_lr_ratio.png",
    ]  # fmt: skip
    assert not list(out.rglob("*.tmp"))

    # a sweep run is an ordinary run: `hf-starsse push` publishes its evaluated soup as the root model
    best = RunFolder(folder.runs_dir / "seed-0" / report["best"]["soup"]["star_sse"])
    assert cli_main(["push", str(best.root), "alice/sweep-star", "--token", HUB_TOKEN, "--endpoint", hub.url]) == 0
    root = load_file(hf_hub_download("alice/sweep-star", "model.safetensors", cache_dir=tmp_path / "cache"))
    soup = load_file(str(best.soup_dir("uniform") / "model.safetensors"))
    assert root.keys() == soup.keys() and all(torch.equal(root[k], soup[k]) for k in soup)


def test_sweep_settings_are_checked_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="`lr_ratios` should be a non-empty list of positive numbers"):
        SweepConfig(output_dir=str(tmp_path), lr_ratios=(1, 0))
    with pytest.raises(ValueError, match="`methods` should be taken from local_de, sse, star_sse"):
        SweepConfig(output_dir=str(tmp_path), methods=("local_de", "fge"))
    with pytest.raises(ValueError, match="`num_members` should be an integer >= 2, got 1"):
        SweepConfig(output_dir=str(tmp_path), num_members=1)
    config = SweepConfig(output_dir=str(tmp_path), recipe={"seed": 7, "cycle_lr_ratio": 2.0, "output_dir": "x"})
    assert config.overridden == ["cycle_lr_ratio", "output_dir"] and config.recipe == {"seed": 7}
    assert config.seeds == [7, 1007, 2007]  # member seeds seed_j + i of two sweep seeds never meet


def test_sweep_without_local_de_trains_member_0_in_a_run_of_its_own(tmp_path):
    config = SweepConfig(output_dir=str(tmp_path), methods=("star_sse",), lr_ratios=(1,), epoch_ratios=(1,))
    plan = plan_sweep(config)
    assert [(r.name, r.num_members, f.name if f else None) for r, f in plan[:2]] == [
        ("seed-42/member-0", 1, None),
        ("seed-42/star_sse-lr1-ep1", 5, "seed-42/member-0"),
    ]


def test_intervals():
    rng = np.random.default_rng(0)
    d = [0.01, 0.03, 0.02]
    low, high = seed_interval(d, 0.95)
    assert (low + high) / 2 == pytest.approx(0.02) and high - low == pytest.approx(2 * 4.302653 * 0.01 / np.sqrt(3))
    assert seed_interval([0.1], 0.95) is None
    per_example = rng.choice([-1.0, 0.0, 1.0], size=2000, p=[0.1, 0.7, 0.2])
    low, high = bootstrap_interval(per_example, 0.95, 2000)
    sem = per_example.std() / np.sqrt(len(per_example))
    assert low < per_example.mean() < high and (high - low) == pytest.approx(2 * 1.96 * sem, rel=0.15)


def test_paired_difference_pairs_seeds_and_examples():
    labels = np.zeros(4, dtype=int)
    correct = {("a", 0): [1, 1, 1, 0], ("a", 1): [1, 1, 0, 0], ("b", 0): [1, 0, 0, 0], ("b", 1): [1, 1, 0, 0]}

    def record(name, seed):
        return {"seed": seed, "name": name, "ensemble": {"accuracy": float(np.mean(correct[name, seed]))}}

    def predictions(rec):
        return {"ensemble_correct": np.array(correct[rec["name"], rec["seed"]], bool), "labels": labels}

    a = {s: record("a", s) for s in (0, 1)}
    b = {s: record("b", s) for s in (0, 1)}
    diff = paired_difference(a, b, "ensemble", predictions, 0.95, 500)
    assert diff["per_seed"] == [0.5, 0.0] and diff["mean"] == 0.25 and diff["seeds"] == [0, 1]
    assert diff["bootstrap_ci"][0] >= 0 and diff["bootstrap_ci"][1] <= 0.5  # per-example differences: .5 .5 0 0
    assert verdict(diff) == "not resolved"  # the interval over 2 seeds includes 0
    assert verdict({"seed_ci": [0.01, 0.02], "bootstrap_ci": [0.001, 0.03]}) == "holds"
    assert verdict({"seed_ci": [-0.03, -0.01], "bootstrap_ci": [-0.02, -0.001]}) == "reversed"


def test_stages_and_shards_split_the_runs_between_jobs(tmp_path):
    from hf_starsse.sweep import run_sweep

    recipe = yaml.safe_load(open(_recipe(tmp_path)))
    config = SweepConfig(
        output_dir=str(tmp_path / "sweep"),
        recipe=recipe,
        methods=("local_de", "star_sse"),
        lr_ratios=(1,),
        epoch_ratios=(1,),
        num_seeds=2,
        num_members=2,
        bootstrap_samples=100,
        plots=False,
    )
    folder = SweepFolder(config.output_dir)
    with pytest.raises(ValueError, match="starts from member 0 of seed-0/local_de, which is not done yet"):
        run_sweep(config, stage="cycles")
    run_sweep(config, stage="first", shard=(1, 2))  # job 2 of 2 of the first stage: seed 1000's Local DE
    assert sorted(p.name for p in folder.results_dir.glob("*.json")) == ["seed-1000__local_de.json"]
    run_sweep(config, stage="first", shard=(0, 2))
    run_sweep(config, stage="cycles", shard=(1, 2))
    report = run_sweep(config, stage="cycles", shard=(0, 2))
    assert [s["trained"] for s in report["sessions"]] == [
        ["seed-1000/local_de"], ["seed-0/local_de"], ["seed-1000/star_sse-lr1-ep1"], ["seed-0/star_sse-lr1-ep1"],
    ]  # fmt: skip
    assert report["num_runs_done"] == report["num_runs_planned"] == 4
    with pytest.raises(ValueError, match="`shard` should be `i/n` with 0 <= i < n, got 2/2"):
        run_sweep(config, shard=(2, 2))


def test_preset_dry_run_lists_the_runs_and_writes_nothing(tmp_path, capsys):
    from hf_starsse.commands.sweep import PRESET_NAMES
    from hf_starsse.sweep_presets import preset_names

    assert list(PRESET_NAMES) == preset_names()
    out = tmp_path / "preset"
    assert cli_main(["sweep", "--preset", "cpu-digits", "--output-dir", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # 3 seeds x (Local DE + 3 LR ratios x 2 epoch ratios x 2 methods)
    assert len(lines) == 3 * (1 + 3 * 2 * 2) and lines[1].endswith("(member 0 from seed-42/local_de)")
    assert not out.exists()
    assert (
        cli_main(["sweep", "--preset", "gpu-digits", "--output-dir", str(out), "--dry-run", "--stage", "first"]) == 0
    )
    assert len(capsys.readouterr().out.strip().splitlines()) == 5  # the first stage: one run per seed

"""Every fenced code block of README.md and of a rendered model card runs, as written.

The one switch is the Hub: the blocks run against a local Hub server (tests/hub_server.py, `HF_ENDPOINT`) that holds
tiny stand-ins under the names the snippets use, so the text the user reads is the text that runs:

- model `google/vit-base-patch16-224-in21k`: a random 1-layer ViT on 16-px images and its image processor;
- dataset `uoft-cs/cifar100`: 40 train / 12 test random 32-px images with `img` / `fine_label` (3 classes), so
  every epoch of the README's batch size is one step;
- model `user/vit-starsse`: pushed by the README's own `hf-starsse push` line (`HF_TOKEN` is a `user` token).

How each block runs (README blocks in document order, in one temporary working directory and one Python namespace,
so later blocks use what earlier ones made; `recipes/` and `constraints.txt` are linked into that directory):

- `python`: executed.
- `bash`: every command line (continuations joined, comments dropped), by its program:
  - `hf-starsse ...`: run in-process through `hf_starsse.cli.main` (must exit 0), except `PARSE_ONLY`: `demo` and
    `compare` train for minutes (tests/test_demo.py and tests/test_compare.py run them small), `sweep` without
    `--dry-run` (a preset trains for most of an hour; tests/test_sweep.py runs a tiny one), and commands on the
    demo's output folder; those are parsed by the real parser (an unknown flag or value fails). `train --config
    RECIPE` without `--dry_run` (a paper recipe: hours on GPUs, on its real checkpoint) is parsed by
    `hf_starsse.train_entry.parse_arguments` (the recipe must exist, every field must be known).
  - `accelerate launch`, `accelerate-launch`, `python -m accelerate.commands.launch`: multi-device launchers. The
    launcher's flags are parsed by accelerate's own parser and the script's arguments by
    `hf_starsse.train_entry.parse_arguments` (the recipe must exist, every field must be known).
  - `pip install ...`: not run (no network); the files and extras it names must exist.
  - `python -m pytest ...`: not run (it is this test suite).
- other fences (folder trees, BibTeX): not code.

The rendered card is the README.md that the push wrote to the server (hf_starsse.model_card); its blocks run the same
way in a fresh namespace, with an `image.jpg` in the working directory (the user's image).
"""

from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
NOT_CODE = {"", "text", "bibtex"}
PARSE_ONLY = ("demo", "compare")  # hf-starsse sub-commands that train for minutes: parsed, not run
TOKENS = {"tok_google": "google", "tok_uoft": "uoft-cs", "tok_user": "user"}
IMAGE_SIZE = 16  # the stand-in ViT's input side
RAW_SIZE = 32  # the stand-in dataset's images (imagecorruptions needs 32 px)


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """`(language, text)` of every fenced block, in order."""
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(markdown)]


def shell_commands(text: str) -> list[list[str]]:
    """The command lines of a shell block as argument lists (continuations joined, comments and `&&` split)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        for part in line.split("&&"):
            commands.append(shlex.split(part))
    return commands


def _strip_env(argv: list[str]) -> list[str]:
    while argv and re.match(r"^[A-Z_]+=", argv[0]):
        argv = argv[1:]
    return argv


SHELL_ENVIRONMENT = {"SLURM_ARRAY_TASK_ID": "1"}  # what the README's job-array script gets from SLURM


def run_shell_command(argv: list[str]) -> str:
    """Run (or check) one command as described in the module docstring; returns how it was handled."""
    # shell variables expand as the shell would; a SLURM job-array task id stands for the scheduler's
    argv = [
        os.path.expandvars(a.replace("$SLURM_ARRAY_TASK_ID", SHELL_ENVIRONMENT["SLURM_ARRAY_TASK_ID"]))
        for a in _strip_env(argv)
    ]
    if argv[:2] == ["pip", "install"]:
        for i, arg in enumerate(argv):
            if arg == "-c":
                assert Path(argv[i + 1]).is_file(), f"pip constraints file {argv[i + 1]} is missing"
        return "checked (pip: not run)"
    if argv[:3] == ["python", "-m", "pytest"]:
        return "not run (this test suite)"
    if (
        argv[:2] == ["accelerate", "launch"]
        or argv[:1] == ["accelerate-launch"]
        or argv[:3]
        == [
            "python",
            "-m",
            "accelerate.commands.launch",
        ]
    ):
        return _check_launch(argv[3:] if argv[0] == "python" else argv[2:] if argv[0] == "accelerate" else argv[1:])
    if argv[0] == "hf-starsse":
        from hf_starsse.cli import build_parser, main

        if argv[1] in PARSE_ONLY or any(a.startswith("hf_starsse_demo/") for a in argv):
            build_parser().parse_args(argv[1:])
            return "parsed (trains for minutes)"
        if argv[1] == "sweep" and not {"--dry_run", "--dry-run"} & set(argv):
            build_parser().parse_args(argv[1:])  # a preset trains for most of an hour (tests/test_sweep.py runs one)
            return "parsed (sweep)"
        if argv[1] == "train" and "--config" in argv and not {"--dry_run", "--dry-run"} & set(argv):
            from hf_starsse.train_entry import parse_arguments

            parse_arguments(argv[2:])  # a paper recipe on its real checkpoint: hours on GPUs
            return "parsed (paper recipe)"
        if os.environ.get("HF_STARSSE_DOCS_DEBUG"):  # full traceback instead of the CLI's one-line error
            args = build_parser().parse_args(argv[1:])
            args.func(args)
            return "run"
        code = main(argv[1:])
        assert code == 0, f"`{shlex.join(argv)}` exited with {code}"
        return "run"
    raise AssertionError(f"No rule for the shell command `{shlex.join(argv)}`: add one to tests/test_docs.py.")


def _check_launch(argv: list[str]) -> str:
    from accelerate.commands.launch import launch_command_parser

    launch_args = launch_command_parser().parse_args(argv)
    assert Path(launch_args.training_script).is_file(), launch_args.training_script
    if launch_args.config_file:
        assert Path(launch_args.config_file).is_file(), launch_args.config_file
    from hf_starsse.train_entry import parse_arguments

    parse_arguments(launch_args.training_script_args)
    return "parsed (launcher + script arguments)"


def _populate_hub(server, tmp: Path) -> None:
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image
    from huggingface_hub import HfApi
    from PIL import Image as PILImage
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    model_dir = tmp / "stand_ins" / "vit"
    ViTForImageClassification(
        ViTConfig(
            image_size=IMAGE_SIZE,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=21843 // 1000,
        )
    ).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(model_dir)
    api = HfApi(endpoint=server.url, token="tok_google")
    api.create_repo("google/vit-base-patch16-224-in21k")
    api.upload_folder(folder_path=str(model_dir), repo_id="google/vit-base-patch16-224-in21k")

    rng = np.random.default_rng(0)
    data_dir = tmp / "stand_ins" / "cifar100" / "data"
    data_dir.mkdir(parents=True)
    features = Features({"img": Image(), "fine_label": ClassLabel(names=["apple", "bee", "castle"])})
    for split, n in (("train", 40), ("test", 12)):
        labels = [i % 3 for i in range(n)]
        images = [
            PILImage.fromarray((rng.random((RAW_SIZE, RAW_SIZE, 3)) * 80 + 60 * label).astype("uint8"))
            for label in labels
        ]
        Dataset.from_dict({"img": images, "fine_label": labels}, features=features).to_parquet(
            str(data_dir / f"{split}-00000-of-00001.parquet")
        )
    api = HfApi(endpoint=server.url, token="tok_uoft")
    api.create_repo("uoft-cs/cifar100", repo_type="dataset")
    api.upload_folder(folder_path=str(data_dir.parent), repo_id="uoft-cs/cifar100", repo_type="dataset")


@pytest.fixture(scope="module")
def docs_hub(tmp_path_factory):
    """The local Hub with the stand-ins, the environment pointed at it, and the working directory of the blocks."""
    from hub_server import HubServer
    from huggingface_hub import constants

    tmp = tmp_path_factory.mktemp("docs")
    server = HubServer(tmp / "hub_storage", tokens=dict(TOKENS)).start()
    patch = pytest.MonkeyPatch()
    cache = tmp / "hf_cache"
    for key, value in {
        "HF_ENDPOINT": server.url,
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp / "hf_home"),
        "HF_DATASETS_CACHE": str(tmp / "datasets_cache"),
        "HF_TOKEN": "tok_user",
    }.items():
        patch.setenv(key, value)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        patch.delenv(key, raising=False)
    patch.setattr(constants, "ENDPOINT", server.url)
    patch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    patch.setattr(constants, "HF_HUB_OFFLINE", False)
    patch.setattr(constants, "HF_HUB_CACHE", str(cache))
    patch.setattr(constants, "HF_TOKEN_PATH", str(tmp / "hf_home" / "token"))
    patch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp / "hf_home" / "stored_tokens"))
    _patch_datasets_config(patch, server.url, tmp)
    _populate_hub(server, tmp)
    work = tmp / "work"
    work.mkdir()
    for name in ("recipes", "constraints.txt"):
        (work / name).symlink_to(ROOT / name)
    patch.chdir(work)
    yield server, work
    patch.undo()
    server.stop()
    # `datasets` reads the Hub through `HfFileSystem`, whose instance fsspec caches per process with its listings and
    # resolved revisions: drop it, so no later test meets this server's state under the same repo names.
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()


def _patch_datasets_config(patch: pytest.MonkeyPatch, endpoint: str, tmp: Path) -> None:
    """`datasets.config` reads the endpoint, the offline switch and its cache paths once, at import (which happens
    earlier in the suite, offline): point them at this server and this test's folders too."""
    import datasets.config

    patch.setattr(datasets.config, "HF_HUB_OFFLINE", False, raising=False)
    patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False, raising=False)
    patch.setattr(datasets.config, "HF_ENDPOINT", endpoint, raising=False)
    patch.setattr(datasets.config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")
    patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp / "datasets_cache")
    patch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", tmp / "datasets_cache" / "downloads")


def _run_blocks(blocks: list[tuple[str, str]], where: str, show=print) -> list[str]:
    namespace: dict = {"__name__": "__docs__"}
    report = []
    for number, (language, text) in enumerate(blocks):
        label = f"{where} block {number} ({language or 'plain'}, line 1: {text.splitlines()[0][:50] if text else ''})"
        start = time.perf_counter()
        if language == "python":
            exec(compile(text, f"<{label}>", "exec"), namespace)
            report.append(f"{label}: executed")
        elif language in ("bash", "sh", "shell", "console"):
            handled = [f"{shlex.join(_strip_env(c))[:60]} -> {run_shell_command(c)}" for c in shell_commands(text)]
            report.append(f"{label}: " + "; ".join(handled))
        else:
            assert language in NOT_CODE, f"{label}: no rule for fences of language {language!r}"
            report.append(f"{label}: not code")
        report[-1] += f" [{time.perf_counter() - start:.1f} s]"
        show(report[-1])
    return report


def test_readme_and_card_blocks_run(docs_hub, capsys):
    server, work = docs_hub
    readme = code_blocks((ROOT / "README.md").read_text(encoding="utf-8"))

    def show(line: str) -> None:
        with capsys.disabled():
            print("\n" + line, flush=True)

    report = _run_blocks(readme, "README.md", show)
    assert server.repo_exists("user/vit-starsse"), "the README's push command should have published the run"
    card = server.files("user/vit-starsse")["README.md"].decode()
    card_blocks = code_blocks(card)
    assert [lang for lang, _ in card_blocks if lang == "python"], "the card should show usage snippets"
    from PIL import Image

    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (120, 60, 30)).save(work / "image.jpg")
    report += _run_blocks(card_blocks, "model card", show)
    assert len(report) == len(readme) + len(card_blocks)


def test_broken_snippets_fail():
    with pytest.raises(SystemExit):
        run_shell_command(["hf-starsse", "compare", "--num_memberz", "3"])
    with pytest.raises(AssertionError, match="No rule"):
        run_shell_command(["curl", "https://example.com"])
    with pytest.raises(ImportError):
        _run_blocks([("python", "from hf_starsse.data import build_transformz")], "broken")


def test_block_extraction():
    blocks = code_blocks("text\n```python\nx = 1\n```\n\n```bash\na \\\n  --b 1  # note\n```\n")
    assert blocks == [("python", "x = 1\n"), ("bash", "a \\\n  --b 1  # note\n")]
    assert shell_commands(blocks[1][1]) == [["a", "--b", "1"]]

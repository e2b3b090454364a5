"""Publishing to the Hub and loading back, against a local Hub-compatible server (tests/hub_server.py) with the real
`huggingface_hub` client and `transformers` loaders (no mocks)."""

from hf_starsse.cli import main as cli_main
from hf_starsse.file_utils import atomic_write_json
from hf_starsse.hub import HubPushError, push_run_if_requested, push_to_hub
from hf_starsse.manifest import EnsembleManifest
from hf_starsse.modeling_ensemble import EnsembleForImageClassification
from hf_starsse.soups import uniform_soup

import hashlib
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HUB_TOKEN
from PIL import Image
from safetensors.torch import save_file
from tiny_run import IMAGE_SIZE, make_tiny_run
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

REPO = "alice/tiny-starsse"


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file of a folder with its sha256 (to prove a folder was not modified)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _images(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((24, 20, 3)) * 255).astype("uint8")) for _ in range(n)]


@pytest.fixture(autouse=True)
def _unique_repo_name(monkeypatch, request):
    """Each test gets its own repo name: transformers / huggingface_hub keep per-process state keyed by repo id (a
    resolved commit), which must not carry over to a same-named repo on the next test's fresh server."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", f"{REPO}-{request.node.name.split('[')[0][-40:]}")


@pytest.fixture
def run_dir(tmp_path):
    return make_tiny_run(tmp_path / "run", num_members=3)


def _local_soup(run_dir: Path, folder: Path):
    """The uniform soup built locally (member 0's config + the averaged safetensors), loaded the standard way."""
    members = EnsembleManifest.load(run_dir).member_paths(run_dir)
    folder.mkdir()
    shutil.copy(members[0] / "config.json", folder / "config.json")
    save_file(uniform_soup(members), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return AutoModelForImageClassification.from_pretrained(folder).eval()


def test_round_trip_soup_member_ensemble_and_pipelines(hub, run_dir, tmp_path):
    before = _snapshot(run_dir)
    result = push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url, retry_wait=0.01)

    # One repo, one commit (after the server's initial commit) holding the whole layout.
    assert result.repo_id == REPO and result.revision == "main"
    assert hub.commit_count(REPO) == 2 and hub.head(REPO) == result.commit_oid
    files = hub.files(REPO)
    for name in ["README.md", "config.json", "model.safetensors", "preprocessor_config.json", "ensemble.json"]:
        assert name in files, name
    for i in range(3):
        for name in ["config.json", "model.safetensors", "preprocessor_config.json", "member.json"]:
            assert f"members/member-{i}/{name}" in files
    assert {"eval/eval.json", "eval/eval.md", "eval/metric_vs_size.png", "soup.json"} <= set(files)
    assert not any(p.startswith(("checkpoints/", "soups/")) for p in files)
    # the root model is the evaluated soup, byte for byte
    assert files["model.safetensors"] == (run_dir / "soups" / "uniform" / "model.safetensors").read_bytes()
    assert _snapshot(run_dir) == before, "pushing must not modify the run folder"

    # Fresh cache: download with the real loaders.
    cache = tmp_path / "fresh_cache"
    x = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    local_members = [
        AutoModelForImageClassification.from_pretrained(p).eval()
        for p in EnsembleManifest.load(run_dir).member_paths(run_dir)
    ]
    local_soup = _local_soup(run_dir, tmp_path / "local_soup")

    soup = AutoModelForImageClassification.from_pretrained(REPO, cache_dir=cache).eval()
    member = AutoModelForImageClassification.from_pretrained(REPO, subfolder="members/member-1", cache_dir=cache)
    ensemble = EnsembleForImageClassification.from_pretrained(REPO, cache_dir=cache)
    assert ensemble.num_members == 3 and ensemble.config.strategy == "star_sse"
    with torch.no_grad():
        soup_logits = soup(pixel_values=x).logits
        assert torch.equal(soup_logits, local_soup(pixel_values=x).logits)
        # the soup is really the members' mean (not a copy of one member)
        member_logits = [m(pixel_values=x).logits for m in local_members]
        assert all(not torch.allclose(soup_logits, ml) for ml in member_logits)
        assert torch.equal(member.eval()(pixel_values=x).logits, member_logits[1])
        expected = torch.stack([ml.softmax(-1) for ml in member_logits]).mean(0)
        downloaded = ensemble(pixel_values=x)
        local = EnsembleForImageClassification.from_pretrained(run_dir)(pixel_values=x)
        assert torch.equal(downloaded.probs, local.probs)
        assert torch.allclose(downloaded.probs, expected, atol=1e-6)
        assert torch.allclose(downloaded.logits.softmax(-1), expected, atol=1e-6)
    snapshot_files = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    assert any("members/member-2/model.safetensors" in p for p in snapshot_files)

    # Pipelines: the soup straight from the repo id, the ensemble with the members' image processor.
    images = _images()
    processor = AutoImageProcessor.from_pretrained(run_dir / "members" / "member-0")
    soup_pipe = pipeline("image-classification", model=REPO, model_kwargs={"cache_dir": cache})
    local_soup_pipe = pipeline("image-classification", model=local_soup, image_processor=processor)
    assert soup_pipe(images, top_k=4) == local_soup_pipe(images, top_k=4)
    ens_pipe = pipeline("image-classification", model=ensemble, image_processor=ensemble.image_processor)
    local_ens = EnsembleForImageClassification.from_pretrained(run_dir)
    local_ens_pipe = pipeline("image-classification", model=local_ens, image_processor=processor)
    got, want = ens_pipe(images, top_k=4), local_ens_pipe(images, top_k=4)
    assert got == want
    with torch.no_grad():
        pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        probs = torch.stack([m(pixel_values=pixel_values).logits.softmax(-1) for m in local_members]).mean(0)
    first = {d["label"]: d["score"] for d in got[0]}
    for j, label in local_members[0].config.id2label.items():
        assert first[label] == pytest.approx(probs[0, j].item(), abs=1e-6)

    # A second push to a branch: `revision` on both sides; main is untouched.
    main_head = hub.head(REPO)
    branch = push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url, revision="exp", retry_wait=0.01)
    assert branch.revision == "exp" and hub.head(REPO, "exp") == branch.commit_oid and hub.head(REPO) == main_head
    from_branch = EnsembleForImageClassification.from_pretrained(REPO, revision="exp", cache_dir=tmp_path / "c2")
    with torch.no_grad():
        assert torch.equal(from_branch(pixel_values=x).probs, downloaded.probs)


def test_ensemble_save_pretrained_round_trip_with_auto_class(run_dir, tmp_path):
    ensemble = EnsembleForImageClassification.from_pretrained(run_dir)
    ensemble.save_pretrained(tmp_path / "saved")
    ensemble.image_processor.save_pretrained(tmp_path / "saved")
    again = AutoModelForImageClassification.from_pretrained(tmp_path / "saved")
    assert isinstance(again, EnsembleForImageClassification) and again.num_members == 3
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        assert torch.equal(again(pixel_values=x).probs, ensemble(pixel_values=x).probs)
    pipe = pipeline("image-classification", model=str(tmp_path / "saved"))
    assert pipe(_images(1), top_k=4) == pipeline(
        "image-classification", model=ensemble, image_processor=ensemble.image_processor
    )(_images(1), top_k=4)


def test_wrong_token_gives_one_line_error_and_pushes_nothing(hub, run_dir, capsys):
    bad = "hf_WRONGtoken_9876543210zyxw"
    before = _snapshot(run_dir)
    with pytest.raises(HubPushError) as info:
        push_to_hub(run_dir, REPO, token=bad, endpoint=hub.url, retry_wait=0.01)
    message = str(info.value)
    assert "\n" not in message and "401" in message and bad not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not hub.repo_exists(REPO)

    # An existing repo keeps its head when a later push is refused.
    push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url)
    head = hub.head(REPO)
    code = cli_main(["push", str(run_dir), REPO, "--token", bad, "--endpoint", hub.url])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-starsse push: error: Authentication failed (HTTP 401)")
    assert bad not in captured.err + captured.out
    assert hub.head(REPO) == head and hub.commit_count(REPO) == 2
    assert _snapshot(run_dir) == before


def test_commit_failing_once_is_retried(hub, run_dir):
    before = _snapshot(run_dir)
    hub.fail_next_commits = 1
    result = push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url, retry_wait=0.01)
    commits = [status for method, path, status in hub.requests if path.endswith("/commit/main")]
    assert commits == [500, 200]
    assert hub.commit_count(REPO) == 2 and hub.head(REPO) == result.commit_oid
    assert "members/member-2/model.safetensors" in hub.files(REPO)
    assert _snapshot(run_dir) == before


def test_dropped_connection_mid_commit_is_retried(hub, run_dir):
    hub.drop_next_commits = 1
    result = push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url, retry_wait=0.01)
    commits = [status for method, path, status in hub.requests if "/commit" in path]
    assert commits == [0, 200]  # 0: connection closed without an answer
    assert hub.head(REPO) == result.commit_oid and hub.commit_count(REPO) == 2


def test_commit_failing_every_time_gives_clear_error_and_nothing_half_pushed(hub, run_dir):
    before = _snapshot(run_dir)
    hub.fail_next_commits = 10
    with pytest.raises(HubPushError) as info:
        push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url, max_retries=2, retry_wait=0.01)
    message = str(info.value)
    assert "\n" not in message and "HTTP 500" in message and "3 attempts" in message
    assert "local run folder was not modified" in message
    assert hub.commit_count(REPO) == 1 and set(hub.files(REPO)) == {".gitattributes"}
    assert _snapshot(run_dir) == before


def test_bad_inputs_fail_before_any_request(hub, run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="ensemble manifest"):
        push_to_hub(tmp_path, REPO, token=HUB_TOKEN, endpoint=hub.url)
    with pytest.raises(ValueError, match="`repo_id`"):
        push_to_hub(run_dir, "not a/valid/repo id", token=HUB_TOKEN, endpoint=hub.url)
    with pytest.raises(ValueError, match="`max_retries`"):
        push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url, max_retries=-1)
    (run_dir / "members" / "member-1" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="Member 1 has no model.safetensors"):
        push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url)
    assert hub.requests == []


def test_no_token_in_run_folder_logs_card_or_hub_after_push(hub, run_dir, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    for name in ("hf_starsse", "huggingface_hub", "transformers"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    assert cli_main(["push", str(run_dir), REPO, "--token", HUB_TOKEN, "--endpoint", hub.url]) == 0
    push_run_if_requested(
        _Args(push_to_hub=True, hub_model_id=REPO, hub_token=HUB_TOKEN, output_dir=str(run_dir)), run_dir
    )
    EnsembleForImageClassification.from_pretrained(REPO, cache_dir=tmp_path / "cache", token=HUB_TOKEN)
    captured = capsys.readouterr()
    needle = HUB_TOKEN.encode()
    assert hub.commit_count(REPO) == 2  # the second push changed nothing: no empty commit
    card = hub.files(REPO)["README.md"].decode()
    assert "2303.03374" in card
    searched = 0
    for folder in (run_dir, tmp_path / "cache", tmp_path / "hub_storage"):
        for path in folder.rglob("*"):
            if path.is_file():
                searched += 1
                assert needle not in path.read_bytes(), path
    assert searched > 30
    assert HUB_TOKEN not in caplog.text and HUB_TOKEN not in captured.out + captured.err
    assert "Pushed" in captured.out


def test_token_in_hyperparameters_is_scrubbed_and_token_in_a_file_refused(hub, run_dir):
    manifest = EnsembleManifest.load(run_dir)
    manifest.hyperparameters["hub_token"] = HUB_TOKEN
    manifest.hyperparameters["note"] = f"pushed with {HUB_TOKEN}"
    manifest.save(run_dir)
    push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url)
    for path, data in hub.files(REPO).items():
        assert HUB_TOKEN.encode() not in data, path
    assert "hub_token" not in hub.files(REPO)["ensemble.json"].decode()

    atomic_write_json(run_dir / "members" / "member-0" / "member.json", {"token_was": HUB_TOKEN})
    head = hub.head(REPO)
    with pytest.raises(HubPushError, match="contains your Hub token") as info:
        push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url)
    assert HUB_TOKEN not in str(info.value) and hub.head(REPO) == head


def test_members_pushed_separately_are_linked_from_the_card(hub, run_dir, tmp_path):
    result = push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url, push_members_separately=True)
    assert result.member_repos == [f"{REPO}-member-{i}" for i in range(3)]
    card = hub.files(REPO)["README.md"].decode()
    for repo in result.member_repos:
        assert f"[{repo}]({hub.url}/{repo})" in card
        assert {"config.json", "model.safetensors", "README.md"} <= set(hub.files(repo))
    member = AutoModelForImageClassification.from_pretrained(result.member_repos[2], cache_dir=tmp_path / "c")
    local = AutoModelForImageClassification.from_pretrained(run_dir / "members" / "member-2")
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        assert torch.equal(member.eval()(pixel_values=x).logits, local.eval()(pixel_values=x).logits)


def test_push_run_if_requested_respects_the_flag(hub, run_dir):
    assert push_run_if_requested(_Args(push_to_hub=False, output_dir=str(run_dir))) is None
    assert hub.requests == []


class _Args:
    """The `TrainingArguments` fields `push_run_if_requested` reads."""

    def __init__(self, **kwargs):
        self.hub_model_id = None
        self.hub_token = None
        self.hub_private_repo = False
        self.should_save = True
        self.__dict__.update(kwargs)


def test_private_repo_needs_the_token_to_download(hub, run_dir, tmp_path):
    push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url, private=True)
    assert hub.store.meta("model", REPO)["private"] is True
    with pytest.raises(OSError):
        AutoModelForImageClassification.from_pretrained(REPO, cache_dir=tmp_path / "anonymous")
    soup = AutoModelForImageClassification.from_pretrained(REPO, cache_dir=tmp_path / "owner", token=HUB_TOKEN)
    assert soup.config.num_labels == 4


def test_a_recalibrated_soup_folder_in_the_run_is_published_as_is(hub, run_dir):
    soup_dir = run_dir / "soups" / "uniform"
    shutil.copy(run_dir / "members" / "member-2" / "model.safetensors", soup_dir / "model.safetensors")
    push_to_hub(run_dir, REPO, token=HUB_TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    assert files["model.safetensors"] == (soup_dir / "model.safetensors").read_bytes()
    assert files["config.json"] == (soup_dir / "config.json").read_bytes()


def test_ensemble_trainer_push_to_hub_publishes_the_run_at_the_end(hub, tmp_path):
    from hf_starsse import EnsembleTrainer, EnsembleTrainingArguments

    from ensemble_fixtures import make_image_dataset, make_pretrained, model_init_for

    args = EnsembleTrainingArguments(
        output_dir=str(tmp_path / "run"),
        ensemble_strategy="star_sse",
        num_members=2,
        num_train_epochs=1,
        per_device_train_batch_size=8,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        push_to_hub=True,
        hub_model_id="alice/trained-run",
        hub_token=HUB_TOKEN,
    )
    EnsembleTrainer(
        model_init=model_init_for(make_pretrained(tmp_path / "p")), args=args, train_dataset=make_image_dataset(16)
    ).train()
    files = set(hub.files("alice/trained-run"))
    assert {"model.safetensors", "ensemble.json", "README.md", "members/member-1/model.safetensors"} <= files
    assert hub.commit_count("alice/trained-run") == 2  # the repo's first commit + the run, not per-member pushes
    for path in (tmp_path / "run").rglob("*"):
        assert not path.is_file() or HUB_TOKEN.encode() not in path.read_bytes()

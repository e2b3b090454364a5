"""Member paths never escape the run (local loading, evaluate, push), push uploads only the layout's files, and a run
never evaluated is refused unless the members' average is asked for. Against the local Hub (tests/hub_server.py)."""

from hf_starsse.cli import main as cli_main
from hf_starsse.ensemble import Ensemble
from hf_starsse.hub import push_to_hub
from hf_starsse.modeling_ensemble import EnsembleForImageClassification
from hf_starsse.soups import uniform_soup

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import HUB_TOKEN
from safetensors.torch import load_file
from tiny_run import make_tiny_run

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- planted next to the run"


@pytest.fixture
def run_dir(tmp_path):
    run_dir = make_tiny_run(tmp_path / "run", num_members=3)
    (tmp_path / "id_rsa").write_bytes(SECRET)  # a private file next to the run
    outside = tmp_path / "outside" / "member-1"
    shutil.copytree(run_dir / "members" / "member-1", outside)
    (outside / "id_rsa").write_bytes(SECRET)
    return run_dir


def _edit_manifest(run_dir: Path, edit) -> None:
    path = run_dir / "ensemble.json"
    data = json.loads(path.read_text())
    edit(data["members"], run_dir)
    path.write_text(json.dumps(data))


def _absolute(members, run_dir):
    members[1]["path"] = str(run_dir.parent / "outside" / "member-1")


def _dotdot(members, run_dir):
    members[1]["path"] = "members/../../outside/member-1"


def _symlink(members, run_dir):
    shutil.rmtree(run_dir / "members" / "member-1")
    (run_dir / "members" / "member-1").symlink_to(run_dir.parent / "outside" / "member-1")


def _duplicate(members, run_dir):
    members[1] = dict(members[0])


def _duplicate_path(members, run_dir):
    members[1]["path"] = "members/member-0"


def _wrong_type(members, run_dir):
    members[1]["index"] = "1"


BAD_MANIFESTS = {
    "absolute": (_absolute, "members[1].path should be relative to the run folder"),
    "dotdot": (_dotdot, "members[1].path should be `members/member-<i>` inside the run"),
    "symlink": (_symlink, "members[1].path: "),
    "duplicate": (_duplicate, "members[1].index 0 is listed twice"),
    "duplicate_path": (_duplicate_path, "members[1].path 'members/member-0' is listed twice"),
    "wrong_type": (_wrong_type, "members[1].index should be int, got '1'"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_one_line_naming_the_entry_everywhere_and_push_creates_nothing(case, run_dir, hub, capsys):
    edit, expected = BAD_MANIFESTS[case]
    _edit_manifest(run_dir, edit)
    capsys.readouterr()
    for load in (Ensemble.from_run, EnsembleForImageClassification.from_pretrained):
        with pytest.raises(ValueError) as info:
            load(run_dir)
        assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)
    for argv in (["evaluate", str(run_dir)], ["push", str(run_dir), "alice/bad", "--token", HUB_TOKEN]):
        assert cli_main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    assert hub.requests == [] and not hub.repo_exists("alice/bad")


def test_push_uploads_only_layout_files_never_through_a_link(run_dir, hub):
    # links inside the run pointing at the planted file, under names push does not publish: left out
    (run_dir / "members" / "member-0" / "id_rsa").symlink_to(run_dir.parent / "id_rsa")
    (run_dir / "members" / "member-0" / "notes.txt").write_text("local notes")
    (run_dir / "eval" / "private").symlink_to(run_dir.parent, target_is_directory=True)
    result = push_to_hub(run_dir, "alice/allow-list", token=HUB_TOKEN, endpoint=hub.url)
    files = hub.files("alice/allow-list")
    assert sorted(files) == sorted([*result.files, ".gitattributes"])
    assert not [p for p in files if "id_rsa" in p or "notes" in p or "private" in p]
    assert all(SECRET not in data for data in files.values())
    # a link under a published name (a plot, a member's weights) is refused before anything is created
    (run_dir / "eval" / "leak.png").symlink_to(run_dir.parent / "id_rsa")
    with pytest.raises(ValueError, match=r"eval/leak.png is a symbolic link") as info:
        push_to_hub(run_dir, "alice/refused", token=HUB_TOKEN, endpoint=hub.url)
    assert "\n" not in str(info.value)
    (run_dir / "eval" / "leak.png").unlink()
    weights = run_dir / "members" / "member-2" / "model.safetensors"
    weights.rename(run_dir.parent / "weights.safetensors")
    weights.symlink_to(run_dir.parent / "weights.safetensors")
    with pytest.raises(ValueError, match=r"member-2/model.safetensors is a symbolic link"):
        push_to_hub(run_dir, "alice/refused", token=HUB_TOKEN, endpoint=hub.url)
    assert not hub.repo_exists("alice/refused")


def test_run_never_evaluated_is_refused_unless_members_are_averaged(hub, tmp_path, capsys):
    from hf_starsse.run_folder import RunFolder

    run_dir = make_tiny_run(tmp_path / "run", num_members=3, with_eval=False)
    capsys.readouterr()
    assert cli_main(["push", str(run_dir), "alice/raw", "--token", HUB_TOKEN]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was never evaluated" in err and "--average-members" in err
    assert "hf-starsse evaluate" in err and hub.requests == []
    assert cli_main(["push", str(run_dir), "alice/raw", "--token", HUB_TOKEN, "--average-members"]) == 0
    files = hub.files("alice/raw")
    members = RunFolder(run_dir).member_paths(RunFolder(run_dir).read_manifest())
    (tmp_path / "root.safetensors").write_bytes(files["model.safetensors"])
    root = load_file(str(tmp_path / "root.safetensors"))
    expected = uniform_soup(members)
    assert root.keys() == expected.keys() and all(torch.equal(root[k], expected[k]) for k in root)
    card = files["README.md"].decode()
    assert "plain average of the members" in card and "model-index" not in card
    assert not [p for p in files if p.startswith("eval/")] and "soup.json" not in files


def test_greedy_soup_needs_an_evaluation_with_it_and_a_soup_of_another_evaluation_is_refused(hub, tmp_path):
    run_dir = make_tiny_run(tmp_path / "run", num_members=3)
    with pytest.raises(ValueError, match=r"has no greedy soup .* `hf-starsse evaluate .* --soup greedy`"):
        push_to_hub(run_dir, "alice/greedy", soup="greedy", token=HUB_TOKEN, endpoint=hub.url)
    report = run_dir / "eval" / "eval.json"
    report.write_text(report.read_text().replace("tiny-evaluation-0001", "a-later-evaluation"))
    with pytest.raises(ValueError, match="come from different evaluations"):
        push_to_hub(run_dir, "alice/greedy", token=HUB_TOKEN, endpoint=hub.url)
    assert hub.requests == []


def test_a_hub_manifest_with_a_path_out_of_the_members_is_refused_when_loading(hub, tmp_path):
    from huggingface_hub import HfApi

    run_dir = make_tiny_run(tmp_path / "run", num_members=2)
    push_to_hub(run_dir, "alice/remote-manifest", token=HUB_TOKEN, endpoint=hub.url)
    data = json.loads((run_dir / "ensemble.json").read_text())
    data["members"][1]["path"] = "../other-repo"
    HfApi(endpoint=hub.url, token=HUB_TOKEN).upload_file(
        path_or_fileobj=json.dumps(data).encode(), path_in_repo="ensemble.json", repo_id="alice/remote-manifest"
    )
    expected = r"alice/remote-manifest/ensemble.json members\[1\].path should be `members/member-<i>` inside the run"
    with pytest.raises(ValueError, match=expected):
        EnsembleForImageClassification.from_pretrained("alice/remote-manifest", cache_dir=tmp_path / "cache")

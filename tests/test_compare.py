"""`hf-starsse compare`: runs on the offline demo setup and writes the table, the JSON and the plot."""

from hf_starsse.cli import main as cli_main
from hf_starsse.compare import CompareConfig

import json

import pytest


def test_compare_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "compare"
    code = cli_main(
        ["compare", "--output-dir", str(out), "--methods", "fge,swag", "--num-members", "2", "--epochs", "1"]
        + ["--train-per-class", "3", "--image-size", "32", "--max-test-examples", "200"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| fge | 2 |" in printed and "| swag | 2 |" in printed
    rows = json.loads((out / "compare_results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["fge", "swag"]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["nll"] > 0 and 0 <= r["ece"] <= 1 and 0 <= r["soup_accuracy"] <= 1
        # member 0 (1 step: 30 images, full batches of 16 only) + the method's >= 2 steps: matched budgets
        assert r["train_steps"] >= 3
        assert r["wall_time_s"] > 0
    assert (out / "compare.png").stat().st_size > 1000
    assert (out / "compare_table.md").read_text().startswith("| method |")
    # the post-hoc runs start from the shared member 0, written as a 1-member Local DE run
    assert (out / "member0" / "ensemble.json").is_file() and (out / "fge" / "ensemble.json").is_file()


def test_compare_rejects_unknown_methods_and_finished_outputs(tmp_path):
    with pytest.raises(ValueError, match="`methods`.*'mc_dropout'"):
        CompareConfig(output_dir=str(tmp_path), methods=("fge", "mc_dropout"))
    with pytest.raises(ValueError, match="`num_members`"):
        CompareConfig(output_dir=str(tmp_path), num_members=1)
    (tmp_path / "compare_results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="`output_dir`"):
        CompareConfig(output_dir=str(tmp_path))

"""Model cards rendered from hf_starsse/model_cards/*.md with `ModelCard.from_template`."""

from hf_starsse.manifest import EnsembleManifest, MemberRecord
from hf_starsse.model_card import build_member_card, build_model_card

import json

import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData
from tiny_run import make_tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("card") / "run", num_members=3)


def _metrics(card: ModelCard) -> dict[str, float]:
    return {r.metric_name: r.metric_value for r in card.data.eval_results or []}


def _reload(card: ModelCard, tmp_path) -> ModelCard:
    path = tmp_path / "README.md"
    card.save(path)
    return ModelCard.load(path, ignore_metadata_errors=False)


def test_full_card_parses_validates_and_holds_ensemble_and_soup_accuracy(run_dir, tmp_path):
    manifest = EnsembleManifest.load(run_dir)
    eval_results = json.loads((run_dir / "eval" / "eval.json").read_text())
    card = build_model_card(
        manifest,
        repo_id="alice/tiny-starsse",
        eval_results=eval_results,
        plots=["eval/metric_vs_size.png"],
        license="apache-2.0",
        base_model="google/vit-base-patch16-224-in21k",
    )
    loaded = _reload(card, tmp_path)
    data = loaded.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert data.license == "apache-2.0" and data.base_model == "google/vit-base-patch16-224-in21k"
    assert data.datasets == ["tiny-random"]
    assert {"star_sse", "starsse", "ensemble", "model-soup", "arxiv:2303.03374"} <= set(data.tags)
    # model-index: the root soup, the ensemble, then every member, parsed back into EvalResults
    metrics = _metrics(loaded)
    assert metrics["Ensemble (3 members) accuracy"] == 0.4
    assert metrics["Uniform soup (repository root) accuracy"] == 0.375
    assert metrics["Ensemble (3 members) nll"] == 1.2 and metrics["Ensemble (3 members) ece"] == 0.05
    assert metrics["Ensemble (3 members) diversity"] == 31.5
    assert [metrics[f"Member {i} accuracy"] for i in range(3)] == [0.25, 0.3, 0.35]
    names = [r.metric_name for r in data.eval_results]
    assert names[:3] == [f"Uniform soup (repository root) {m}" for m in ("accuracy", "nll", "ece")]
    assert names[3].startswith("Ensemble (3 members)")
    assert not [n for n in names if "runtime" in n or "flos" in n]
    assert {r.dataset_type for r in data.eval_results} == {"tiny-random"}
    assert {r.dataset_split for r in data.eval_results} == {"test"}
    raw = yaml.safe_load(str(card).split("---")[1])
    assert raw["model-index"][0]["name"] == "tiny-starsse"
    assert len(raw["model-index"][0]["results"][0]["metrics"]) == 3 + 4 + 3 * 3
    # the metadata validates: rebuilding ModelCardData from it re-runs the library's checks
    ModelCardData(**data.to_dict())

    text = loaded.text
    assert "StarSSE (the paper's method)" in text
    assert "| learning_rate | 0.5 |" in text and "| cycle_lr_ratio | 1.0 |" in text
    assert "| Ensemble (3 members) | 0.4000 | 1.2000 | 0.0500 | 31.5000 |" in text
    assert "| 3 | 0.4000 | 1.2700 | 20.0000 | 0.3700 | 1.3000 |" in text  # ensemble-vs-size table
    assert "![metric vs size](eval/metric_vs_size.png)" in text
    assert 'from_pretrained("alice/tiny-starsse", subfolder="members/member-0")' in text
    assert 'EnsembleForImageClassification.from_pretrained("alice/tiny-starsse")' in text
    assert "arXiv 2303.03374" in text and "eprint={2303.03374}" in text
    assert "None" not in str(card)


def test_card_validates_on_the_hub_endpoint(hub, run_dir):
    card = build_model_card(EnsembleManifest.load(run_dir), repo_id="alice/x")
    card.validate()  # POST /api/validate-yaml through the real client


def test_card_with_every_optional_input_missing_still_renders(tmp_path):
    card = build_model_card()
    loaded = _reload(card, tmp_path)
    assert loaded.data.library_name == "transformers" and loaded.data.pipeline_tag == "image-classification"
    assert loaded.data.eval_results is None and "model-index" not in str(card)
    assert "No evaluation results were recorded" in loaded.text and "Not recorded" in loaded.text
    assert "## Citation" in loaded.text and "None" not in str(card)
    ModelCardData(**loaded.data.to_dict())


def test_card_of_a_run_not_evaluated_has_no_results_and_skips_local_paths(tmp_path):
    manifest = EnsembleManifest(
        strategy="sse",
        num_members=2,
        hyperparameters={"learning_rate": 0.01, "hub_token": "hf_secret_value_123"},
        base_models=["/home/me/checkpoints/byol"],
        members=[
            MemberRecord(0, "members/member-0", 1, None, "/home/me/checkpoints/byol", 0.01, 10, 1.0),
            MemberRecord(
                1, "members/member-1", 2, 0, "member-0", 0.01, 10, 1.0, metrics={"eval_accuracy": 0.5, "total_flos": 9}
            ),
        ],
    )
    card = build_model_card(manifest, eval_results={"unrelated": [1, 2]}, root="members-average")
    loaded = _reload(card, tmp_path)
    assert loaded.data.base_model is None  # a local path is not valid `base_model` metadata
    assert loaded.data.eval_results is None  # training-time metrics are not evaluation results
    assert "not evaluated" in loaded.text and "flos" not in str(card)
    # a class name is not a Hub id either
    manifest.base_models = ["ResNetForImageClassification"]
    assert build_model_card(manifest).data.base_model is None
    assert "Snapshot Ensemble (SSE)" in loaded.text and "sse" in loaded.data.tags
    assert "hub_token" not in str(card) and "hf_secret_value_123" not in str(card)


def test_member_card_renders(run_dir, tmp_path):
    manifest = EnsembleManifest.load(run_dir)
    card = build_member_card(manifest, 1, repo_id="alice/run-member-1", ensemble_repo="alice/run")
    loaded = _reload(card, tmp_path)
    assert _metrics(loaded) == {"Member 1 accuracy": 0.3, "Member 1 loss": 1.29}
    assert "[alice/run](https://huggingface.co/alice/run)" in loaded.text and "one cycle from member 0" in loaded.text
    assert "None" not in str(build_member_card(None, 0))

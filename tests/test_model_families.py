"""`load_classifier` on tiny offline checkpoints of every family: a 2-member StarSSE trains on each; CLIP's zero-shot
head reproduces CLIP's image-text logits."""

from hf_starsse import EnsembleManifest, EnsembleTrainer, EnsembleTrainingArguments, member_dir
from hf_starsse.model_loading import load_classifier, make_model_init, zero_shot_head_weights
from hf_starsse.modeling_clip_classifier import CLIPVisionForImageClassification

import pickle

import pytest
import torch
from ensemble_fixtures import IMAGE_SIZE, make_image_dataset
from recipe_fixtures import CLASS_NAMES, make_checkpoint
from transformers import AutoModelForImageClassification, AutoTokenizer, CLIPModel

FAMILIES = ["resnet", "vit", "swin", "clip", "timm"]
EXPECTED_CLASS = {
    "resnet": "ResNetForImageClassification",
    "vit": "ViTForImageClassification",
    "swin": "SwinForImageClassification",
    "clip": "CLIPVisionForImageClassification",
    "timm": "TimmWrapperForImageClassification",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_star_sse_trains_every_family(tmp_path, family):
    checkpoint = make_checkpoint(tmp_path / family, family)
    kwargs = {"clip_zero_shot_class_names": CLASS_NAMES, "prompt_templates": ["a photo of a {}."]}
    model_init = make_model_init(checkpoint, 4, **(kwargs if family == "clip" else {}))
    pickle.dumps(model_init)  # picklable (spawned dataloader workers, hyper-parameter search)
    model = model_init()
    assert type(model).__name__ == EXPECTED_CLASS[family] and model.config.num_labels == 4
    start = {k: v.clone() for k, v in model.state_dict().items()}
    args = EnsembleTrainingArguments(
        output_dir=str(tmp_path / "run"),
        ensemble_strategy="star_sse",
        num_members=2,
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=0.01,
        optim="adamw_torch",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_strategy="no",
    )
    EnsembleTrainer(model_init=model_init, args=args, train_dataset=make_image_dataset(32)).train()
    manifest = EnsembleManifest.load(tmp_path / "run")
    assert [m.parent for m in manifest.members] == [None, 0]
    members = [AutoModelForImageClassification.from_pretrained(member_dir(tmp_path / "run", i)) for i in range(2)]
    states = [m.state_dict() for m in members]
    for i, state in enumerate(states):
        assert type(members[i]).__name__ == EXPECTED_CLASS[family]
        changed = [k for k in start if start[k].is_floating_point() and not torch.equal(state[k], start[k])]
        assert len(changed) > len(start) // 3, f"member {i}: only {len(changed)} of {len(start)} tensors changed"
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])
    with torch.no_grad():
        logits = members[1](pixel_values=torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)).logits
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()


def test_fresh_head_is_seeded(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "resnet", "resnet")
    heads = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        heads.append(load_classifier(checkpoint, 4).classifier[-1].weight.detach().clone())
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])


def test_clip_zero_shot_head_equals_clip_logits(tmp_path):
    """With one template the head's logits are exactly CLIP's `logits_per_image` for the prompts; with several, they
    are logit_scale * cos(image, renormalised mean of the normalised prompt embeddings) (model-soups)."""
    checkpoint = make_checkpoint(tmp_path / "clip", "clip")
    clip, tokenizer = CLIPModel.from_pretrained(checkpoint).eval(), AutoTokenizer.from_pretrained(checkpoint)
    pixels = torch.randn(6, 3, IMAGE_SIZE, IMAGE_SIZE)

    model = load_classifier(
        checkpoint, 4, clip_zero_shot_class_names=CLASS_NAMES, prompt_templates=["a photo of a {}."]
    )
    assert isinstance(model, CLIPVisionForImageClassification)
    prompts = tokenizer([f"a photo of a {n}." for n in CLASS_NAMES], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = clip(**prompts, pixel_values=pixels).logits_per_image
        got = model.eval()(pixel_values=pixels).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))

    templates = ["a photo of a {}.", "art of the {}.", "a {} in a video game."]
    model = load_classifier(checkpoint, 4, clip_zero_shot_class_names=CLASS_NAMES, prompt_templates=templates)
    with torch.no_grad():
        image = clip.get_image_features(pixel_values=pixels)
        image = getattr(image, "pooler_output", image)
        image = image / image.norm(dim=-1, keepdim=True)
        rows = []
        for name in CLASS_NAMES:
            tokens = tokenizer([t.format(name) for t in templates], padding=True, return_tensors="pt")
            text = clip.get_text_features(**tokens)
            text = getattr(text, "pooler_output", text)
            mean = (text / text.norm(dim=-1, keepdim=True)).mean(0)
            rows.append(mean / mean.norm())
        expected = clip.logit_scale.exp() * image @ torch.stack(rows).T
        got = model.eval()(pixel_values=pixels).logits
    assert torch.allclose(got, expected, atol=1e-5)
    weight = zero_shot_head_weights(clip, tokenizer, CLASS_NAMES, templates)
    assert torch.allclose(weight.norm(dim=-1), clip.logit_scale.exp().expand(4), rtol=1e-5)  # renormalised rows

    # a fine-tuned member saved and reloaded through the Auto class keeps its head
    model.save_pretrained(tmp_path / "member")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "member").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(pixel_values=pixels).logits, got, atol=1e-6)


def test_unknown_model_offline_is_one_line(tmp_path):
    with pytest.raises(ValueError) as err:
        load_classifier("nobody-here/no-such-model", 4)
    message = str(err.value)
    assert "nobody-here/no-such-model" in message and "\n" not in message
    with pytest.raises(ValueError, match="`clip_zero_shot_class_names` needs a CLIP checkpoint"):
        load_classifier(make_checkpoint(tmp_path / "vit", "vit"), 4, clip_zero_shot_class_names=CLASS_NAMES)

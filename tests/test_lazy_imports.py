"""`import hf_starsse` is light, exposes every public name lazily, and still registers the Auto classes in time."""

from __future__ import annotations

import hf_starsse

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_every_public_name_imports():
    for name in hf_starsse.__all__:
        assert getattr(hf_starsse, name) is not None, name
    assert set(hf_starsse.__all__) <= set(dir(hf_starsse))


def test_import_is_light_and_applies_the_torchvision_shim_first():
    out = _run(
        """
        import sys
        import hf_starsse
        print(sorted(m for m in ("torch", "torchvision", "transformers") if m in sys.modules))
        import torchvision.transforms  # through the shim: works on the CPU torch + CUDA torchvision stack
        print(type(torchvision.__spec__.loader).__name__, hf_starsse.ensure_torchvision_importable() in (True, False))
        """
    )
    assert out.splitlines() == ["[]", "SourceFileLoader True"]


def test_auto_classes_registered_after_plain_import(tmp_path):
    from hf_starsse.modeling_ensemble import EnsembleForImageClassification

    from run_folder_helpers import IMAGE_SIZE, image_processor, tiny_model

    folder = tmp_path / "ensemble"
    EnsembleForImageClassification.from_members([tiny_model("vit", 0), tiny_model("vit", 1)]).save_pretrained(folder)
    image_processor().save_pretrained(folder)
    out = _run(
        f"""
        import hf_starsse
        from PIL import Image
        from transformers import AutoModelForImageClassification, pipeline

        model = AutoModelForImageClassification.from_pretrained({str(folder)!r})
        classifier = pipeline("image-classification", model={str(folder)!r})
        print(type(model).__name__, type(classifier.model).__name__, model.num_members)
        print(classifier(Image.new("RGB", ({IMAGE_SIZE}, {IMAGE_SIZE})))[0]["label"].startswith("LABEL_"))
        """
    )
    assert out.splitlines() == ["EnsembleForImageClassification EnsembleForImageClassification 2", "True"]


def test_registration_survives_model_module_imported_first():
    # `modeling_clip` imports `modeling_layers`, which imports the auto module half-way through its own import.
    out = _run(
        """
        import hf_starsse
        import transformers.models.clip.modeling_clip
        from transformers import CLIPVisionConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING as mapping
        print(mapping[CLIPVisionConfig].__name__)
        """
    )
    assert out == "CLIPVisionForImageClassification"

"""`CLIPVisionForImageClassification`: CLIP's image tower (with its projection) and a linear head on the normalised
image embedding, the model-soups `ImageClassifier` layout, so the head can start as a zero-shot classifier."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForImageClassification, CLIPVisionConfig, CLIPVisionModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.clip.modeling_clip import CLIPPreTrainedModel


class CLIPVisionForImageClassification(CLIPPreTrainedModel):
    r"""
    CLIP vision tower + `visual_projection` + a linear head over the L2-normalised image embedding.

    With `classifier.weight = logit_scale * normalised text embeddings of the class prompts` (see
    [`~hf_starsse.model_loading.zero_shot_head_weights`]) and a zero bias, its logits equal CLIP's image-text
    similarity logits, i.e. the model starts at zero-shot accuracy.

    Args:
        config ([`CLIPVisionConfig`]):
            A CLIP vision config with `projection_dim` and `num_labels`.
    """

    config: CLIPVisionConfig
    config_class = CLIPVisionConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: CLIPVisionConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = CLIPVisionModel._from_config(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.classifier = nn.Linear(config.projection_dim, config.num_labels)
        self.post_init()

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected image embeddings."""
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        embeds = self.visual_projection(pooled)
        return embeds / embeds.norm(p=2, dim=-1, keepdim=True)

    def forward(
        self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs
    ) -> ImageClassifierOutput:
        logits = self.classifier(self.image_embeds(pixel_values))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        return ImageClassifierOutput(loss=loss, logits=logits)


# `AutoModelForImageClassification.from_pretrained(member_dir)` (and pipelines) load saved members of this class once
# `hf_starsse` is imported. `exist_ok`: `CLIPVisionConfig` is a known config of other auto classes.
AutoModelForImageClassification.register(CLIPVisionConfig, CLIPVisionForImageClassification, exist_ok=True)

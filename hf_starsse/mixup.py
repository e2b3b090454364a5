"""Mixup / CutMix training (timm's `Mixup`, soft-target cross-entropy) for the Swin recipe."""

from __future__ import annotations

import torch

from .ensemble_trainer import EnsembleTrainer


class MixupEnsembleTrainer(EnsembleTrainer):
    r"""
    [`EnsembleTrainer`] that mixes training batches with timm's `Mixup` (mixup and / or cutmix, with the label
    smoothing of `args.label_smoothing_factor`) and trains on the soft targets; evaluation is unchanged.

    Args:
        num_labels (`int`): Number of classes.
        mixup_alpha (`float`, *optional*, defaults to 0.8): Mixup Beta parameter (0 disables mixup).
        cutmix_alpha (`float`, *optional*, defaults to 1.0): CutMix Beta parameter (0 disables cutmix).
        kwargs: Everything [`EnsembleTrainer`] takes.
    """

    def __init__(self, *args, num_labels: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, **kwargs):
        from timm.data import Mixup

        super().__init__(*args, **kwargs)
        if mixup_alpha < 0 or cutmix_alpha < 0 or mixup_alpha + cutmix_alpha == 0:
            raise ValueError(
                f"`mixup_alpha` and `cutmix_alpha` should be >= 0 and not both 0, got {mixup_alpha}, {cutmix_alpha}."
            )
        self.mixup = Mixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            label_smoothing=self.args.label_smoothing_factor,
            num_classes=num_labels,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        pixels, labels = inputs["pixel_values"], inputs["labels"]
        if pixels.shape[0] % 2:  # timm's batch mixing pairs examples: drop the odd one out
            pixels, labels = pixels[:-1], labels[:-1]
        pixels, targets = self.mixup(pixels, labels)
        outputs = model(pixel_values=pixels)
        loss = torch.sum(-targets * torch.log_softmax(outputs.logits.float(), dim=-1), dim=-1).mean()
        return (loss, outputs) if return_outputs else loss

"""distill_encoder: MobileSAM's decoupled distillation for any SAM-family teacher and student.

The student's image encoder regresses the teacher's image features (MSE; see maskml.train.distill for the levels
and the projections); the prompt encoder and mask decoder come from the teacher and stay frozen. The teacher's
features are computed once into the embedding cache, so each epoch runs the student only (recipe.cache=false
runs the teacher in every step instead). Validation compares the student with the teacher on held-out images.
"""
from __future__ import annotations

import torch
from torch import nn

from maskml.train.distill import DistillRecipe, embedding_losses
from maskml.train.recipes import register_recipe


@register_recipe("distill_encoder")
class DistillEncoder(DistillRecipe):
    def training_step(self, model: nn.Module, batch: list[dict]) -> dict[str, torch.Tensor]:
        targets = self.targets_of(batch)
        out = embedding_losses(model, self.student_features(model, batch), targets)
        out["loss"] = sum(out.values())
        return out

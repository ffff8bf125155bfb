"""distill_prompt: EdgeSAM's prompt-in-the-loop distillation (its phase 2) for any SAM-family teacher and student.

Per image, up to recipe.max_prompts objects get a box (probability recipe.prob_box; the object's box with
maskml's usual corner noise) or a click drawn from the object; teacher and student decode the same prompts, and
the student's four mask outputs learn the teacher's, thresholded at 0 (5 x BCE + 5 x dice, EdgeSAM's weights, at
the decoder's resolution inside the image). Then, recipe.refine_rounds times, each object gets one more click
drawn from where the student's mask and the teacher's disagree (positive where the teacher sees the object), and
both decode again. The student's image encoder trains; the mask decoder too with recipe.train_decoder=true; the
prompt encoder stays the teacher's. The teacher's image features come from the same cache as distill_encoder's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from maskml.train.distill import DistillRecipe, embedding_losses, frame_masks
from maskml.train.losses import dice_loss, mask_iou
from maskml.train.prompts import noisy_box_points, sample_clicks
from maskml.train.recipes import register_recipe
from maskml.train.recipes.sam_finetune import SamHeads, split_features


@register_recipe("distill_prompt")
class DistillPrompt(DistillRecipe):
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        r = cfg.recipe
        self.max_prompts, self.prob_box = int(r.max_prompts), float(r.prob_box)
        self.rounds = int(r.refine_rounds)
        self.bce_weight, self.dice_weight = float(r.loss.bce), float(r.loss.dice)
        self.embedding_weight = float(r.loss.embedding)

    def set_trainable(self, student: nn.Module) -> None:
        super().set_trainable(student)
        if bool(self.cfg.recipe.train_decoder):
            decoder = student.mask_decoder if hasattr(student, "mask_decoder") else student.sam_mask_decoder
            decoder.requires_grad_(True)

    def training_step(self, model: nn.Module, batch: list[dict]) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        targets = self.targets_of(batch)
        s_features = self.student_features(model, batch)
        teacher_heads, student_heads = SamHeads(self.teacher(device)), SamHeads(model)
        scale = model.image_size / int(self.cfg.teacher.image_size)
        totals: dict[str, torch.Tensor] = {}
        per_image = zip(batch, split_features(targets), split_features(s_features))
        for item, teacher_image, student_image in per_image:
            g = torch.Generator().manual_seed(int(item["seed"]))
            out = self.item_losses(teacher_heads, teacher_image, student_heads, student_image, scale,
                                   item["masks"].to(device), tuple(item["valid_size"]), g)
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + v / len(batch)
        if self.embedding_weight:
            mse = embedding_losses(model, s_features, targets)
            totals.update(mse)
            totals["loss"] = totals["loss"] + self.embedding_weight * sum(mse.values())
        return totals

    def item_losses(self, teacher_heads: SamHeads, teacher_image, student_heads: SamHeads, student_image,
                    scale: float, masks: torch.Tensor, valid: tuple[int, int], g: torch.Generator
                    ) -> dict[str, torch.Tensor]:
        if len(masks) > self.max_prompts:
            masks = masks[torch.randperm(len(masks), generator=g)[:self.max_prompts].to(masks.device)]
        k, size = masks.shape[0], masks.shape[-1]
        device = masks.device
        is_box = (torch.rand(k, generator=g) < self.prob_box).to(device)
        points = torch.zeros(k, 2, 2, device=device)
        labels = torch.full((k, 2), -1, dtype=torch.int64, device=device)
        box_points, box_labels = noisy_box_points(masks, g)
        click_points, click_labels = sample_clicks(masks, None, g)
        points[is_box], labels[is_box] = box_points[is_box], box_labels[is_box]
        points[~is_box, :1], labels[~is_box, :1] = click_points[~is_box], click_labels[~is_box]
        inside = torch.zeros(size, size, dtype=torch.bool, device=device)
        inside[:valid[0], :valid[1]] = True

        totals: dict[str, torch.Tensor] = {}
        for round_index in range(self.rounds + 1):
            with torch.no_grad():
                t_logits, t_iou, _ = teacher_heads.decode(*teacher_image, points, labels, None, None)
            s_logits, _, _ = student_heads.decode(*student_image, points * scale, labels, None, None)
            if s_logits.shape[-2:] != t_logits.shape[-2:]:
                s_logits = F.interpolate(s_logits, t_logits.shape[-2:], mode="bilinear", align_corners=False)
            # both judged inside the image only (the padding is no part of any mask)
            low_inside = F.interpolate(inside[None, None].float(), t_logits.shape[-2:])[0, 0] > 0
            target = (t_logits > 0) & low_inside
            s_inside = s_logits.masked_fill(~low_inside, -1e4)
            bce = F.binary_cross_entropy_with_logits(s_logits, target.float(), reduction="none")
            bce = (bce * low_inside).flatten(2).sum(-1) / low_inside.sum().clamp(min=1)
            round_losses = {"bce": bce.mean(), "dice": dice_loss(s_inside, target).mean(),
                            "agreement": mask_iou(s_inside.detach(), target).mean()}
            for name, value in round_losses.items():
                totals[name] = totals.get(name, 0.0) + value / (self.rounds + 1)
            if round_index == 0:
                totals["agreement_first"] = round_losses["agreement"]
            if round_index == self.rounds:
                break
            # the mask each model shows: the best-scored multi-mask output after one click, else the single one
            single_click = (labels >= 0).sum(1) == 1
            chosen = torch.where(single_click, t_iou[:, 1:].argmax(1) + 1, 0)
            rows = torch.arange(k, device=device)
            t_mask = frame_masks(t_logits[rows, chosen], size) & inside
            s_mask = frame_masks(s_logits.detach()[rows, chosen], size) & inside
            new_points, new_labels = sample_clicks(t_mask, s_mask, g)
            points = torch.cat([points, new_points], dim=1)
            labels = torch.cat([labels, new_labels], dim=1)
        totals["loss"] = self.bce_weight * totals["bce"] + self.dice_weight * totals["dice"]
        return totals

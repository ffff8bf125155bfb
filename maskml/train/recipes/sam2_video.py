"""sam2_video: SAM 2 / 2.1 video training, as the official trainer (sam2/training/model/sam2.py, SAM2Train) with
the MOSE fine-tuning config.

Per clip of recipe.num_frames frames and its objects (all tracked together, as a batch):
- prompts: with probability 1 - prob_mask the clip is prompted with points, else with the ground-truth masks.
  1 to max_cond_frames conditioning frames (the first and random others) get the prompt: the mask, or (point
  clips, per frame) a noisy box with probability prob_box / (1 - prob_mask), else one click in the object;
- point clips get correction clicks on 1 to max_frames_to_correct frames (the conditioning frames, then
  random others): corrections_per_frame clicks each, drawn uniformly from the error of the previous
  prediction (from the ground truth with probability prob_click_from_gt), each step fed the previous step's
  mask logits; a corrected frame becomes a conditioning frame;
- frames are processed as the official trainer does: the conditioning frames first (no memory), then the
  others in time order, each attending to the memory bank that maskml's VideoSession builds (its
  memory_bank: every conditioning frame, the 6 previous frames, object pointers), with the memory encoded
  from each frame's final prediction (sigmoid, not binarised, as in training) by the model's own methods;
  gradients flow through the memories and pointers across the whole clip;
- loss per frame and prediction step (initial + corrections): 20 x focal + dice + IoU (L1, every candidate
  mask) on the best of the candidate masks, + the object-score BCE (target: the object is in view); mask
  terms only for objects in view; summed over frames and steps, divided by the clip's number of objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from maskml.errors import MaskmlError
from maskml.models.sam2.sam2 import FrameFeatures, HeadOutput, Sam2
from maskml.predict.sam2.session import FrameOutput, memory_bank
from maskml.train.losses import LossWeights, mask_losses
from maskml.train.prompts import noisy_box_points, sample_clicks
from maskml.train.recipes import Recipe, register_recipe
from maskml.train.recipes.sam_finetune import build_sam_model


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return low + int(torch.randint(high - low + 1, (), generator=g))


def _chance(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p


def _pick(g: torch.Generator, choices: list[int], k: int) -> list[int]:
    return [choices[i] for i in torch.randperm(len(choices), generator=g)[:k].tolist()]


@dataclass
class ClipPlan:
    """The prompting of one clip: what the official prepare_prompt_inputs draws."""

    num_frames: int
    init_cond: list[int]  # conditioning frames, prompted before any other frame is tracked; the first is 0
    use_points: bool = False  # boxes / clicks (else the ground-truth masks) on the conditioning frames
    box: dict[int, bool] = field(default_factory=dict)  # per conditioning frame of a point clip: box, else click
    correct: list[int] = field(default_factory=list)  # frames given correction clicks (point clips)

    @classmethod
    def draw(cls, num_frames: int, g: torch.Generator, prob_mask: float, prob_box: float, max_cond_frames: int,
             max_frames_to_correct: int) -> "ClipPlan":
        use_points = not _chance(g, prob_mask)
        cond_count = _randint(g, 1, min(max_cond_frames, num_frames))
        init_cond = [0] + _pick(g, list(range(1, num_frames)), cond_count - 1)
        box_given_points = prob_box / max(1e-12, 1 - prob_mask)
        box = {t: use_points and _chance(g, box_given_points) for t in init_cond}
        correct = []
        if use_points:
            count = _randint(g, cond_count, max(cond_count, min(max_frames_to_correct, num_frames)))
            others = [t for t in range(num_frames) if t not in init_cond]
            correct = init_cond + _pick(g, others, count - cond_count)
        return cls(num_frames, init_cond, use_points, box, correct)

    @property
    def order(self) -> list[int]:
        """The conditioning frames first, then the others in time order (as the official trainer)."""
        return self.init_cond + [t for t in range(self.num_frames) if t not in self.init_cond]


def frame_features(features: FrameFeatures, t: int, objects: int) -> FrameFeatures:
    """Frame t of a clip's backbone features, repeated for each object (the model tracks a batch of objects)."""
    expand = lambda x: x[t:t + 1].expand(objects, *x.shape[1:])  # noqa: E731
    return FrameFeatures(expand(features.embedding), features.pos, [expand(h) for h in features.high_res])


def upsample(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Low-resolution mask logits -> the input frame (size x size), as the official trainer's high-res masks."""
    return F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)


def normalise_frames(model: Sam2, frames: torch.Tensor) -> torch.Tensor:
    """(T, 3, S, S) uint8 -> the encoder's input, normalised as the video predictor does."""
    return (frames.float() / 255.0 - model.pixel_mean) / model.pixel_std


@register_recipe("sam2_video")
class Sam2Video(Recipe):
    families = ("sam2",)

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        r = cfg.recipe
        self.num_frames = int(r.num_frames)
        self.max_objects = int(r.max_objects)
        self.prob_mask, self.prob_box = float(r.prob_mask), float(r.prob_box)
        self.max_cond_frames = int(r.max_cond_frames)
        self.max_frames_to_correct = int(r.max_frames_to_correct)
        self.corrections_per_frame = int(r.corrections_per_frame)
        self.prob_click_from_gt = float(r.prob_click_from_gt)
        if not 0 <= self.prob_mask <= 1 or not 0 <= self.prob_box <= 1 - self.prob_mask:
            raise MaskmlError(f"recipe.prob_mask={self.prob_mask} and recipe.prob_box={self.prob_box} must be "
                              f"probabilities with prob_mask + prob_box <= 1 (the rest: a click)")
        if self.num_frames < 1 or self.max_cond_frames < 1 or self.max_frames_to_correct < self.max_cond_frames:
            raise MaskmlError("recipe.num_frames and recipe.max_cond_frames must be at least 1, and "
                              "recipe.max_frames_to_correct at least recipe.max_cond_frames (conditioning frames "
                              "of point clips are always corrected)")
        loss = r.loss
        self.weights = LossWeights(focal=loss.focal, dice=loss.dice, iou=loss.iou, object_score=loss.object_score,
                                   focal_alpha=loss.focal_alpha, focal_gamma=loss.focal_gamma, iou_l1=True,
                                   supervise_all_iou=loss.supervise_all_iou)
        self._videos = None

    # --- model, data, export ---
    def build_model(self) -> nn.Module:
        m = self.cfg.model
        return build_sam_model(m.name, int(m.image_size), OmegaConf.select(m, "checkpoint"), int(self.cfg.seed))

    def _split(self):
        """(training videos, held-out videos): data.val_root's videos, else the last data.val_videos of root."""
        from maskml.train.data.video import open_videos, split_videos, warn_skipped

        if self._videos is None:
            d = self.cfg.data
            videos, skipped = open_videos(d.root, d.layout, min_frames=self.num_frames)
            warn_skipped(skipped, d.root)
            if d.val_root is not None:
                held_out, skipped = open_videos(d.val_root, d.val_layout)
                warn_skipped(skipped, d.val_root)
            else:
                videos, held_out = split_videos(videos, int(d.val_videos))
            if d.val_max_videos is not None:
                held_out = held_out[:int(d.val_max_videos)]
            self._videos = videos, held_out
        return self._videos

    def train_dataset(self):
        return self.clips(self._split()[0])

    def clips(self, videos: list):
        """The recipe's training clips of `videos` (VideoRecords): in time order, at the model's input size."""
        from maskml.train.data.video import VideoClips

        d = self.cfg.data
        return VideoClips(videos, num_frames=self.num_frames, max_objects=self.max_objects,
                          size=int(self.cfg.model.image_size), max_gap=int(d.max_gap), reverse=0.0,
                          on_error=d.on_error)

    def val_dataset(self):
        from maskml.train.data.video import HeldOutVideos

        held_out = self._split()[1]
        if not held_out:
            return None
        d = self.cfg.data
        return HeldOutVideos(held_out, size=d.val_size, max_frames=d.val_max_frames)

    def export(self, model: nn.Module, path: Path) -> None:
        """The official SAM 2 release layout: {"model": state dict}."""
        torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)

    # --- training ---
    def training_step(self, model: nn.Module, batch: list[dict]) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        totals: dict[str, torch.Tensor] = {}
        for item in batch:
            g = torch.Generator().manual_seed(int(item["seed"]))
            out = self.clip_losses(model, item["frames"].to(device), item["masks"].to(device), g)
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + v / len(batch)
        return totals

    def clip_losses(self, model: Sam2, frames: torch.Tensor, masks: torch.Tensor, g: torch.Generator,
                    plan: ClipPlan | None = None) -> dict[str, torch.Tensor]:
        """frames (T, 3, S, S) uint8, masks (T, K, S, S) bool -> the clip's summed losses (see the docstring),
        with prompts as `plan` says (default: drawn from g)."""
        size = model.image_size
        if frames.shape[-2:] != (size, size):
            raise MaskmlError(f"clip frames are {frames.shape[-1]} x {frames.shape[-2]}, the model trains at "
                              f"{size} x {size}: the dataset's size must be model.image_size")
        if plan is None:
            plan = ClipPlan.draw(len(frames), g, self.prob_mask, self.prob_box, self.max_cond_frames,
                                 self.max_frames_to_correct)
        steps = self.track_clip(model, frames, masks, plan, g)
        totals: dict[str, torch.Tensor] = {}
        iou_sum, iou_count = 0.0, 0
        for t, heads in steps.items():
            gt = masks[t]
            present = gt.flatten(1).any(1)
            for head in heads:
                candidates = torch.ones(head.ious.shape, dtype=torch.bool, device=gt.device)
                out = mask_losses(upsample(head.multi_logits, size), head.ious, gt, candidates, self.weights,
                                  head.object_score, present)
                for name in ("loss", "focal", "dice", "iou", "object_score"):
                    totals[name] = totals.get(name, 0.0) + out[name]
            if t not in plan.init_cond:
                final = upsample(heads[-1].logits.detach(), size)[:, 0] > 0
                inter, union = (final & gt).flatten(1).sum(1), (final | gt).flatten(1).sum(1)
                iou_sum = iou_sum + torch.where(union > 0, inter / union.clamp(min=1), 1.0).sum()
                iou_count += len(gt)
        if iou_count:
            totals["tracked_iou"] = torch.as_tensor(iou_sum / iou_count, device=masks.device)
        return totals

    def track_clip(self, model: Sam2, frames: torch.Tensor, masks: torch.Tensor, plan: ClipPlan,
                   g: torch.Generator) -> dict[int, list[HeadOutput]]:
        """Every object of the clip through its frames in plan.order: frame -> the decoder outputs of its
        prediction steps (the prompt or tracking step, then one per correction click), the last one final."""
        size = model.image_size
        num_frames, k = masks.shape[:2]
        features = model.encode_image(normalise_frames(model, frames))
        cond: dict[int, FrameOutput] = {}
        non_cond: dict[int, FrameOutput] = {}
        steps: dict[int, list[HeadOutput]] = {}
        for t in plan.order:
            gt = masks[t]
            f = frame_features(features, t, k)
            points = labels = conditioned = None
            if t in plan.init_cond and not plan.use_points:
                head = model.mask_as_output(f, gt[:, None].float())
            else:
                if t in plan.init_cond:
                    conditioned = model.attend_memory(f, [], [], 0)
                    points, labels = noisy_box_points(gt, g) if plan.box[t] else sample_clicks(gt, None, g)
                else:
                    bank = memory_bank(model, cond, non_cond, t, num_frames, future_pointers=True)
                    conditioned = model.attend_memory(f, *bank)
                head = model.predict_masks(conditioned, f.high_res, points, labels, None,
                                           multimask=labels is None or labels.shape[1] <= 1)
            steps[t] = [head]
            if t in plan.correct:
                for _ in range(self.corrections_per_frame):
                    previous = upsample(head.logits, size)[:, 0] > 0
                    from_gt = _chance(g, self.prob_click_from_gt)
                    new_points, new_labels = sample_clicks(gt, None if from_gt else previous, g)
                    points = new_points if points is None else torch.cat([points, new_points], 1)
                    labels = new_labels if labels is None else torch.cat([labels, new_labels], 1)
                    # the previous step's mask logits go in with the clicks (no detach, as the official trainer)
                    head = model.predict_masks(conditioned, f.high_res, points, labels, head.logits,
                                               multimask=labels.shape[1] <= 1)
                    steps[t].append(head)
            memory = model.encode_memory(f, upsample(head.logits, size), head.object_score, binarize=False)
            output = FrameOutput(head.logits, head.obj_ptr, head.object_score, memory)
            if t in plan.init_cond or t in plan.correct:  # a corrected frame becomes a conditioning frame
                cond[t] = output
            else:
                non_cond[t] = output
        return steps

    # --- validation ---
    def validate(self, model: nn.Module, dataset, device: torch.device) -> dict[str, float]:
        from maskml.train.video_eval import evaluate_videos

        return evaluate_videos(lambda frames, first_masks: track_video(model, frames, first_masks), dataset)


def track_video(model: Sam2, frames: torch.Tensor, first_masks: torch.Tensor) -> torch.Tensor:
    """Semi-supervised tracking with maskml's VideoSession (a track function of maskml.train.video_eval):
    frames (T, 3, H, W) uint8, the objects' masks on the first frame (N, H, W) bool -> (T, H, W) labels."""
    from maskml.predict.sam2.session import VideoSession
    from maskml.train.video_eval import label_map

    session = VideoSession(model, frames.permute(0, 2, 3, 1).cpu().numpy())
    shown = [n for n, mask in enumerate(first_masks) if mask.any()]  # an object may vanish in a resize
    for n in shown:
        session.add_mask(0, n + 1, first_masks[n].cpu())
    masks = torch.zeros(frames.shape[0], *first_masks.shape, dtype=torch.bool)
    if shown:
        for step in session.propagate():
            masks[step.frame_idx, shown] = (step.logits > 0).cpu()
    return label_map(masks)

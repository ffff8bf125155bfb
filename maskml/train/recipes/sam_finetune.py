"""sam_finetune: promptable fine-tuning of SAM (ViT-B/L/H), MobileSAM and SAM 2 / 2.1 in image mode.

Per image, up to recipe.max_objects objects, each prompted as SAM 2's training does (see maskml.train.prompts):
a mask, a noisy box or a click, then recipe.correction_rounds correction clicks for the box and click
objects, each round fed the previous round's mask logits (detached). Loss per round: 20 x focal + dice + IoU
prediction (+ SAM 2's object score) on the best of the candidate masks (the three multi-mask outputs for
zero or one point, else the single one), summed over rounds and averaged over the objects.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from maskml.errors import MaskmlError
from maskml.models.sam import Sam
from maskml.models.sam.tiny_vit import TinyViT
from maskml.train.data.dataset import EvalDataset, TrainDataset, datasets_from_config
from maskml.train.losses import LossWeights, mask_losses
from maskml.train.prompts import BOX, CLICK, MASK, choose_prompt_kinds, noisy_box_points, sample_clicks
from maskml.train.recipes import Recipe, register_recipe


def model_family(model: nn.Module) -> str:
    return "sam" if isinstance(model, Sam) else "sam2"


def build_sam_model(name: str, image_size: int = 1024, checkpoint: str | None = None, seed: int = 0,
                    resize_positions: bool = False) -> nn.Module:
    """A zoo model at `image_size` (MobileSAM and SAM 2 keep their state dict shapes at any multiple of 64),
    with the weights of `checkpoint` (official layout) or seeded random ones. resize_positions: a SAM ViT at
    another size than 1024 gets its 1024 weights with the position embeddings interpolated to its grid (for a
    model that only infers, e.g. a distillation teacher: the weights then no longer fit the official layout)."""
    from maskml.zoo import get_entry, load_state, read_checkpoint

    entry = get_entry(name)
    if image_size % 64 or image_size < 64:
        raise MaskmlError(f"model.image_size must be a multiple of 64 (at least 64), got {image_size}")
    vit = entry.config.get("encoder") == "vit"
    if image_size != 1024 and vit and not resize_positions:
        raise MaskmlError(f"{name} trains at image_size 1024 only (its position embeddings are sized for it); "
                          f"reduced sizes work for mobile_sam and the sam2 models")
    module, function = entry.builder.split(":")
    builder = getattr(importlib.import_module(module), function)
    if image_size != 1024 and vit:
        released = build_sam_model(name, 1024, checkpoint, seed).state_dict()
        model = builder(**entry.config, image_size=image_size)
        model.load_state_dict(resized_positions(released, model.state_dict()))
        model.model_name = name
        return model
    if checkpoint is None:
        torch.manual_seed(seed)  # the deterministic random weights of an untrained model
    model = builder(**entry.config, image_size=image_size)
    if checkpoint is not None:
        load_state(model, entry, read_checkpoint(entry, checkpoint), str(checkpoint))
    model.model_name = name
    return model


def resized_positions(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the ViT's absolute position grid (bicubic) and relative position tables (linear, as the
    attention itself resizes them) interpolated to the shapes of `target`."""
    out = dict(state)
    for key, want in target.items():
        have = state[key]
        if have.shape == want.shape:
            continue
        if key.endswith("pos_embed"):  # (1, g, g, C)
            grid = F.interpolate(have.permute(0, 3, 1, 2), want.shape[1:3], mode="bicubic", align_corners=False)
            out[key] = grid.permute(0, 2, 3, 1).contiguous()
        elif key.rsplit(".", 1)[-1] in ("rel_pos_h", "rel_pos_w"):  # (2g - 1, head_dim)
            out[key] = F.interpolate(have.T[None], size=want.shape[0], mode="linear")[0].T.contiguous()
        else:
            raise MaskmlError(f"{key}: shape {list(have.shape)} cannot be resized to {list(want.shape)}")
    return out


def normalise(model: nn.Module, images: torch.Tensor, valid_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """(B, 3, S, S) uint8 in the input frame -> the encoder's input: normalised as the family's predictor does
    (maskml.predict.image), with the padding at 0 after normalisation as there."""
    x = images.float() if model_family(model) == "sam" else images.float() / 255.0
    x = (x - model.pixel_mean) / model.pixel_std
    inside = torch.zeros_like(x[:, :1], dtype=torch.bool)
    for i, (h, w) in enumerate(valid_sizes):
        inside[i, :, :h, :w] = True
    return x * inside


HIGH_RES = ("high_res_0", "high_res_1")  # SAM 2's stride-4 and stride-8 features for its mask decoder


def image_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalised images (B, 3, S, S) -> what the family's mask decoder reads: {"embedding": (B, C, S/16, S/16)}
    (SAM 2: the single-image, "no memory" embedding) and for SAM 2 the high-res features HIGH_RES."""
    if model_family(model) == "sam":
        return {"embedding": model.image_encoder(x)}
    features = model.encode_image(x)
    return {"embedding": model.attend_memory(features, [], [], 0), **dict(zip(HIGH_RES, features.high_res))}


def split_features(features: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, list[torch.Tensor] | None]]:
    """Batched image_features -> per image (embedding (1, C, h, w), high-res features or None)."""
    high_res = [features[k] for k in HIGH_RES if k in features]
    return [(e[None], [f[i:i + 1] for f in high_res] or None) for i, e in enumerate(features["embedding"])]


# TinyViT's ImageNet classifier, still in MobileSAM's released file (and loaded strictly by its own code),
# unused by maskml: written as zeros when the trained weights do not carry it
TINY_VIT_CLASSIFIER = {"image_encoder.norm_head.weight": (320,), "image_encoder.norm_head.bias": (320,),
                       "image_encoder.head.weight": (1000, 320), "image_encoder.head.bias": (1000,)}


def export_official(model: nn.Module, path: Path, exclude: tuple[str, ...] = ()) -> None:
    """Write `model`'s weights (less the keys starting with `exclude`) in its family's official release layout:
    the plain state dict (SAM, MobileSAM, with TinyViT's classifier) or {"model": state dict} (SAM 2)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(exclude)}
    if model_family(model) == "sam2":
        torch.save({"model": state}, path)
        return
    if isinstance(model.image_encoder, TinyViT):
        for key, shape in TINY_VIT_CLASSIFIER.items():
            state.setdefault(key, torch.zeros(shape))
    torch.save(state, path)


class SamHeads:
    """The prompt encoder and mask decoder of either family, with the image features of one image."""

    def __init__(self, model: nn.Module) -> None:
        self.family = model_family(model)
        self.model = model
        sam = self.family == "sam"
        self.prompt_encoder = model.prompt_encoder if sam else model.sam_prompt_encoder
        self.mask_decoder = model.mask_decoder if sam else model.sam_mask_decoder

    def encode(self, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor] | None]]:
        """Normalised images (B, 3, S, S) -> per image (embedding (1, C, h, w), high-res features or None)."""
        return split_features(image_features(self.model, x))

    def decode(self, embedding, high_res, points: torch.Tensor, labels: torch.Tensor,
               mask_input: torch.Tensor | None, has_mask: torch.Tensor | None):
        """All four mask tokens' low-res logits (K, 4, h, w), IoU predictions (K, 4), object scores (K, 1)."""
        sparse, no_mask = self.prompt_encoder((points, labels), None, None)
        dense = no_mask
        if mask_input is not None:
            dense = torch.where(has_mask[:, None, None, None], self.prompt_encoder.mask_downscaling(mask_input),
                                no_mask)
        masks, iou_pred, _, object_scores = self.mask_decoder._predict_masks(
            embedding, self.prompt_encoder.get_dense_pe(), sparse, dense, high_res, None, slice(None))
        return masks, iou_pred, object_scores


@register_recipe("sam_finetune")
class SamFinetune(Recipe):
    families = ("sam", "sam2")

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        r = cfg.recipe
        self.max_objects = int(r.max_objects)
        self.rounds = int(r.correction_rounds)
        self.prob_mask, self.prob_box = float(r.prob_mask), float(r.prob_box)
        self.prob_click_from_gt = float(r.prob_click_from_gt)
        # BatchNorm (MobileSAM's convolutions) on a batch of one or two images learns statistics that its
        # running averages, used in evaluation, do not match: its statistics stay fixed, its scales train
        self.freeze_batch_norm = bool(OmegaConf.select(r, "freeze_batch_norm", default=True))
        self.weights = None  # set by build_model, once the family is known

    # --- model, data, export ---
    def build_model(self) -> nn.Module:
        m = self.cfg.model
        model = build_sam_model(m.name, int(m.image_size), OmegaConf.select(m, "checkpoint"), int(self.cfg.seed))
        self._set_weights(model)
        return model

    def _set_weights(self, model: nn.Module) -> None:
        r = self.cfg.recipe
        sam2 = model_family(model) == "sam2"
        self.weights = LossWeights(focal=r.loss.focal, dice=r.loss.dice, iou=r.loss.iou,
                                   object_score=r.loss.object_score if sam2 else 0.0,
                                   focal_alpha=r.loss.focal_alpha, focal_gamma=r.loss.focal_gamma,
                                   iou_l1=sam2, supervise_all_iou=r.loss.supervise_all_iou)

    def _family(self) -> str:
        from maskml.zoo import get_entry

        return get_entry(self.cfg.model.name).family

    def train_dataset(self) -> TrainDataset:
        return datasets_from_config(self.cfg.data, self._family(), int(self.cfg.model.image_size))[0]

    def val_dataset(self) -> EvalDataset | None:
        return datasets_from_config(self.cfg.data, self._family(), int(self.cfg.model.image_size))[1]

    def export(self, model: nn.Module, path: Path) -> None:
        """The official release layout: the plain state dict (SAM, MobileSAM) or {"model": state dict} (SAM 2);
        the engine gives a temporary name and renames it."""
        export_official(model, path)

    # --- training ---
    def training_step(self, model: nn.Module, batch: list[dict]) -> dict[str, torch.Tensor]:
        if self.weights is None:
            self._set_weights(model)
        device = next(model.parameters()).device
        if self.freeze_batch_norm:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        heads = SamHeads(model)
        images = torch.stack([item["image"] for item in batch]).to(device)
        x = normalise(model, images, [tuple(item["valid_size"]) for item in batch])
        per_image = heads.encode(x)
        totals: dict[str, torch.Tensor] = {}
        for item, (embedding, high_res) in zip(batch, per_image):
            g = torch.Generator().manual_seed(int(item["seed"]))
            out = self.item_losses(heads, embedding, high_res, item["masks"].to(device), tuple(item["valid_size"]), g)
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + v / len(batch)
        return totals

    def item_losses(self, heads: SamHeads, embedding, high_res, masks: torch.Tensor, valid: tuple[int, int],
                    g: torch.Generator) -> dict[str, torch.Tensor]:
        """Losses of one image's objects over the initial prompt and the correction rounds."""
        n, size = masks.shape[0], masks.shape[-1]
        if n > self.max_objects:
            masks = masks[torch.randperm(n, generator=g)[:self.max_objects].to(masks.device)]
        gt = masks
        k = gt.shape[0]
        device = gt.device
        valid_area = torch.zeros(size, size, dtype=torch.bool, device=device)
        valid_area[:valid[0], :valid[1]] = True
        kinds = choose_prompt_kinds(k, g, self.prob_mask, self.prob_box).to(device)
        # initial prompts, as points padded with label -1: a click, two box corners, or none (mask prompt)
        points = torch.zeros(k, 2, 2, device=device)
        labels = torch.full((k, 2), -1, dtype=torch.int64, device=device)
        box_points, box_labels = noisy_box_points(gt, g)
        click_points, click_labels = sample_clicks(gt, None, g)
        is_box, is_click = kinds == BOX, kinds == CLICK
        points[is_box], labels[is_box] = box_points[is_box], box_labels[is_box]
        points[is_click, :1], labels[is_click, :1] = click_points[is_click], click_labels[is_click]
        low = heads.prompt_encoder.mask_input_size
        gt_low = F.interpolate(gt[:, None].float(), low, mode="bilinear", align_corners=False, antialias=True)
        has_mask = kinds == MASK

        totals: dict[str, torch.Tensor] = {}
        active = torch.arange(k, device=device)  # objects still being corrected
        mask_input = gt_low
        for round_index in range(self.rounds + 1):
            n_points = (labels[active] >= 0).sum(1)
            logits, iou_pred, object_scores = heads.decode(embedding, high_res, points[active], labels[active],
                                                           mask_input, has_mask[active])
            high = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
            multimask = n_points <= 1
            candidates = torch.zeros(len(active), 4, dtype=torch.bool, device=device)
            candidates[multimask, 1:] = True
            candidates[~multimask, 0] = True
            out = mask_losses(high, iou_pred, gt[active], candidates, self.weights,
                              object_scores if heads.family == "sam2" else None)
            share = len(active) / k  # SAM 2 divides every round's sum by the number of objects
            for name, value in out.items():
                totals[name] = totals.get(name, 0.0) + value * share
            if round_index == 0:
                totals["iou_first"] = out["best_iou"]
            totals["iou_last"] = out["best_iou"]
            if round_index == self.rounds:
                break
            # the mask each object shows the user: the best-scored of the multi-mask outputs, or the single one
            chosen = torch.where(multimask, iou_pred[:, 1:].argmax(1) + 1, 0)
            rows = torch.arange(len(active), device=device)
            keep = ~has_mask[active]  # mask-prompted objects get no correction clicks (as SAM 2)
            if not keep.any():
                break
            mask_input = logits[rows, chosen][:, None].detach()[keep]
            pred = (high[rows, chosen].detach() > 0) & valid_area
            active, pred = active[keep], pred[keep]
            from_gt = torch.rand((), generator=g) < self.prob_click_from_gt
            new_points, new_labels = sample_clicks(gt[active], None if from_gt else pred, g)
            points = torch.cat([points, torch.zeros(k, 1, 2, device=device)], dim=1)
            labels = torch.cat([labels, torch.full((k, 1), -1, dtype=torch.int64, device=device)], dim=1)
            points[active, -1:] = new_points
            labels[active, -1:] = new_labels
            has_mask = torch.ones(k, dtype=torch.bool, device=device)  # from now on: the previous logits
        del totals["best_iou"]
        return totals

    # --- validation ---
    def validate(self, model: nn.Module, dataset, device: torch.device) -> dict[str, float]:
        from maskml.eval.interactive import evaluate_interactive

        return evaluate_interactive(model, dataset, max_clicks=int(self.cfg.recipe.val_max_clicks)).metrics()

"""Mask decoder shared by SAM and SAM 2.

SAM 2 adds an object-score token, high-resolution skip features in the upscaler,
a sigmoid IoU head and the stability fallback for single-mask output; each is a
constructor flag, so both families use this one module (and the same keys).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from maskml.models.common import MLP, LayerNorm2d


class DecoderOutput(NamedTuple):
    masks: torch.Tensor  # (B, C, 4h, 4w) low-resolution mask logits
    iou_pred: torch.Tensor  # (B, C) predicted IoU of each mask
    mask_tokens: torch.Tensor  # (B, C', D) output tokens of the selected masks (SAM 2 object pointers)
    object_score_logits: torch.Tensor  # (B, 1) "is there an object" logit (SAM: constant 10)


class MaskDecoder(nn.Module):
    def __init__(self, transformer: nn.Module, transformer_dim: int = 256, num_multimask_outputs: int = 3,
                 iou_head_depth: int = 3, iou_head_hidden_dim: int = 256,
                 use_high_res_features: bool = False, iou_prediction_use_sigmoid: bool = False,
                 dynamic_multimask_via_stability: bool = False, dynamic_multimask_stability_delta: float = 0.05,
                 dynamic_multimask_stability_thresh: float = 0.98, pred_obj_scores: bool = False,
                 pred_obj_scores_mlp: bool = False, use_multimask_token_for_obj_ptr: bool = False) -> None:
        super().__init__()
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth,
                                       sigmoid_output=iou_prediction_use_sigmoid)
        if pred_obj_scores:
            self.pred_obj_score_head = (MLP(transformer_dim, transformer_dim, 1, 3) if pred_obj_scores_mlp
                                        else nn.Linear(transformer_dim, 1))
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.stability_delta = dynamic_multimask_stability_delta
        self.stability_thresh = dynamic_multimask_stability_thresh

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool,
                high_res_features: list[torch.Tensor] | None = None, image_cache: dict | None = None
                ) -> DecoderOutput:
        """image_embeddings (1 or B, C, h, w); image_pe (1, C, h, w); sparse (B, N, C); dense (1 or B, C, h, w).
        A batch of 1 is shared by all B prompts. image_cache: transformer.image_cache(image_embeddings +
        dense, image_pe), valid while the dense embedding is the same for every prompt (no mask prompt)."""
        use_fallback = not multimask_output and self.dynamic_multimask_via_stability and not self.training
        if multimask_output:
            wanted = slice(1, None)
        else:
            wanted = slice(None) if use_fallback else slice(0, 1)
        masks, iou_pred, mask_tokens_out, object_score_logits = self._predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, high_res_features,
            image_cache, wanted)
        if use_fallback:
            masks, iou_pred = stability_fallback(masks, iou_pred, self.stability_delta, self.stability_thresh)
        else:
            iou_pred = iou_pred[:, wanted]
        tokens = select_tokens(mask_tokens_out, multimask_output, self.use_multimask_token_for_obj_ptr)
        return DecoderOutput(masks, iou_pred, tokens, object_score_logits)

    def _predict_masks(self, image_embeddings, image_pe, sparse, dense, high_res_features, image_cache,
                       wanted: slice = slice(None)):
        """Masks of the mask tokens in `wanted` only (each costs a pass over the upscaled pixels); IoU,
        tokens and object score of all."""
        heads = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            heads.insert(0, self.obj_score_token.weight)
        first = 1 if self.pred_obj_scores else 0
        output_tokens = torch.cat(heads).unsqueeze(0).expand(sparse.shape[0], -1, -1)
        tokens = torch.cat([output_tokens, sparse], dim=1)
        src = image_embeddings + dense
        _, c, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens, image_cache)
        iou_token_out = hs[:, first]
        mask_tokens_out = hs[:, first + 1:first + 1 + self.num_mask_tokens]
        # an NCHW view in channels-last memory order: no copy, and the transposed convolutions run
        # several times faster on it than on contiguous NCHW
        src = keys.reshape(hs.shape[0], h, w, c).permute(0, 3, 1, 2)
        if self.use_high_res_features:
            deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            upscaled = act1(norm1(deconv1(src) + feat_s1))
            upscaled = act2(deconv2(upscaled) + feat_s0)
        else:
            upscaled = self.output_upscaling(src)
        mlps = list(enumerate(self.output_hypernetworks_mlps))[wanted]
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in mlps], dim=1)
        b, c, h, w = upscaled.shape
        pixels = upscaled.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view when channels-last
        masks = (pixels @ hyper_in.transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:
            object_score_logits = iou_pred.new_full((iou_pred.shape[0], 1), 10.0)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    @property
    def single_mask_stability(self) -> tuple[float, float] | None:
        """(delta, threshold) of the single-mask stability fallback, None without it."""
        if not self.dynamic_multimask_via_stability:
            return None
        return self.stability_delta, self.stability_thresh


def stability_fallback(masks: torch.Tensor, iou_pred: torch.Tensor, delta: float, thresh: float):
    """Single-mask output that falls back to the best multimask output when token 0 is unstable.
    masks (B, 4, h, w) and iou_pred (B, 4) of all mask tokens -> (B, 1, h, w), (B, 1)."""
    multi_masks, multi_iou = masks[:, 1:], iou_pred[:, 1:]
    best = multi_iou.argmax(dim=-1)
    rows = torch.arange(masks.shape[0], device=masks.device)
    best_masks = multi_masks[rows, best].unsqueeze(1)
    best_iou = multi_iou[rows, best].unsqueeze(1)
    single_masks, single_iou = masks[:, :1], iou_pred[:, :1]
    flat = single_masks.flatten(-2)
    area_inner = (flat > delta).sum(-1).float()
    area_outer = (flat > -delta).sum(-1).float()
    stability = torch.where(area_outer > 0, area_inner / area_outer, 1.0)
    stable = stability >= thresh
    return (torch.where(stable[..., None, None], single_masks, best_masks),
            torch.where(stable, single_iou, best_iou))


def select_tokens(tokens: torch.Tensor, multimask: bool, use_multimask_token: bool) -> torch.Tensor:
    """The output tokens (B, 4, ...) that go with the returned masks (SAM 2's object pointers): those of the
    multimask outputs, or token 0 (also when the stability fallback returns another mask)."""
    return tokens[:, 1:] if multimask and use_multimask_token else tokens[:, :1]


def select_masks(masks: torch.Tensor, iou_pred: torch.Tensor, multimask: bool,
                 stability: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs MaskDecoder.forward returns, chosen from those of all mask tokens (as an exported
    decoder graph gives them): tokens 1-3 for multimask output, else token 0 (or its stability fallback)."""
    if multimask:
        return masks[:, 1:], iou_pred[:, 1:]
    if stability is not None:
        return stability_fallback(masks, iou_pred, *stability)
    return masks[:, :1], iou_pred[:, :1]

"""SAM 2 / SAM 2.1: Hiera image encoder, SAM prompt encoder and mask decoder, memory attention,
memory encoder and object pointers, and the builder used by the zoo.

The model is stateless: each method computes one step of the per-frame work (encode an image,
decode prompts, attend to a given memory bank, encode a new memory). Which memories a frame sees,
and what is stored, is decided by the predictors (maskml.predict.sam2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from maskml.models.common import MLP
from maskml.models.sam.mask_decoder import MaskDecoder
from maskml.models.sam.prompt_encoder import PromptEncoder
from maskml.models.sam.transformer import TwoWayTransformer
from maskml.models.sam2.image_encoder import build_image_encoder
from maskml.models.sam2.memory_attention import MemoryAttention
from maskml.models.sam2.memory_encoder import MemoryEncoder
from maskml.models.sam2.position_encoding import sine_code_1d

NO_OBJECT_LOGIT = -1024.0  # mask logits of a frame where the object is judged absent
PIXEL_MEAN = (0.485, 0.456, 0.406)  # RGB, 0-1 scale
PIXEL_STD = (0.229, 0.224, 0.225)


@dataclass
class FrameFeatures:
    """Backbone output of one image (batch of 1 or B)."""

    embedding: torch.Tensor  # (B, 256, 64, 64) stride-16 features, before any memory conditioning
    pos: torch.Tensor  # (1, 256, 64, 64) their sine position encoding
    high_res: list[torch.Tensor]  # [(B, 32, 256, 256), (B, 64, 128, 128)] for the mask decoder's upscaler


@dataclass
class HeadOutput:
    """Mask decoder output for a batch of B prompts (objects)."""

    multi_logits: torch.Tensor  # (B, M, 256, 256) low-res logits of all returned masks (after no-object gating)
    ious: torch.Tensor  # (B, M) predicted IoU
    logits: torch.Tensor  # (B, 1, 256, 256) the chosen mask (best IoU when M = 3)
    obj_ptr: torch.Tensor  # (B, 256) object pointer of the chosen mask
    object_score: torch.Tensor  # (B, 1) object-presence logit


class Sam2(nn.Module):
    mask_threshold = 0.0

    def __init__(self, image_encoder: nn.Module, version: str = "2.1", num_maskmem: int = 7, image_size: int = 1024,
                 hidden_dim: int = 256, mem_dim: int = 64, max_obj_ptrs: int = 16) -> None:
        super().__init__()
        if version not in ("2.0", "2.1"):
            raise ValueError(f"unknown SAM 2 version {version!r}")
        self.version = version
        self.image_size = image_size
        self.num_maskmem = num_maskmem
        self.max_obj_ptrs = max_obj_ptrs
        self.hidden_dim, self.mem_dim = hidden_dim, mem_dim
        embedding_size = image_size // 16
        # registered in the official order, so state_dict() lists keys as the released files do
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, hidden_dim))  # unused: no_mem_embed is added directly
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, hidden_dim))
        if version == "2.1":  # a learnt "absent" spatial memory (and, below, projected temporal codes for pointers)
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
        self.image_encoder = image_encoder
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.memory_attention = MemoryAttention(hidden_dim, num_layers=4, dim_feedforward=2048, mem_dim=mem_dim)
        self.memory_encoder = MemoryEncoder(hidden_dim, mem_dim)
        self.sam_prompt_encoder = PromptEncoder(hidden_dim, (embedding_size, embedding_size), (image_size, image_size),
                                                mask_in_chans=16)
        # the builder's post-processing options: stability fallback for single-mask outputs
        self.sam_mask_decoder = MaskDecoder(
            TwoWayTransformer(depth=2, embedding_dim=hidden_dim, num_heads=8, mlp_dim=2048,
                              mlp_as_layers=True), transformer_dim=hidden_dim,
            num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256, use_high_res_features=True,
            iou_prediction_use_sigmoid=True, dynamic_multimask_via_stability=True, pred_obj_scores=True,
            pred_obj_scores_mlp=True, use_multimask_token_for_obj_ptr=True)
        self.obj_ptr_proj = MLP(hidden_dim, hidden_dim, hidden_dim, 3)
        if version == "2.1":
            self.obj_ptr_tpos_proj = nn.Linear(hidden_dim, mem_dim)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def encode_image(self, x: torch.Tensor) -> FrameFeatures:
        """(B, 3, 1024, 1024) normalised images -> backbone features."""
        fpn, pos = self.image_encoder(x)
        decoder = self.sam_mask_decoder
        return FrameFeatures(fpn[2], pos[2][:1], [decoder.conv_s0(fpn[0]), decoder.conv_s1(fpn[1])])

    def embed_resized(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(1, 3, 1024, 1024) float image on the 0-1 scale -> the single-image ("no memory") embedding
        (1, 256, 64, 64) and the decoder's high-resolution features. Normalisation happens here so
        that the exported encoder graph, traced from this method, includes it."""
        features = self.encode_image((image - self.pixel_mean) / self.pixel_std)
        return self.attend_memory(features, [], [], 0), features.high_res

    def predict_masks(self, embedding: torch.Tensor, high_res: list[torch.Tensor], points: torch.Tensor | None = None,
                      labels: torch.Tensor | None = None, mask_logits: torch.Tensor | None = None,
                      multimask: bool = False, decoder_cache: dict | None = None) -> HeadOutput:
        """The SAM heads on (memory-conditioned) features. points (B, P, 2) in the 1024 frame with labels (B, P)
        (1 fg, 0 bg, 2/3 box corners); none -> one padding point, as on tracking frames. mask_logits (B, 1, h, w)
        dense mask prompt, resized (antialiased) to 256 x 256 when needed."""
        batch = embedding.shape[0] if points is None else points.shape[0]
        if points is None:
            points = embedding.new_zeros(batch, 1, 2)
            labels = torch.full((batch, 1), -1, dtype=torch.int32, device=embedding.device)
        if mask_logits is not None and mask_logits.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
            mask_logits = F.interpolate(mask_logits.float(), self.sam_prompt_encoder.mask_input_size, mode="bilinear",
                                        align_corners=False, antialias=True)
        sparse, dense = self.sam_prompt_encoder((points, labels), None, mask_logits)
        out = self.sam_mask_decoder(embedding, self.sam_prompt_encoder.get_dense_pe(), sparse, dense,
                                    multimask_output=multimask, high_res_features=high_res,
                                    image_cache=decoder_cache if mask_logits is None else None)
        present = out.object_score_logits > 0
        multi_logits = torch.where(present[:, :, None, None], out.masks, NO_OBJECT_LOGIT)
        tokens = out.mask_tokens
        if multimask:
            best = out.iou_pred.argmax(dim=-1)
            rows = torch.arange(batch, device=best.device)
            logits, token = multi_logits[rows, best].unsqueeze(1), tokens[rows, best]
        else:
            logits, token = multi_logits, tokens[:, 0]
        obj_ptr = self._gate_pointer(self.obj_ptr_proj(token), present.float())
        return HeadOutput(multi_logits, out.iou_pred, logits, obj_ptr, out.object_score_logits)

    def _gate_pointer(self, obj_ptr: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return present * obj_ptr + (1 - present) * self.no_obj_ptr

    def mask_as_output(self, features: FrameFeatures, mask: torch.Tensor) -> HeadOutput:
        """A given binary mask (B, 1, 1024, 1024) becomes the output itself (logits +-10); its pointer comes
        from the SAM heads prompted with the downsampled mask."""
        high = mask.float() * 20.0 - 10.0
        low = F.interpolate(high, (high.shape[-2] // 4, high.shape[-1] // 4), mode="bilinear", align_corners=False,
                            antialias=True)
        head = self.predict_masks(features.embedding, features.high_res, mask_logits=self.mask_downsample(mask.float()))
        present = (mask.flatten(1) > 0).any(dim=1, keepdim=True).float()
        obj_ptr = self._gate_pointer(head.obj_ptr, present)
        return HeadOutput(low, mask.new_ones(mask.shape[0], 1, dtype=torch.float32), low, obj_ptr,
                          present * 20.0 - 10.0)

    def attend_memory(self, features: FrameFeatures, spatial: list[tuple[torch.Tensor, int]],
                      pointers: list[tuple[int, torch.Tensor]], max_pointer_distance: int) -> torch.Tensor:
        """Condition the frame's features on a memory bank.
        spatial: [(memory features (B, 64, 64, 64), temporal slot)], slot num_maskmem - 1 for conditioning
        frames and k - 1 for the frame k steps away; pointers: [(signed distance, obj_ptr (B, 256))], the
        distance normalised by max_pointer_distance for its temporal code. No memory at all -> + no_mem_embed."""
        x = features.embedding
        b, c, h, w = x.shape
        if not spatial and not pointers:
            return x + self.no_mem_embed.view(1, c, 1, 1)
        mem_pos = self.memory_encoder.position_encoding(x[:1, :self.mem_dim]).flatten(2).transpose(1, 2)  # (1, hw, 64)
        memory, memory_pos = [], []
        for feats, slot in spatial:
            memory.append(feats.flatten(2).transpose(1, 2).to(x.dtype))
            memory_pos.append((mem_pos + self.maskmem_tpos_enc[slot].view(1, 1, -1)).expand(b, -1, -1))
        num_pointer_tokens = 0
        if pointers:
            distances = torch.tensor([d for d, _ in pointers], dtype=torch.float32, device=x.device)
            ptrs = torch.stack([p for _, p in pointers], dim=1)  # (B, K, 256)
            if self.version == "2.1":
                codes = self.obj_ptr_tpos_proj(sine_code_1d(distances / max(max_pointer_distance, 1), c))
            else:
                codes = x.new_zeros(len(pointers), self.mem_dim)
            split = c // self.mem_dim  # each pointer is split into `split` tokens of mem_dim channels
            memory.append(ptrs.reshape(b, -1, self.mem_dim))
            memory_pos.append(codes.repeat_interleave(split, dim=0).unsqueeze(0).expand(b, -1, -1))
            num_pointer_tokens = len(pointers) * split
        out = self.memory_attention(x.flatten(2).transpose(1, 2), features.pos.flatten(2).transpose(1, 2),
                                    torch.cat(memory, dim=1), torch.cat(memory_pos, dim=1), num_pointer_tokens)
        return out.transpose(1, 2).reshape(b, c, h, w)

    def encode_memory(self, features: FrameFeatures, mask_logits: torch.Tensor, object_score: torch.Tensor,
                      binarize: bool) -> torch.Tensor:
        """Memory of a frame from its output mask logits (B, 1, 1024, 1024): binarised (prompted frames) or
        sigmoid (tracked frames), scaled to +-10 -> (B, 64, 64, 64)."""
        mask = (mask_logits > 0).float() if binarize else torch.sigmoid(mask_logits)
        memory = self.memory_encoder(features.embedding, mask * 20.0 - 10.0)
        if self.version == "2.1":
            absent = (object_score <= 0).float()[..., None, None]
            memory = memory + absent * self.no_obj_embed_spatial[..., None, None]
        return memory


SAM2_SIZES = ("tiny", "small", "base_plus", "large")


def build_sam2(size: str = "tiny", version: str = "2.1", image_size: int = 1024) -> Sam2:
    """SAM 2 (version "2.0") or SAM 2.1 with a Hiera-T/S/B+/L image encoder; image_size other than 1024
    (a multiple of 64, for training at reduced cost) keeps the state dict shapes."""
    return Sam2(build_image_encoder(size), version=version, image_size=image_size).eval()

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
        # the official initialisation of the learnt embeddings (a model trained from scratch starts from it);
        # drawn last, so the other modules' seeded weights do not move
        for embedding in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr,
                          *([self.no_obj_embed_spatial] if version == "2.1" else [])):
            nn.init.trunc_normal_(embedding, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def encode_image(self, x: torch.Tensor) -> FrameFeatures:
        """(B, 3, 1024, 1024) normalised images -> backbone features."""
        fpn, pos = self.image_encoder(x)
        decoder = self.sam_mask_decoder
        return FrameFeatures(fpn[2], pos[2][:1], [decoder.conv_s0(fpn[0]), decoder.conv_s1(fpn[1])])

    def encode_resized(self, image: torch.Tensor) -> FrameFeatures:
        """(B, 3, 1024, 1024) float images on the 0-1 scale -> backbone features. Normalisation happens
        here so that the exported encoder graph, traced from this method, includes it."""
        return self.encode_image((image - self.pixel_mean) / self.pixel_std)

    def embed_resized(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(1, 3, 1024, 1024) float image on the 0-1 scale -> the single-image ("no memory") embedding
        (1, 256, 64, 64) and the decoder's high-resolution features."""
        features = self.encode_resized(image)
        return self.attend_memory(features, [], [], 0), features.high_res

    def predict_masks(self, embedding: torch.Tensor, high_res: list[torch.Tensor], points: torch.Tensor | None = None,
                      labels: torch.Tensor | None = None, mask_logits: torch.Tensor | None = None,
                      multimask: bool = False, decoder_cache: dict | None = None) -> HeadOutput:
        """The SAM heads on (memory-conditioned) features. points (B, P, 2) in the 1024 frame with labels (B, P)
        (1 fg, 0 bg, 2/3 box corners); none -> one padding point, as on tracking frames. mask_logits (B, 1, h, w)
        dense mask prompt, resized (antialiased) to 256 x 256 when needed."""
        points, labels = prompt_points(points, labels, embedding)
        mask_logits = mask_prompt(mask_logits, self.sam_prompt_encoder.mask_input_size)
        sparse, dense = self.sam_prompt_encoder((points, labels), None, mask_logits)
        out = self.sam_mask_decoder(embedding, self.sam_prompt_encoder.get_dense_pe(), sparse, dense,
                                    multimask_output=multimask, high_res_features=high_res,
                                    image_cache=decoder_cache if mask_logits is None else None)
        return head_output(out.masks, out.iou_pred, self.object_pointers(out.mask_tokens, out.object_score_logits),
                           out.object_score_logits, multimask)

    def object_pointers(self, mask_tokens: torch.Tensor, object_score: torch.Tensor) -> torch.Tensor:
        """Object pointers (B, M, 256) of the mask decoder's output tokens (B, M, 256): "no object" where the
        object score (B, 1) says the object is absent."""
        return self._gate_pointer(self.obj_ptr_proj(mask_tokens), (object_score > 0).float()[:, None])

    def _gate_pointer(self, obj_ptr: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return present * obj_ptr + (1 - present) * self.no_obj_ptr

    def mask_as_output(self, features: FrameFeatures, mask: torch.Tensor) -> HeadOutput:
        """A given binary mask (B, 1, 1024, 1024) becomes the output itself (logits +-10); its pointer comes
        from the SAM heads prompted with the downsampled mask."""
        return mask_output(mask, self.mask_pointer(features.embedding, *features.high_res, mask))

    def mask_pointer(self, embedding: torch.Tensor, high_res_0: torch.Tensor, high_res_1: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """The object pointer (B, 256) of a given binary mask (B, 1, 1024, 1024) on raw backbone features."""
        head = self.predict_masks(embedding, [high_res_0, high_res_1], mask_logits=self.mask_downsample(mask.float()))
        return self._gate_pointer(head.obj_ptr, mask_present(mask))

    def attend_memory(self, features: FrameFeatures, spatial: list[tuple[torch.Tensor, int]],
                      pointers: list[tuple[int, torch.Tensor]], max_pointer_distance: int) -> torch.Tensor:
        """Condition the frame's features on a memory bank.
        spatial: [(memory features (B, 64, 64, 64), temporal slot)], slot num_maskmem - 1 for conditioning
        frames and k - 1 for the frame k steps away; pointers: [(signed distance, obj_ptr (B, 256))], the
        distance normalised by max_pointer_distance for its temporal code. No memory at all -> + no_mem_embed."""
        x = features.embedding
        if not spatial and not pointers:
            return x + self.no_mem_embed.view(1, -1, 1, 1)
        return self.condition_on_memory(x, features.pos,
                                        *memory_bank_tensors(spatial, pointers, max_pointer_distance, x, self.mem_dim))

    def condition_on_memory(self, x: torch.Tensor, pos: torch.Tensor, memories: torch.Tensor, slots: torch.Tensor,
                            obj_ptrs: torch.Tensor, pointer_positions: torch.Tensor) -> torch.Tensor:
        """attend_memory on tensors (see memory_bank_tensors): x (B, 256, h, w) raw features with their position
        encoding pos (1, 256, h, w); memories (B, S, 64, h, w) with temporal slots (S,) int64; object pointers
        (B, K, 256) at normalised temporal positions (K,). S and K may be 0 (not both)."""
        b, c, h, w = x.shape
        frames, count = memories.shape[1], obj_ptrs.shape[1]
        split = c // self.mem_dim  # each pointer is split into `split` tokens of mem_dim channels
        mem_pos = self.memory_encoder.position_encoding(x[:1, :self.mem_dim]).flatten(2).transpose(1, 2)  # (1, hw, 64)
        # explicit sizes, not -1: S or K may be 0
        memory = memories.flatten(3).transpose(2, 3).reshape(b, frames * h * w, self.mem_dim)
        memory_pos = (mem_pos + self.maskmem_tpos_enc[slots].view(frames, 1, self.mem_dim)).reshape(
            1, frames * h * w, self.mem_dim)
        if self.version == "2.1":
            codes = self.obj_ptr_tpos_proj(sine_code_1d(pointer_positions, c))
        else:
            codes = pointer_positions[:, None].expand(count, self.mem_dim) * 0.0
        pointer_pos = codes[:, None].expand(count, split, self.mem_dim).reshape(1, count * split, self.mem_dim)
        memory = torch.cat([memory, obj_ptrs.reshape(b, count * split, self.mem_dim)], dim=1)
        memory_pos = torch.cat([memory_pos, pointer_pos], dim=1).expand(b, -1, -1)
        out = self.memory_attention(x.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2), memory, memory_pos,
                                    count * split)
        return out.transpose(1, 2).reshape(b, c, h, w)

    def encode_memory(self, features: FrameFeatures, mask_logits: torch.Tensor, object_score: torch.Tensor,
                      binarize: bool) -> torch.Tensor:
        """Memory of a frame from its output mask logits (B, 1, 1024, 1024): binarised (prompted frames) or
        sigmoid (tracked frames), scaled to +-10 -> (B, 64, 64, 64)."""
        return self.memory_from_mask(features.embedding, memory_mask(mask_logits, binarize), object_score)

    def memory_from_mask(self, embedding: torch.Tensor, mask: torch.Tensor, object_score: torch.Tensor) -> torch.Tensor:
        """encode_memory on raw features (B, 256, 64, 64) and a mask (B, 1, 1024, 1024) in [0, 1]."""
        memory = self.memory_encoder(embedding, mask * 20.0 - 10.0)
        if self.version == "2.1":
            absent = (object_score <= 0).float()[..., None, None]
            memory = memory + absent * self.no_obj_embed_spatial[..., None, None]
        return memory


# The parts of the per-frame steps that hold no weights, shared with the ONNX Runtime backend
# (maskml.export.sam2_video), which runs the weighted parts as graphs.

def prompt_points(points: torch.Tensor | None, labels: torch.Tensor | None, embedding: torch.Tensor):
    """predict_masks' clicks, or one padding point (label -1) per object on tracking frames."""
    if points is not None:
        return points, labels
    batch = embedding.shape[0]
    return embedding.new_zeros(batch, 1, 2), torch.full((batch, 1), -1, dtype=torch.int32, device=embedding.device)


def mask_prompt(mask_logits: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """A dense mask prompt (B, 1, h, w) resized (antialiased) to the prompt encoder's size when needed."""
    if mask_logits is None or mask_logits.shape[-2:] == size:
        return mask_logits
    return F.interpolate(mask_logits.float(), size, mode="bilinear", align_corners=False, antialias=True)


def memory_bank_tensors(spatial: list[tuple[torch.Tensor, int]], pointers: list[tuple[int, torch.Tensor]],
                        max_pointer_distance: int, x: torch.Tensor, mem_dim: int):
    """attend_memory's lists as tensors: memories (B, S, mem_dim, h, w) in x's dtype, their slots (S,) int64,
    pointers (B, K, C) and their temporal positions (K,) float32 (distances / max_pointer_distance)."""
    b, c, h, w = x.shape
    memories = (torch.stack([m for m, _ in spatial], dim=1).to(x.dtype) if spatial
                else x.new_zeros(b, 0, mem_dim, h, w))
    slots = torch.tensor([slot for _, slot in spatial], dtype=torch.int64, device=x.device)
    distances = torch.tensor([d for d, _ in pointers], dtype=torch.float32, device=x.device)
    obj_ptrs = torch.stack([p for _, p in pointers], dim=1) if pointers else x.new_zeros(b, 0, c)
    return memories, slots, obj_ptrs, distances / max(max_pointer_distance, 1)


def head_output(masks: torch.Tensor, iou_pred: torch.Tensor, obj_ptrs: torch.Tensor, object_score: torch.Tensor,
                multimask: bool) -> HeadOutput:
    """The mask decoder's chosen outputs (masks (B, M, h, w), iou_pred (B, M), gated object pointers of the
    chosen tokens (B, M', 256), object score (B, 1)) -> the frame's output: masks of absent objects set to
    NO_OBJECT_LOGIT, and with multimask output the mask and pointer of the best predicted IoU."""
    present = object_score > 0
    multi_logits = torch.where(present[:, :, None, None], masks, NO_OBJECT_LOGIT)
    if multimask:
        best = iou_pred.argmax(dim=-1)
        rows = torch.arange(masks.shape[0], device=best.device)
        logits, obj_ptr = multi_logits[rows, best].unsqueeze(1), obj_ptrs[rows, best]
    else:
        logits, obj_ptr = multi_logits, obj_ptrs[:, 0]
    return HeadOutput(multi_logits, iou_pred, logits, obj_ptr, object_score)


def mask_present(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1) 1.0 where the binary mask (B, 1, H, W) has a pixel set."""
    return (mask.flatten(1) > 0).any(dim=1, keepdim=True).float()


def mask_output(mask: torch.Tensor, obj_ptr: torch.Tensor) -> HeadOutput:
    """A given binary mask (B, 1, 1024, 1024) as the frame's output: logits +-10 at 256 x 256, its object
    pointer, and an object score of +-10 by whether the mask is empty."""
    high = mask.float() * 20.0 - 10.0
    low = F.interpolate(high, (high.shape[-2] // 4, high.shape[-1] // 4), mode="bilinear", align_corners=False,
                        antialias=True)
    return HeadOutput(low, mask.new_ones(mask.shape[0], 1, dtype=torch.float32), low, obj_ptr,
                      mask_present(mask) * 20.0 - 10.0)


def memory_mask(mask_logits: torch.Tensor, binarize: bool) -> torch.Tensor:
    """The mask a memory is encoded from: binarised (prompted frames) or the sigmoid (tracked frames)."""
    return (mask_logits > 0).float() if binarize else torch.sigmoid(mask_logits)


SAM2_SIZES = ("tiny", "small", "base_plus", "large")


def build_sam2(size: str = "tiny", version: str = "2.1", image_size: int = 1024) -> Sam2:
    """SAM 2 (version "2.0") or SAM 2.1 with a Hiera-T/S/B+/L image encoder; image_size other than 1024
    (a multiple of 64, for training at reduced cost) keeps the state dict shapes."""
    return Sam2(build_image_encoder(size), version=version, image_size=image_size).eval()

"""The computations that `maskml export` traces into ONNX graphs, built from the same model methods
and functions the PyTorch backends call (maskml.predict.image), so each step is written once.

Encoder graph: the resized image (see ENCODER_INPUT) -> image embeddings (+ SAM 2's high-resolution
features); normalisation (and SAM's padding) inside, the Pillow-exact resize outside (in Python,
maskml.predict.resize: an integer-exact resample that ONNX Resize does not reproduce).
Decoder graph: embeddings, points (B, N, 2) in the 1024 input frame with labels (B, N) (1 object,
0 background, 2 / 3 box corners, -1 padding), mask_input (B, 1, 256, 256) with has_mask_input (1,),
orig_im_size (2,) = (h, w) -> masks (B, 4, h, w) logits at the original size, iou_predictions (B, 4),
low_res_masks (B, 4, 256, 256): the outputs of all four mask tokens, chosen from in Python
(maskml.models.sam.mask_decoder.select_masks) or by the deployment's own code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskml.predict.image import upscale_sam_logits

ENCODER_INPUT = {
    "sam": "float32 (1, 3, h, w): the RGB image resized (Pillow BILINEAR on uint8) so that its longest side is "
           "1024, values 0-255, not normalised, not padded",
    "sam2": "float32 (1, 3, 1024, 1024): the RGB image / 255 resized to 1024 x 1024 (bilinear, antialiased, "
            "aspect ratio not kept), values 0-1, not normalised",
}


class SamEncoderGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.embed_resized(image)


class Sam2EncoderGraph(SamEncoderGraph):
    """Also the raw backbone features (before the "no memory" embedding is added) that the video
    graphs (maskml.export.sam2_video) take, so one encoder serves images and videos."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.model.encode_resized(image)
        embedding = self.model.attend_memory(features, [], [], 0)
        return embedding, *features.high_res, features.embedding


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder (+ upscaling to the original size) for one family.

    upscale=False: the low-resolution graph maskml's ONNX Runtime backend runs (no orig_im_size
    input, no masks output): the predictor upscales only the masks it keeps, while the graph's
    upscaling of all four tokens to the padded 1024 square costs about a fifth of its time even
    for a 1 x 1 original size."""

    def __init__(self, model, family: str, upscale: bool = True) -> None:
        super().__init__()
        self.family = family
        self.upscale = upscale
        self.image_size = model.image_size
        self.prompt_encoder = model.prompt_encoder if family == "sam" else model.sam_prompt_encoder
        self.mask_decoder = model.mask_decoder if family == "sam" else model.sam_mask_decoder

    def forward(self, image_embeddings, *inputs):
        if self.family == "sam2":
            high_res_0, high_res_1, *inputs = inputs
            high_res = [high_res_0, high_res_1]
        else:
            high_res = None
        point_coords, point_labels, mask_input, has_mask_input, *orig_im_size = inputs
        low_res, iou_pred, _, _ = self.heads(image_embeddings, high_res, point_coords, point_labels, mask_input,
                                             has_mask_input)
        if not self.upscale:
            return iou_pred, low_res
        h, w = orig_im_size[0][0], orig_im_size[0][1]
        if self.family == "sam":
            # in float64, as longest_side_shape computes it in Python, so the rounding agrees
            scale = self.image_size / torch.maximum(h, w).double()
            input_size = ((h.double() * scale + 0.5).long(), (w.double() * scale + 0.5).long())
            masks = upscale_sam_logits(low_res, (h, w), input_size, self.image_size)
        else:
            masks = F.interpolate(low_res, (h, w), mode="bilinear", align_corners=False)
        return masks, iou_pred, low_res

    def heads(self, image_embeddings, high_res, point_coords, point_labels, mask_input, has_mask_input):
        """Masks, IoU predictions, output tokens of all mask tokens and the object score."""
        sparse = self.prompt_encoder._embed_points(point_coords, point_labels, pad=False)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask_input * self.prompt_encoder.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask
        return self.mask_decoder._predict_masks(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense,
                                                high_res, None)

"""Promptable segmentation of one image: embed once, then decode any number of prompts.

    predictor = ImagePredictor(maskml.load_model("mobile_sam"))
    predictor.set_image(image)                       # H x W x 3 uint8 RGB
    out = predictor.predict(points=[[430, 310]], labels=[1], multimask=True)
    out.masks, out.scores, out.logits, out.low_res_logits

Coordinates are pixels of the original image (x right, y down). The family-
specific parts (pre-processing, prompt frame, decoding, post-processing) live
in a backend chosen from the model; the predictor validates and packages.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from maskml.errors import MaskmlError
from maskml.predict.checks import as_labels
from maskml.models.sam import Sam
from maskml.models.sam2.sam2 import Sam2
from maskml.predict.resize import longest_side_shape, resize_bilinear_like_pillow
from maskml.runtime import keep_freed_memory


@dataclass
class Prediction:
    """Outputs at image resolution; a leading N axis when several boxes were given."""

    masks: torch.Tensor  # ([N,] C, H, W) bool
    scores: torch.Tensor  # ([N,] C) predicted IoU
    logits: torch.Tensor  # ([N,] C, H, W) float32 mask logits
    low_res_logits: torch.Tensor  # ([N,] C, 256, 256) float32, reusable as mask_input

    def best(self) -> int:
        """Index of the highest-scoring mask (for a single prompt)."""
        return int(self.scores.reshape(-1, self.scores.shape[-1])[0].argmax())


def as_image_tensor(image, device: torch.device) -> torch.Tensor:
    """H x W x 3 uint8 RGB (numpy array or tensor) -> uint8 tensor on `device`, validated."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.array(image, copy=not image.flags.writeable or None, order="C"))
    if not isinstance(image, torch.Tensor):
        raise MaskmlError(f"image must be an H x W x 3 uint8 array or tensor, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise MaskmlError(f"image must be H x W x 3 (RGB), got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        raise MaskmlError(f"image must be uint8 (0-255), got {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise MaskmlError(f"image is empty: shape {tuple(image.shape)}")
    return image.to(device)


def _as_float_array(value, name: str, shape_tail: tuple[int, ...]) -> torch.Tensor:
    """Prompt coordinates as a float64 tensor of shape (..., *shape_tail)."""
    try:
        t = torch.as_tensor(np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64))
    except (TypeError, ValueError):
        raise MaskmlError(f"{name} must be numbers, got {value!r}") from None
    if t.ndim < len(shape_tail) or tuple(t.shape[t.ndim - len(shape_tail):]) != shape_tail:
        want = " x ".join(["N"] + [str(s) for s in shape_tail])
        raise MaskmlError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise MaskmlError(f"{name} must be finite numbers, got {value!r}")
    return t


def prompts_as_points(points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None,
                      pad: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Clicks and boxes as one point set: each box (B, 4) becomes two corner points labelled 2 and 3 in
    front of the clicks; pad appends SAM's "not a point" (label -1). The form SAM 2 and the exported
    decoder graphs take."""
    coords, labels = points if points is not None else (None, None)
    if boxes is not None:
        corners = boxes.reshape(-1, 2, 2)
        corner_labels = torch.tensor([[2, 3]], dtype=torch.int32, device=corners.device).expand(len(corners), -1)
        coords = corners if coords is None else torch.cat([corners, coords.expand(len(corners), -1, -1)], dim=1)
        labels = corner_labels if labels is None else torch.cat([corner_labels, labels.expand(len(corners), -1)],
                                                                dim=1)
    if pad:
        batch = 1 if coords is None else coords.shape[0]
        pad_coords = torch.zeros(batch, 1, 2)
        pad_labels = torch.full((batch, 1), -1, dtype=torch.int32)
        coords = pad_coords if coords is None else torch.cat([coords, pad_coords.to(coords)], dim=1)
        labels = pad_labels if labels is None else torch.cat([labels, pad_labels.to(labels)], dim=1)
    return coords, labels


def upscale_sam_logits(low_res: torch.Tensor, original_size, input_size, image_size: int) -> torch.Tensor:
    """SAM's (B, C, 256, 256) low-res logits -> logits at the original size: up to the padded
    image_size square, padding cropped away, then to the original size. Sizes are ints, or 0-dim
    tensors inside an exported graph."""
    (new_h, new_w), (h, w) = input_size, original_size
    x = F.interpolate(low_res, (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., :new_h, :new_w]
    if isinstance(h, torch.Tensor) or (new_h, new_w) != (h, w):  # at the same size the resize is the identity
        x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False)
    return x


class PromptBackend:
    """What a family's image predictor does around its networks: resize, encode (the image state a prompt's
    decode reuses), map clicks into the input frame, decode, upscale. Each family's subclass is shared with its
    ONNX Runtime backend, which replaces only the networks (encode, decode)."""

    low_res_clamp: float | None = None  # the family's bound on the low-res logits it hands back

    def __init__(self, model) -> None:
        self.model = model
        self.image_size = model.image_size

    def embed(self, image: torch.Tensor) -> dict:
        resized, input_size = self.resize(image)
        return {**self.encode(resized), "original_size": tuple(image.shape[:2]), "input_size": input_size}

    def clamp_low_res(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits as the family hands them back, to show or to feed in as the next mask_input."""
        if self.low_res_clamp is None:
            return low_res
        return low_res.clamp(-self.low_res_clamp, self.low_res_clamp)


class SamBackend(PromptBackend):
    """SAM / MobileSAM: longest side resized to 1024 (Pillow-exact), normalised, padded."""

    def resize(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(H, W, 3) uint8 image -> the encoder's input (1, 3, h, w) float 0-255, and (h, w)."""
        h, w = image.shape[:2]
        input_size = longest_side_shape(h, w, self.image_size)
        resized = resize_bilinear_like_pillow(image, input_size) if input_size != (h, w) else image
        return resized.permute(2, 0, 1)[None].float(), input_size

    @torch.inference_mode()
    def encode(self, resized: torch.Tensor) -> dict:
        """(1, 3, h, w) resized float image, 0-255 -> the decoder's image state."""
        return self.image_state(self.model.embed_resized(resized))

    @torch.inference_mode()
    def image_state(self, embedding: torch.Tensor) -> dict:
        """What the decoder reuses for every prompt on an image with this embedding."""
        dense_pe = self.model.prompt_encoder.get_dense_pe()
        _, no_mask = self.model.prompt_encoder(None, None, None)
        cache = self.model.mask_decoder.transformer.image_cache(embedding + no_mask, dense_pe)
        return {"embedding": embedding, "dense_pe": dense_pe, "decoder_cache": cache}

    def to_input_frame(self, coords: torch.Tensor, state: dict) -> torch.Tensor:
        """(..., 2) float64 original-image pixels -> the resized frame, one factor per axis from the
        rounded resized size (as the official ResizeLongestSide.apply_coords)."""
        (h, w), (new_h, new_w) = state["original_size"], state["input_size"]
        return coords * coords.new_tensor([new_w / w, new_h / h])

    @torch.inference_mode()
    def decode(self, state: dict, points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None,
               mask_input: torch.Tensor | None, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts already in the input frame -> low-res logits (B, C, 256, 256), IoU (B, C)."""
        sparse, dense = self.model.prompt_encoder(points, boxes, mask_input)
        cache = state["decoder_cache"] if mask_input is None else None
        out = self.model.mask_decoder(state["embedding"], state["dense_pe"], sparse, dense,
                                      multimask_output=multimask, image_cache=cache)
        return out.masks, out.iou_pred

    @torch.inference_mode()
    def upscale(self, low_res: torch.Tensor, state: dict) -> torch.Tensor:
        """Low-res logits -> logits at the original image size (padding cropped away)."""
        shape = low_res.shape
        x = upscale_sam_logits(low_res.reshape(-1, 1, *shape[-2:]), state["original_size"], state["input_size"],
                               self.image_size)
        return x.reshape(*shape[:-2], *x.shape[-2:])


class Sam2Backend(PromptBackend):
    """SAM 2 / 2.1: the image resized (float, antialiased) to 1024 x 1024 without keeping the aspect ratio;
    a box becomes two corner points in front of the clicks; returned low-res logits clamped to +-32."""

    low_res_clamp = 32.0

    def resize(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(H, W, 3) uint8 image -> the encoder's input (1, 3, 1024, 1024) float 0-1, and its size."""
        size = (self.image_size, self.image_size)
        x = image.permute(2, 0, 1)[None].float() / 255.0
        return F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True), size

    @torch.inference_mode()
    def encode(self, resized: torch.Tensor) -> dict:
        """(1, 3, 1024, 1024) resized float image, 0-1 -> the decoder's image state."""
        embedding, high_res = self.model.embed_resized(resized)
        prompt_encoder = self.model.sam_prompt_encoder
        dense_pe = prompt_encoder.get_dense_pe()
        _, no_mask = prompt_encoder(None, None, None)
        cache = self.model.sam_mask_decoder.transformer.image_cache(embedding + no_mask, dense_pe)
        return {"embedding": embedding, "high_res": high_res, "dense_pe": dense_pe, "decoder_cache": cache}

    def to_input_frame(self, coords: torch.Tensor, state: dict) -> torch.Tensor:
        h, w = state["original_size"]
        return coords / coords.new_tensor([w, h]) * self.image_size

    @torch.inference_mode()
    def decode(self, state: dict, points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None,
               mask_input: torch.Tensor | None, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        coords, labels = prompts_as_points(points, boxes, pad=False)  # the prompt encoder pads
        sparse, dense = self.model.sam_prompt_encoder((coords, labels) if coords is not None else None, None,
                                                      mask_input)
        cache = state["decoder_cache"] if mask_input is None else None
        out = self.model.sam_mask_decoder(state["embedding"], state["dense_pe"], sparse, dense,
                                          multimask_output=multimask, high_res_features=state["high_res"],
                                          image_cache=cache)
        return out.masks, out.iou_pred

    @torch.inference_mode()
    def upscale(self, low_res: torch.Tensor, state: dict) -> torch.Tensor:
        shape = low_res.shape
        x = F.interpolate(low_res.reshape(-1, 1, *shape[-2:]), state["original_size"], mode="bilinear",
                          align_corners=False)
        return x.reshape(*shape[:-2], *x.shape[-2:])


def backend_for(model) -> PromptBackend:
    if isinstance(model, Sam):
        return SamBackend(model)
    if isinstance(model, Sam2):
        return Sam2Backend(model)
    if hasattr(model, "image_backend"):  # a model of another runtime (maskml.export.runtime) brings its own
        return model.image_backend()
    raise MaskmlError(f"{type(model).__name__} is not an image segmentation model "
                      f"(use a SAM, MobileSAM or SAM 2 model from maskml.load_model)")


class ImagePredictor:
    def __init__(self, model) -> None:
        keep_freed_memory()
        self.model = model
        self.backend = backend_for(model)
        self._state: dict | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    def set_image(self, image) -> None:
        """Compute the image embedding; every later predict() only runs the decoder."""
        self._state = self.backend.embed(as_image_tensor(image, self.device))

    def reset_image(self) -> None:
        self._state = None

    @property
    def is_image_set(self) -> bool:
        return self._state is not None

    def _require_image(self) -> dict:
        if self._state is None:
            raise MaskmlError("no image set: call set_image(image) before predict()")
        return self._state

    @property
    def original_size(self) -> tuple[int, int]:
        return self._require_image()["original_size"]

    @property
    def input_size(self) -> tuple[int, int]:
        return self._require_image()["input_size"]

    def get_image_embedding(self) -> torch.Tensor:
        return self._require_image()["embedding"]

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask: bool = False,
                boxes=None) -> Prediction:
        """points (P, 2) with labels (P,) (1 foreground, 0 background; default all 1); box (4,) as
        x0, y0, x1, y1; mask_input (1, 256, 256) low-res logits of an earlier prediction; or a batch
        boxes (N, 4), optionally with points (N, P, 2) and labels (N, P) -> outputs with a leading N."""
        state = self._require_image()
        if box is not None and boxes is not None:
            raise MaskmlError("give either box (one box) or boxes (a batch), not both")
        batched = boxes is not None
        device = self.device
        box_t = None
        if batched:
            box_t = _as_float_array(boxes, "boxes", (4,)).reshape(-1, 4)
        elif box is not None:
            box_t = _as_float_array(box, "box", (4,)).reshape(1, 4)
        if box_t is not None:
            if ((box_t[:, 2] < box_t[:, 0]) | (box_t[:, 3] < box_t[:, 1])).any():
                raise MaskmlError("a box must be x0, y0, x1, y1 with x1 >= x0 and y1 >= y0")
            box_t = self.backend.to_input_frame(box_t.reshape(-1, 2, 2), state).reshape(-1, 4).float().to(device)
        batch = box_t.shape[0] if box_t is not None else 1

        point_args = None
        if points is not None:
            coords = _as_float_array(points, "points", (2,))
            coords = coords.reshape(batch, -1, 2) if batched else coords.reshape(1, -1, 2)
            if labels is None:
                label_t = torch.ones(coords.shape[:2], dtype=torch.int32)
            else:
                label_t = as_labels(labels, coords.shape[0] * coords.shape[1]).reshape(coords.shape[:2]).int()
            coords = self.backend.to_input_frame(coords, state).float()
            point_args = (coords.to(device), label_t.to(device))
        elif labels is not None:
            raise MaskmlError("labels given without points")

        mask_t = None
        if mask_input is not None:
            try:
                mask_t = mask_input.cpu() if isinstance(mask_input, torch.Tensor) else torch.as_tensor(
                    np.asarray(mask_input))
            except (TypeError, ValueError, RuntimeError):
                mask_t = None
            if mask_t is None or not mask_t.dtype.is_floating_point:
                what = f"a {mask_t.dtype} array" if mask_t is not None else repr(mask_input)
                raise MaskmlError(f"mask_input takes float mask logits (an earlier prediction's low_res_logits), got "
                                  f"{what}: to start from an object's mask, give its points or box instead")
            mask_t = mask_t.float()
            if mask_t.shape[-2:] != (256, 256) or mask_t.numel() != 256 * 256:
                raise MaskmlError(f"mask_input must be 1 x 256 x 256 low-res logits (one of an earlier "
                                  f"prediction's low_res_logits), got shape {tuple(mask_t.shape)}")
            mask_t = mask_t.reshape(1, 1, 256, 256).expand(batch, -1, -1, -1).to(device)

        low_res, scores = self.backend.decode(state, point_args, box_t, mask_t, multimask)
        logits = self.backend.upscale(low_res, state)
        low_res = self.backend.clamp_low_res(low_res)
        masks = logits > 0.0
        if not batched:
            low_res, scores, logits, masks = low_res[0], scores[0], logits[0], masks[0]
        return Prediction(masks=masks, scores=scores, logits=logits, low_res_logits=low_res)

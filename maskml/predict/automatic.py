"""Automatic mask generation ("segment everything"): prompt the model with a grid of points
(optionally over zoomed-in crops), keep confident and stable masks, remove duplicates.

Semantics, defaults and arithmetic follow the official SamAutomaticMaskGenerator, so its
outputs are reproduced (see tests/test_automatic.py), with one exception: points_per_batch defaults
to 16, not 64. The mask decoder's working memory grows by about 22 MB per point decoded together
(1.4 GB at 64, 0.35 GB at 16), for a decoder about a fifth slower per point at 16 (2-core CPU); the
masks do not depend on it (on this x86 CPU the decoder's results are bit-identical for batches of 4
points or more; other BLAS builds may differ in the last bit, as they do from the official code).
"""
from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from maskml.errors import MaskmlError
from maskml.io.rle import compress_rle, decode_rle, encode_rle_compact, rle_area
from maskml.ops.boxes import box_area, masks_to_boxes, nms, xyxy_to_xywh
from maskml.predict.image import ImagePredictor, as_image_tensor

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# float32 pixels of upscaled logits held at once (128 MB): bounds the generator's peak memory at any image size
UPSCALED_PIXELS_AT_ONCE = 2 ** 25


def point_grid(n_per_side: int) -> torch.Tensor:
    """(n*n, 2) cell centres of an n x n grid over [0, 1]^2, row by row, float64.

    The official grid is numpy.linspace(offset, 1 - offset, n); its arithmetic is followed step by
    step so every point is bit-identical: step = (stop - start) / (n - 1) (not (1 - 2 * offset) / (n - 1),
    which rounds differently), i * step + start, and the last point set to stop."""
    start = 1 / (2 * n_per_side)
    stop = 1 - start  # equal to start when n is 1
    side = torch.arange(n_per_side, dtype=torch.float64) * ((stop - start) / max(n_per_side - 1, 1)) + start
    side[-1] = stop
    ys, xs = torch.meshgrid(side, side, indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2)


def crop_boxes(height: int, width: int, n_layers: int, overlap_ratio: float) -> list[tuple[list[int], int]]:
    """[(XYXY crop box, layer)]: the whole image, then 2^k x 2^k overlapping crops per layer k."""
    boxes = [([0, 0, width, height], 0)]
    short_side = min(height, width)
    for layer in range(1, n_layers + 1):
        n = 2 ** layer
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + width) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + height) / n))
        x0s = [int((crop_w - overlap) * i) for i in range(n)]
        y0s = [int((crop_h - overlap) * i) for i in range(n)]
        for x0, y0 in itertools.product(x0s, y0s):
            boxes.append(([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)], layer))
    return boxes


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks thresholded at threshold +- offset (row sums in int16, totals in int32,
    as the official code does, so ties resolve the same way)."""
    inner = (logits > threshold + offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    outer = (logits > threshold - offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return inner / outer


def remove_small_regions(mask: np.ndarray, min_area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes ("holes") or drop islands ("islands") smaller than min_area pixels."""
    holes = mode == "holes"
    working = (holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[1:, -1]
    small = [i + 1 for i, size in enumerate(sizes) if size < min_area]
    if not small:
        return mask, False
    fill = [0] + small
    if not holes:
        fill = [i for i in range(n_labels) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


class AutomaticMaskGenerator:
    def __init__(self, model, points_per_side: int | None = 32, points_per_batch: int = 16,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, point_grids: list | None = None,
                 min_mask_region_area: int = 0, output_mode: str = "binary_mask", progress: bool = False) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise MaskmlError("give exactly one of points_per_side and point_grids")
        if output_mode not in OUTPUT_MODES:
            raise MaskmlError(f"output_mode {output_mode!r} is not one of {', '.join(OUTPUT_MODES)}")
        if points_per_batch < 1:
            raise MaskmlError(f"points_per_batch must be at least 1, got {points_per_batch}")
        if point_grids is not None:
            self.point_grids = [torch.as_tensor(np.asarray(g), dtype=torch.float64) for g in point_grids]
        else:
            if points_per_side < 1 or crop_n_points_downscale_factor < 1 or crop_n_layers < 0:
                raise MaskmlError(f"points_per_side and crop_n_points_downscale_factor must be at least 1 and "
                                  f"crop_n_layers at least 0, got {points_per_side}, "
                                  f"{crop_n_points_downscale_factor} and {crop_n_layers}")
            if points_per_side // crop_n_points_downscale_factor ** crop_n_layers < 1:
                raise MaskmlError(f"points_per_side {points_per_side} leaves no point on crop layer {crop_n_layers} "
                                  f"(divided by {crop_n_points_downscale_factor} per layer): give more points "
                                  f"per side or fewer crop layers")
            self.point_grids = [point_grid(int(points_per_side / crop_n_points_downscale_factor ** layer))
                                for layer in range(crop_n_layers + 1)]
        self.predictor = ImagePredictor(model)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.progress = progress

    @torch.inference_mode()
    def generate(self, image) -> list[dict]:
        """H x W x 3 uint8 RGB -> one record per mask (see README / the official generator)."""
        image = as_image_tensor(image, torch.device("cpu"))
        height, width = image.shape[:2]
        crops = crop_boxes(height, width, self.crop_n_layers, self.crop_overlap_ratio)
        total = sum(math.ceil(len(self.point_grids[layer]) / self.points_per_batch) for _, layer in crops)
        bar = tqdm(total=total, unit="batch", desc="segmenting everything", disable=not self.progress)
        parts = [self._process_crop(image, box, layer, bar) for box, layer in crops]
        bar.close()
        data = _concat(parts)
        if len(crops) > 1 and len(data["rles"]):  # prefer masks from smaller crops
            keep = nms(data["boxes"].float(), 1 / box_area(data["crop_boxes"].float()), self.crop_nms_thresh)
            data = _select(data, keep)
        if self.min_mask_region_area > 0:
            data = self._postprocess_small_regions(data, max(self.box_nms_thresh, self.crop_nms_thresh))
        return [self._record(data, i) for i in range(len(data["rles"]))]

    def _process_crop(self, image: torch.Tensor, crop_box: list[int], layer: int, bar) -> dict:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        self.predictor.set_image(crop)
        state = self.predictor._state
        h, w = crop.shape[:2]
        points = self.point_grids[layer] * torch.tensor([w, h], dtype=torch.float64)
        batches = []
        for start in range(0, len(points), self.points_per_batch):
            batches.append(self._process_batch(points[start:start + self.points_per_batch], state, crop_box,
                                               image.shape[:2]))
            bar.update(1)
        self.predictor.reset_image()
        data = _concat(batches)
        keep = nms(data["boxes"].float(), data["iou_preds"], self.box_nms_thresh)
        data = _select(data, keep)
        offset = torch.tensor([x0, y0, x0, y0])
        data["boxes"] = data["boxes"] + offset
        data["points"] = data["points"] + offset[:2]
        data["crop_boxes"] = torch.tensor([crop_box] * len(data["rles"]), dtype=torch.int64).reshape(-1, 4)
        return data

    def _process_batch(self, points: torch.Tensor, state: dict, crop_box: list[int], image_size) -> dict:
        backend = self.predictor.backend
        device = self.predictor.device
        coords = backend.to_input_frame(points, state).to(device)  # float64, as the official generator
        labels = torch.ones(len(points), 1, dtype=torch.int32, device=device)
        low_res, iou_preds = backend.decode(state, (coords[:, None, :], labels), None, None, multimask=True)
        points = points.repeat_interleave(low_res.shape[1], dim=0)
        low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)  # point-major: point p -> rows 3p..3p+2
        # Each filter judges one mask alone, so the IoU filter can run before the upscaling it does not need.
        if self.pred_iou_thresh > 0.0:
            keep = iou_preds > self.pred_iou_thresh
            low_res, iou_preds, points = low_res[keep], iou_preds[keep], points[keep.cpu()]
        # Upscaled logits are float32 at the crop's size (with SAM's 1024 x 1024 step on the way): a whole
        # batch of them is gigabytes, so a few masks at a time are upscaled, filtered and kept as RLE.
        h, w = state["original_size"]
        per_chunk = max(1, UPSCALED_PIXELS_AT_ONCE // (h * w + backend.image_size ** 2))
        chunks = [self._filter_and_encode(low_res[i:i + per_chunk], iou_preds[i:i + per_chunk],
                                          points[i:i + per_chunk], state, crop_box, image_size)
                  for i in range(0, len(low_res), per_chunk)]
        if not chunks:
            return self._filter_and_encode(low_res, iou_preds, points, state, crop_box, image_size)
        return _concat(chunks)

    def _filter_and_encode(self, low_res: torch.Tensor, iou_preds: torch.Tensor, points: torch.Tensor,
                           state: dict, crop_box: list[int], image_size) -> dict:
        """Upscale, drop unstable masks and masks cut off by the crop edge, RLE-encode at the image size."""
        logits = self.predictor.backend.upscale(low_res, state)
        stability = stability_score(logits, 0.0, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            keep = stability >= self.stability_score_thresh
            logits, iou_preds, stability, points = logits[keep], iou_preds[keep], stability[keep], points[keep.cpu()]
        masks = logits > 0.0
        del logits
        boxes = masks_to_boxes(masks)
        keep = ~_near_crop_edge(boxes, crop_box, [0, 0, image_size[1], image_size[0]])
        masks, boxes, iou_preds, stability, points = (masks[keep], boxes[keep], iou_preds[keep], stability[keep],
                                                      points[keep.cpu()])
        x0, y0, x1, y1 = crop_box
        if [x0, y0, x1, y1] != [0, 0, image_size[1], image_size[0]]:
            masks = F.pad(masks, (x0, image_size[1] - x1, y0, image_size[0] - y1))
        return {"rles": encode_rle_compact(masks.cpu()), "boxes": boxes.cpu(), "iou_preds": iou_preds.float().cpu(),
                "stability_score": stability.float().cpu(), "points": points}

    def _postprocess_small_regions(self, data: dict, nms_thresh: float) -> dict:
        """Fill small holes and drop small islands; masks that changed lose ties in a final NMS.
        One mask is decoded at a time: the changed ones are kept as RLE, not as image-sized arrays."""
        if not data["rles"]:
            return data
        rles, boxes, scores = [], [], []
        for rle in data["rles"]:
            mask = decode_rle(rle).numpy()
            mask, changed_holes = remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, changed_islands = remove_small_regions(mask, self.min_mask_region_area, "islands")
            mask = torch.from_numpy(mask)
            rles.append(encode_rle_compact(mask)[0] if changed_holes or changed_islands else rle)
            boxes.append(masks_to_boxes(mask))
            scores.append(float(not (changed_holes or changed_islands)))
        boxes = torch.stack(boxes)
        keep = nms(boxes.float(), torch.tensor(scores), nms_thresh)
        for i in keep.tolist():
            if scores[i] == 0.0:
                data["rles"][i] = rles[i]
                data["boxes"][i] = boxes[i]
        return _select(data, keep)

    def _record(self, data: dict, i: int) -> dict:
        rle = data["rles"][i]
        if self.output_mode == "coco_rle":
            segmentation = compress_rle(rle)
        elif self.output_mode == "uncompressed_rle":
            segmentation = {"size": rle["size"], "counts": rle["counts"].tolist()}
        else:
            segmentation = decode_rle(rle).numpy()
        return {
            "segmentation": segmentation,
            "area": rle_area(rle),
            "bbox": xyxy_to_xywh(data["boxes"][i]).tolist(),
            "predicted_iou": data["iou_preds"][i].item(),
            "point_coords": [data["points"][i].tolist()],
            "stability_score": data["stability_score"][i].item(),
            "crop_box": xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
        }


def _concat(parts: list[dict]) -> dict:
    return {key: [x for part in parts for x in part[key]] if key == "rles" else torch.cat([p[key] for p in parts])
            for key in parts[0]}


def _select(data: dict, keep: torch.Tensor) -> dict:
    keep_list = keep.tolist()
    return {key: [value[i] for i in keep_list] if key == "rles" else value[keep] for key, value in data.items()}


def _near_crop_edge(boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0):
    """Boxes touching a crop edge that is not also an image edge (those masks are likely cut off)."""
    crop = torch.tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.tensor(image_box, dtype=torch.float32, device=boxes.device)
    shifted = (boxes + torch.tensor([crop_box[0], crop_box[1]] * 2, device=boxes.device)).float()
    near_crop = torch.isclose(shifted, crop[None], atol=atol, rtol=0)
    near_image = torch.isclose(shifted, image[None], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)

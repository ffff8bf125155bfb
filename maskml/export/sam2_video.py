"""SAM 2 video on ONNX Runtime: the graphs of the per-frame steps, and a model object that runs them
behind maskml's VideoSession, Sam2Tracker and Pipeline, unchanged.

The session logic (which memories and pointers a frame sees, conditioning frames, corrections) stays
the one Python implementation in maskml.predict.sam2; it calls the model's steps, which are the
weighted parts of maskml.models.sam2.Sam2 traced into graphs, with the parts that hold no weights
(memory_bank_tensors, head_output, mask_output, ...) shared as functions:

- encoder.onnx (the image graph, maskml.export.graphs.Sam2EncoderGraph): also gives the raw backbone
  features the video steps take;
- memory_attention.onnx: Sam2.condition_on_memory, with S memory frames and K object pointers of
  dynamic length (rotary positions in real arithmetic: cos / sin tables, no complex numbers);
- memory_encoder.onnx: Sam2.memory_from_mask;
- video_decoder.onnx: prompt encoder + mask decoder with the outputs of all 4 mask tokens, their
  object pointers and the object score (chosen from in Python, as maskml.models.sam2.head_output);
- mask_pointer.onnx: Sam2.mask_pointer, the object pointer of a mask given as a prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskml.errors import MaskmlError
from maskml.export.graphs import DecoderGraph
from maskml.export.runtime import OnnxImageModel, _session
from maskml.models.sam.mask_decoder import select_masks, select_tokens
from maskml.models.sam2.sam2 import (FrameFeatures, HeadOutput, head_output, mask_output, mask_prompt,
                                     memory_bank_tensors, memory_mask, prompt_points)
from maskml.predict.image import prompts_as_points

VIDEO_GRAPHS = ("memory_attention", "memory_encoder", "video_decoder", "mask_pointer")
VIDEO_CONVENTIONS = (
    "batch 1 (one object per call). backbone_embeddings: the encoder's raw features (1, 256, 64, 64); "
    "memory_attention: memories (1, S, 64, 64, 64) float32 with memory_slots int64 (S,) (num_maskmem - 1 for "
    "conditioning frames, k - 1 for the frame k steps away), object_pointers (1, K, 256) with pointer_positions "
    "float32 (K,) = frame distance / (max_obj_ptrs - 1) -> conditioned image_embeddings (1, 256, 64, 64); "
    "memory_encoder: mask (1, 1, 1024, 1024) in [0, 1] (binarised or sigmoid of the logits), object_score "
    "(1, 1) -> memory (1, 64, 64, 64); video_decoder: as decoder.onnx without orig_im_size, on conditioned "
    "embeddings -> low_res_masks (1, 4, 256, 256), iou_predictions (1, 4), object_pointers (1, 4, 256), "
    "object_score_logits (1, 1) of all 4 mask tokens; mask_pointer: backbone_embeddings and a binary mask "
    "(1, 1, 1024, 1024) -> its object_pointer (1, 256)")


class MemoryAttentionGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, backbone_embeddings, memories, memory_slots, object_pointers, pointer_positions):
        pos = self.model.image_encoder.neck.position_encoding(backbone_embeddings)[:1]  # a constant of the grid
        return self.model.condition_on_memory(backbone_embeddings, pos, memories, memory_slots, object_pointers,
                                              pointer_positions)


class MemoryEncoderGraph(MemoryAttentionGraph):
    def forward(self, backbone_embeddings, mask, object_score):
        return self.model.memory_from_mask(backbone_embeddings, mask, object_score)


class MaskPointerGraph(MemoryAttentionGraph):
    def forward(self, backbone_embeddings, high_res_feats_0, high_res_feats_1, mask):
        return self.model.mask_pointer(backbone_embeddings, high_res_feats_0, high_res_feats_1, mask)


class VideoDecoderGraph(DecoderGraph):
    def __init__(self, model) -> None:
        super().__init__(model, "sam2")
        self.model = model

    def forward(self, image_embeddings, high_res_feats_0, high_res_feats_1, *prompts):
        low_res, iou_pred, tokens, object_score = self.heads(image_embeddings, [high_res_feats_0, high_res_feats_1],
                                                             *prompts)
        return low_res, iou_pred, self.model.object_pointers(tokens, object_score), object_score


def finish_memory_attention(path: Path, min_size: int = 4096) -> None:
    """Two fixes to the traced memory attention graph. The tracer records a constant tensor once per use: the
    rotary tables (2 MB each) would be stored 64 times; large Constant nodes become initializers, each distinct
    value stored once. And Reshape gets PyTorch's meaning of a 0 in the shape (an empty axis, as when a frame
    has no object pointers yet), not ONNX's default (copy the input's size)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        if node.op_type == "Reshape":
            kept_attributes = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend([*kept_attributes, onnx.helper.make_attribute("allowzero", 1)])
    first: dict[tuple, str] = {}  # (dtype, dims, bytes) -> initializer name
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        tensor = node.attribute[0].t if node.op_type == "Constant" and node.attribute[0].name == "value" else None
        if tensor is None or np.prod(tensor.dims) < min_size:
            kept.append(node)
            continue
        value = numpy_helper.to_array(tensor)
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in first:
            first[key] = node.output[0]
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        else:
            renamed[node.output[0]] = first[key]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del graph.node[:]
    graph.node.extend(kept)
    onnx.save(model, str(path))


def export_video_graphs(model, folder: Path, opset: int, trace) -> dict:
    """The video graphs of a SAM 2 model in `folder` (`trace`: maskml.export.exporter._trace); returns
    their manifest entries."""
    size = model.image_size
    grid = size // 16
    features = torch.randn(1, 256, grid, grid)
    high_res = (torch.randn(1, 32, size // 4, size // 4), torch.randn(1, 64, size // 8, size // 8))
    # traced with 2 memories and 3 pointers: a traced length of 1 could be taken for a broadcast
    memory_inputs = (features, torch.randn(1, 2, model.mem_dim, grid, grid), torch.tensor([6, 0]),
                     torch.randn(1, 3, 256), torch.tensor([0.1, 0.2, 0.3]))
    memory_names = ["backbone_embeddings", "memories", "memory_slots", "object_pointers", "pointer_positions"]
    trace(MemoryAttentionGraph(model), memory_inputs, folder / "memory_attention.onnx", memory_names,
          ["image_embeddings"], {"memories": {1: "memory_frames"}, "memory_slots": {0: "memory_frames"},
                                 "object_pointers": {1: "pointers"}, "pointer_positions": {0: "pointers"}}, opset)
    finish_memory_attention(folder / "memory_attention.onnx")
    mask = (torch.rand(1, 1, size, size) > 0.5).float()
    trace(MemoryEncoderGraph(model), (features, mask, torch.ones(1, 1)), folder / "memory_encoder.onnx",
          ["backbone_embeddings", "mask", "object_score"], ["memory"], {}, opset)
    prompt_names = ["point_coords", "point_labels", "mask_input", "has_mask_input"]
    prompts = (torch.rand(1, 3, 2) * size, torch.tensor([[1.0, 0.0, -1.0]]), torch.randn(1, 1, 256, 256), torch.ones(1))
    trace(VideoDecoderGraph(model), (features, *high_res, *prompts), folder / "video_decoder.onnx",
          ["image_embeddings", "high_res_feats_0", "high_res_feats_1", *prompt_names],
          ["low_res_masks", "iou_predictions", "object_pointers", "object_score_logits"],
          {"point_coords": {1: "points"}, "point_labels": {1: "points"}}, opset)
    trace(MaskPointerGraph(model), (features, *high_res, mask), folder / "mask_pointer.onnx",
          ["backbone_embeddings", "high_res_feats_0", "high_res_feats_1", "mask"], ["object_pointer"], {}, opset)
    entries = {name: {"file": f"{name}.onnx"} for name in VIDEO_GRAPHS}
    entries["memory_attention"]["conventions"] = VIDEO_CONVENTIONS
    return entries


def video_manifest(model) -> dict:
    """What the session needs to know of the model besides its graphs."""
    decoder = model.sam_mask_decoder
    return {"version": model.version, "num_maskmem": model.num_maskmem, "max_obj_ptrs": model.max_obj_ptrs,
            "mem_dim": model.mem_dim, "mask_input_size": list(model.sam_prompt_encoder.mask_input_size),
            "use_multimask_token_for_obj_ptr": decoder.use_multimask_token_for_obj_ptr}


@dataclass
class OnnxFrameFeatures(FrameFeatures):
    """FrameFeatures of the encoder graph: `embedding` the raw backbone features, `pos` None (a constant
    inside the memory attention graph), and the single-image embedding the graph also gives, which is
    the "no memory" conditioning."""

    no_memory_embedding: torch.Tensor | None = None


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().contiguous().numpy()


class OnnxSam2Model(OnnxImageModel):
    """An exported SAM 2 model on ONNX Runtime: ImagePredictor's model (OnnxImageModel) and the per-frame
    steps VideoSession calls (encode_resized, attend_memory, predict_masks, mask_as_output, encode_memory),
    each the Sam2 method of the same name with its weighted part run as a graph."""

    runs_sam2_video = True

    def __init__(self, folder: Path, manifest: dict, providers: list[str]) -> None:
        super().__init__(folder, manifest, providers)
        video = manifest.get("video") or {}
        self.version = video.get("version")
        self.num_maskmem = video.get("num_maskmem")
        self.max_obj_ptrs = video.get("max_obj_ptrs")
        self.mem_dim = video.get("mem_dim")
        self._mask_input_size = tuple(video.get("mask_input_size", ()))
        self._multimask_token_ptr = video.get("use_multimask_token_for_obj_ptr")

    def _graph(self, name: str):
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise MaskmlError(f"{self.folder} holds no SAM 2 video graphs (an export of the image graphs only); export "
                              f"it again with `maskml export {self.model_name} --out NEW_FOLDER` for video")
        return _session(self.folder / graphs[name]["file"], self.providers)

    @cached_property
    def _memory_attention(self):  # the video graphs load on first use: image work does not pay for them
        return self._graph("memory_attention")

    @cached_property
    def _memory_encoder(self):
        return self._graph("memory_encoder")

    @cached_property
    def _video_decoder(self):
        return self._graph("video_decoder")

    @cached_property
    def _mask_pointer(self):
        return self._graph("mask_pointer")

    def encode_resized(self, image: torch.Tensor) -> OnnxFrameFeatures:
        embedding, high_res_0, high_res_1, backbone = (torch.from_numpy(x) for x in
                                                       self.encoder.run(None, {"image": _numpy(image)}))
        return OnnxFrameFeatures(backbone, None, [high_res_0, high_res_1], embedding)

    def attend_memory(self, features: OnnxFrameFeatures, spatial, pointers, max_pointer_distance: int) -> torch.Tensor:
        if not spatial and not pointers:
            return features.no_memory_embedding
        memories, slots, obj_ptrs, positions = memory_bank_tensors(spatial, pointers, max_pointer_distance,
                                                                   features.embedding, self.mem_dim)
        (out,) = self._memory_attention.run(None, {
            "backbone_embeddings": _numpy(features.embedding), "memories": _numpy(memories),
            "memory_slots": slots.numpy(), "object_pointers": _numpy(obj_ptrs), "pointer_positions": _numpy(positions)})
        return torch.from_numpy(out)

    def predict_masks(self, embedding: torch.Tensor, high_res: list[torch.Tensor], points=None, labels=None,
                      mask_logits=None, multimask: bool = False, decoder_cache=None) -> HeadOutput:
        points, labels = prompt_points(points, labels, embedding)
        coords, labels = prompts_as_points((points, labels), None, pad=True)  # as the prompt encoder pads
        mask_logits = mask_prompt(mask_logits, self._mask_input_size)
        has_mask = mask_logits is not None
        low_res, iou_pred, obj_ptrs, object_score = (torch.from_numpy(x) for x in self._video_decoder.run(None, {
            "image_embeddings": _numpy(embedding), "high_res_feats_0": _numpy(high_res[0]),
            "high_res_feats_1": _numpy(high_res[1]), "point_coords": _numpy(coords), "point_labels": _numpy(labels),
            "mask_input": _numpy(mask_logits) if has_mask else np.zeros((coords.shape[0], 1, *self._mask_input_size),
                                                                          np.float32),
            "has_mask_input": np.array([float(has_mask)], np.float32)}))
        masks, iou_pred = select_masks(low_res, iou_pred, multimask, self.single_mask_stability)
        obj_ptrs = select_tokens(obj_ptrs, multimask, self._multimask_token_ptr)
        return head_output(masks, iou_pred, obj_ptrs, object_score, multimask)

    def mask_as_output(self, features: OnnxFrameFeatures, mask: torch.Tensor) -> HeadOutput:
        # the pointer does not depend on the high-resolution features: the traced graph has no such inputs
        (obj_ptr,) = self._mask_pointer.run(None, {"backbone_embeddings": _numpy(features.embedding),
                                                   "mask": _numpy(mask)})
        return mask_output(mask, torch.from_numpy(obj_ptr))

    def encode_memory(self, features: OnnxFrameFeatures, mask_logits: torch.Tensor, object_score: torch.Tensor,
                      binarize: bool) -> torch.Tensor:
        (memory,) = self._memory_encoder.run(None, {
            "backbone_embeddings": _numpy(features.embedding), "mask": _numpy(memory_mask(mask_logits, binarize)),
            "object_score": _numpy(object_score)})
        return torch.from_numpy(memory)

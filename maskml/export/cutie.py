"""Cutie's per-frame step as ONNX graphs, and the exported folder as a model that maskml's
VideoTracker takes unchanged.

The graphs are cut where the tracker calls the network (maskml/predict/cutie/tracker.py), so the
memories (working and long-term memory, sensory memory, object summaries: maskml/predict/cutie/
memory.py) and every rule that grows, consolidates or reads them stay in Python, the same code for
both backends:

    image_encoder       image -> f16, f8, f4, pix_feat, key, shrinkage, selection  (Cutie.encode_image)
    mask_encoder        image, pix_feat, sensory, masks -> values, sensory, summaries  (Cutie.encode_mask)
    memory_readout      query key/selection, memory key/shrinkage/values of any length, top_k
                        -> readout, top-k weights and indices  (Cutie.read_top_k, once per bucket)
    object_transformer  pixel readout, pix_feat, sensory, last masks, object memory -> object readout
                        (Cutie.read_memory, once per bucket or chunk of objects)
    mask_decoder        f8, f4, object readout, sensory -> sensory, logits, probabilities  (Cutie.segment)

Every graph takes batch 1 and any frame size that is a multiple of 16 (the tracker pads to it); the
number of objects, of memory entries and top_k are dynamic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

OBJECTS, MEMORY = "objects", "memory"  # names of the dynamic axes
PIXELS, H, W, H16, W16 = "pixels", "height", "width", "height_16", "width_16"
IMAGE_CONVENTION = ("float32 (1, 3, H, W): RGB / 255 (values 0-1, not normalised), H and W multiples of 16 "
                    "(the tracker resizes the frame so that its shorter side is at most max_internal_size, then "
                    "zero-pads it evenly)")
CONVENTIONS = {
    "image_encoder": {"inputs": {"image": IMAGE_CONVENTION},
                      "outputs": "f16 (1, C16, H/16, W/16), f8, f4: multi-scale features; pix_feat (1, 256, h, w), "
                                 "key (1, 64, h, w), shrinkage (1, 1, h, w), selection (1, 64, h, w) with h, w = "
                                 "H/16, W/16"},
    "mask_encoder": {"inputs": {"image": IMAGE_CONVENTION, "pix_feat": "(1, 256, h, w)",
                                "sensory": "(1, N, 256, h, w) sensory memory of the N objects (zeros when new)",
                                "masks": "(1, N, H, W) object probabilities"},
                     "outputs": "values (1, N, 256, h, w), sensory (1, N, 256, h, w) updated, summaries (1, N, 16, "
                                "257): object summaries (last channel the area), summed over memory frames by the "
                                "caller"},
    "memory_readout": {"inputs": {"query_key": "(1, 64, h*w)", "query_selection": "(1, 64, h*w)",
                                  "mem_key": "(1, 64, T): T memory entries (frames x h*w, any number)",
                                  "mem_shrinkage": "(1, 1, T)",
                                  "mem_values": "(1, N*256, T) the values of the N objects that share these keys",
                                  "top_k": "int64 scalar: memory entries read per pixel (min(top_k, T) used)"},
                       "outputs": "readout (1, N*256, h*w), weights and indices (1, h*w, k) of the top-k entries"},
    "object_transformer": {"inputs": {"pixel_readout": "(1, N, 256, h, w)", "pix_feat": "(1, 256, h, w)",
                                      "sensory": "(1, N, 256, h, w)", "last_mask": "(1, N, H, W) probabilities",
                                      "obj_memory": "(1, N, 16, 257) summed object summaries"},
                           "outputs": "readout (1, N, 256, h, w)"},
    "mask_decoder": {"inputs": {"f8": "(1, C8, H/8, W/8) from image_encoder",
                                "f4": "(1, C4, H/4, W/4) from image_encoder",
                                "readout": "(1, N, 256, h, w) from object_transformer",
                                "sensory": "(1, N, 256, h, w)"},
                     "outputs": "sensory (1, N, 256, h, w) updated, logits (1, N + 1, H, W) background first, "
                                "probabilities (1, N + 1, H, W) their softmax"},
}
GRAPH_OUTPUTS = {
    "image_encoder": ["f16", "f8", "f4", "pix_feat", "key", "shrinkage", "selection"],
    "mask_encoder": ["values", "sensory_out", "summaries"],
    "memory_readout": ["readout", "weights", "indices"],
    "object_transformer": ["object_readout"],
    "mask_decoder": ["sensory_out", "logits", "probabilities"],
}
# --quantize int8: the MatMul weights of the one graph with a share of matrix products (attention and
# feed-forward layers). The rest of Cutie is convolutions: dynamically quantized too (ConvInteger), a
# frame took 4.6x longer than float32 and lost the masks (IoU 0 on the parity weights)
QUANTIZED_GRAPHS = ("object_transformer",)


class _Graph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model


class ImageEncoderGraph(_Graph):
    def forward(self, image):
        (f16, f8, f4), pix_feat, key, shrinkage, selection = self.model.encode_image(image)
        return f16, f8, f4, pix_feat, key, shrinkage, selection


class MaskEncoderGraph(_Graph):
    def forward(self, image, pix_feat, sensory, masks):
        return self.model.encode_mask(image, pix_feat, sensory, masks)


class MemoryReadoutGraph(_Graph):
    def forward(self, query_key, query_selection, mem_key, mem_shrinkage, mem_values, top_k):
        return self.model.read_top_k(query_key, query_selection, mem_key, mem_shrinkage, mem_values, top_k)


class ObjectTransformerGraph(_Graph):
    def forward(self, pixel_readout, pix_feat, sensory, last_mask, obj_memory):
        return self.model.read_memory(pixel_readout, pix_feat, sensory, last_mask, obj_memory)


class MaskDecoderGraph(_Graph):
    def forward(self, f8, f4, readout, sensory):
        return self.model.segment((None, f8, f4), readout, sensory)  # the decoder reads f16 through the readout


def _example(model, objects: int = 2, h: int = 6, w: int = 10) -> dict:
    """Inputs of every graph at one frame size (h x w at stride 16) and object count; neither 1 nor
    equal sizes, so that no traced size is taken for a broadcast or for another one."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, h * 16, w * 16, generator=generator)
    with torch.no_grad():
        (f16, f8, f4), pix_feat, key, shrinkage, selection = model.encode_image(image)
    masks = torch.rand(1, objects, h * 16, w * 16, generator=generator)
    sensory = torch.randn(1, objects, model.sensory_dim, h, w, generator=generator)
    memory = 2 * h * w
    return {
        "image_encoder": (image,),
        "mask_encoder": (image, pix_feat, sensory, masks),
        "memory_readout": (key.flatten(2), selection.flatten(2), torch.randn(1, model.key_dim, memory),
                           torch.rand(1, 1, memory) + 1, torch.randn(1, objects * model.value_dim, memory),
                           torch.tensor(30)),
        "object_transformer": (torch.randn(1, objects, model.value_dim, h, w), pix_feat, sensory, masks,
                               torch.rand(1, objects, 16, model.value_dim + 1)),
        "mask_decoder": (f8, f4, torch.randn(1, objects, model.value_dim, h, w), sensory),
    }


def _dynamic_axes() -> dict[str, dict]:
    image, groups, maps = {2: H, 3: W}, {1: OBJECTS, 3: H16, 4: W16}, {2: H16, 3: W16}
    masks = {1: OBJECTS, 2: H, 3: W}
    return {
        "image_encoder": {"image": image, "f16": maps, "f8": {2: "height_8", 3: "width_8"},
                          "f4": {2: "height_4", 3: "width_4"}, "pix_feat": maps, "key": maps, "shrinkage": maps,
                          "selection": maps},
        "mask_encoder": {"image": image, "pix_feat": maps, "sensory": groups, "masks": masks, "values": groups,
                         "sensory_out": groups, "summaries": {1: OBJECTS}},
        "memory_readout": {"query_key": {2: PIXELS}, "query_selection": {2: PIXELS}, "mem_key": {2: MEMORY},
                           "mem_shrinkage": {2: MEMORY}, "mem_values": {1: "channels", 2: MEMORY},
                           "readout": {1: "channels", 2: PIXELS}, "weights": {1: PIXELS, 2: "k"},
                           "indices": {1: PIXELS, 2: "k"}},
        "object_transformer": {"pixel_readout": groups, "pix_feat": maps, "sensory": groups, "last_mask": masks,
                               "obj_memory": {1: OBJECTS}, "object_readout": groups},
        "mask_decoder": {"f8": {2: "height_8", 3: "width_8"}, "f4": {2: "height_4", 3: "width_4"},
                         "readout": groups, "sensory": groups, "sensory_out": groups,
                         "logits": {1: "channels", 2: H, 3: W}, "probabilities": {1: "channels", 2: H, 3: W}},
    }


GRAPHS = {"image_encoder": ImageEncoderGraph, "mask_encoder": MaskEncoderGraph,
          "memory_readout": MemoryReadoutGraph, "object_transformer": ObjectTransformerGraph,
          "mask_decoder": MaskDecoderGraph}


def export_cutie(model, folder: Path, opset: int, quantize: str | None) -> tuple[dict, dict]:
    """The five graphs in `folder`: (their manifest entries, the manifest's Cutie fields)."""
    from maskml.export.exporter import _quantize, _trace

    examples, axes = _example(model), _dynamic_axes()
    graphs = {}
    for name, graph in GRAPHS.items():
        inputs = list(CONVENTIONS[name]["inputs"])
        outputs = GRAPH_OUTPUTS[name]
        path = folder / f"{name}.onnx"
        _trace(graph(model), examples[name], path, inputs, outputs, axes[name], opset)
        precision = "float32"
        if quantize and name in QUANTIZED_GRAPHS:
            _quantize(path, "int8", None)
            precision = quantize
        graphs[name] = {"file": path.name, **CONVENTIONS[name], "precision": precision}
    details = {"batch": 1, "size_multiple": 16, "key_dim": model.key_dim, "value_dim": model.value_dim,
               "sensory_dim": model.sensory_dim}
    return graphs, details


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.numpy())


class OnnxCutie:
    """An exported Cutie on ONNX Runtime, with the methods maskml.VideoTracker calls on a Cutie."""

    backend = "onnxruntime"
    family = "cutie"
    device = torch.device("cpu")  # inputs and outputs are CPU tensors; providers choose where graphs run

    def __init__(self, folder: Path, manifest: dict, providers: list[str]) -> None:
        from maskml.export.runtime import _session

        self.folder = folder
        self.manifest = manifest
        self.model_name = manifest["model"]
        self.providers = providers
        self.key_dim, self.value_dim, self.sensory_dim = (manifest[k] for k in ("key_dim", "value_dim", "sensory_dim"))
        self.sessions = {name: _session(folder / entry["file"], providers)
                         for name, entry in manifest["graphs"].items()}

    def _run(self, graph: str, *inputs) -> list[torch.Tensor]:
        names = CONVENTIONS[graph]["inputs"]
        outputs = self.sessions[graph].run(None, {n: _array(x) for n, x in zip(names, inputs)})
        return [torch.from_numpy(x) for x in outputs]

    def encode_image(self, image: torch.Tensor):
        f16, f8, f4, pix_feat, key, shrinkage, selection = self._run("image_encoder", image)
        return (f16, f8, f4), pix_feat, key, shrinkage, selection

    def encode_mask(self, image, pix_feat, sensory, masks):
        """-> values, new sensory, object summaries (as Cutie.encode_mask with deep_update)."""
        return tuple(self._run("mask_encoder", image, pix_feat, sensory, masks))

    def read_top_k(self, query_key, query_selection, mem_key, mem_shrinkage, mem_values, top_k: int):
        """-> readout, top-k weights, indices: the memory as it is now, of any length."""
        return tuple(self._run("memory_readout", query_key, query_selection, mem_key, mem_shrinkage, mem_values,
                               torch.tensor(top_k)))

    def read_memory(self, pixel_readout, pix_feat, sensory, last_mask, obj_memory):
        return self._run("object_transformer", pixel_readout, pix_feat, sensory, last_mask, obj_memory)[0]

    def segment(self, ms_features, readout, sensory, update_sensory: bool = True):
        """As Cutie.segment; the graph always computes the sensory update, kept only when asked for."""
        new_sensory, logits, prob = self._run("mask_decoder", *ms_features[1:], readout, sensory)
        return (new_sensory if update_sensory else sensory), logits, prob

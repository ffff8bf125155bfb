"""Video object tracking with Cutie: the per-frame loop around the network and its memories.

    tracker = VideoTracker(maskml.load_model("cutie_small"))
    out = tracker.step(frame, mask=first_mask)     # objects given as an H x W id map
    out = tracker.step(next_frame)                 # tracked from memory
    out.probs, out.object_ids, out.labels

Options are named as in Cutie's eval config, with its defaults.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from maskml.errors import MaskmlError
from maskml.models.cutie import Cutie
from maskml.models.cutie.transformer import aggregate
from maskml.predict.cutie.memory import Memory
from maskml.predict.checks import (DEFAULT_MAX_OBJECTS, as_id_map, check_frame_size, check_mask_objects,
                                   check_max_objects, ids_to_remove)
from maskml.runtime import keep_freed_memory

DEFAULTS = {
    "mem_every": 5,
    "max_mem_frames": 5,
    "top_k": 30,
    "stagger_updates": 5,
    "chunk_size": -1,
    "use_long_term": False,
    "max_internal_size": 480,
    "long_term": {"count_usage": True, "max_mem_frames": 10, "min_mem_frames": 5, "num_prototypes": 128,
                  "max_num_tokens": 10000, "buffer_tokens": 2000},
}


def resolve_options(options: dict) -> dict:
    """DEFAULTS updated with `options`; an unknown name or a wrongly typed value is a MaskmlError."""
    resolved = copy.deepcopy(DEFAULTS)

    def merge(target: dict, updates: dict, prefix: str) -> None:
        for key, value in updates.items():
            name = prefix + key
            if key not in target:
                valid = ", ".join(prefix + k for k in target)
                raise MaskmlError(f"unknown tracker option {name!r}; valid options: {valid}")
            if isinstance(target[key], dict):
                if not isinstance(value, dict):
                    raise MaskmlError(f"tracker option {name!r} is a group: set its fields, e.g. {name}.max_mem_frames")
                merge(target[key], value, name + ".")
                continue
            expected = type(target[key])
            if expected is bool and not isinstance(value, bool) or expected is int and (
                    isinstance(value, bool) or not isinstance(value, int)):
                raise MaskmlError(f"tracker option {name!r} must be {expected.__name__}, got {value!r}")
            target[key] = value

    merge(resolved, options, "")
    if resolved["mem_every"] < 1 or resolved["max_mem_frames"] < 2 or resolved["top_k"] < 1:
        raise MaskmlError("tracker options need mem_every >= 1, max_mem_frames >= 2 and top_k >= 1")
    long_term = resolved["long_term"]
    if resolved["use_long_term"] and not 1 <= long_term["min_mem_frames"] < long_term["max_mem_frames"]:
        raise MaskmlError(f"long-term memory needs 1 <= long_term.min_mem_frames < long_term.max_mem_frames, got "
                          f"{long_term['min_mem_frames']} and {long_term['max_mem_frames']}: set both")
    return resolved


@dataclass
class TrackerOutput:
    probs: torch.Tensor  # (num_objects, H, W) foreground probability of each object, in increasing id order
    object_ids: list[int]
    labels: torch.Tensor  # (H, W) int64 object id per pixel, 0 = background


def pad_to_multiple(x: torch.Tensor, d: int = 16) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two dims to multiples of d, split evenly (the extra pixel right / bottom)."""
    h, w = x.shape[-2:]
    dh, dw = (-h) % d, (-w) % d
    pad = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
    return F.pad(x, pad), pad


def unpad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pad
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


class VideoTracker:
    def __init__(self, model: Cutie, max_objects: int = DEFAULT_MAX_OBJECTS, **options) -> None:
        """options: Cutie's eval options by their official names (DEFAULTS); max_objects: how many objects
        masks may add in all (each takes memory, see maskml.predict.checks.OBJECT_MEMORY)."""
        # a Cutie export run by ONNX Runtime (maskml.export.cutie.OnnxCutie) has the same methods
        if not isinstance(model, Cutie) and getattr(model, "family", None) != "cutie":
            raise MaskmlError(f"VideoTracker needs a Cutie model (cutie_small, cutie_base), got {type(model).__name__}")
        keep_freed_memory()
        self.model = model
        self.max_objects = check_max_objects(max_objects)
        self.options = resolve_options(options)
        mem_every, stagger = self.options["mem_every"], self.options["stagger_updates"]
        if stagger >= mem_every:
            self.stagger_ti = set(range(1, mem_every + 1))
        else:
            self.stagger_ti = set(np.round(np.linspace(1, mem_every, stagger)).astype(int).tolist())
        self.reset()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset(self) -> None:
        """Forget all objects and memories (start a new video)."""
        o = self.options
        self.memory = Memory(o["top_k"], o["max_mem_frames"], o["use_long_term"], o["long_term"])
        self.objects: list[int] = []  # object ids in channel order (order of first appearance)
        self.video_size: tuple[int, int] | None = None  # (H, W) of the frames, from the first one
        self.curr_ti = -1
        self.last_mem_ti = 0
        self.last_mask: torch.Tensor | None = None

    def remove_objects(self, ids) -> None:
        """Stop tracking these objects (an iterable of tracked ids); their memories are freed."""
        ids = ids_to_remove(ids, self.objects)
        keep = [i for i, obj in enumerate(self.objects) if obj not in ids]
        self.objects = [self.objects[i] for i in keep]
        if self.last_mask is not None:
            self.last_mask = self.last_mask[:, keep]
        self.memory.drop_objects(self.objects)

    @torch.inference_mode()
    def step(self, frame, mask=None, objects=None) -> TrackerOutput:
        image = self._image(frame)
        h, w = image.shape[-2:]
        check_frame_size((h, w), self.video_size)
        ids_mask = None if mask is None else as_id_map(mask, (h, w)).to(self.device)
        if ids_mask is not None:
            present = sorted(int(v) for v in torch.unique(ids_mask).tolist() if v != 0)
            objects = present if objects is None else [int(o) for o in objects]
            missing = [o for o in objects if o not in present]
            if missing:
                raise MaskmlError(f"objects {missing} are not in the given mask (it holds {present})")
            if not objects:
                raise MaskmlError("the given mask contains no object (all background)")
            check_mask_objects(objects, self.objects, self, (h, w))
        self.video_size = (h, w)

        size = self.options["max_internal_size"]
        resized = size > 0 and min(h, w) > size
        if resized:
            new_h, new_w = int(h / min(h, w) * size), int(w / min(h, w) * size)
            image = F.interpolate(image[None], (new_h, new_w), mode="bilinear", align_corners=False)[0]
            if ids_mask is not None:
                ids_mask = F.interpolate(ids_mask[None, None].float(), (new_h, new_w),
                                         mode="nearest-exact")[0, 0].round().long()
        self.curr_ti += 1
        image, pad = pad_to_multiple(image)
        image = image[None]
        is_mem_frame = self.curr_ti - self.last_mem_ti >= self.options["mem_every"] or ids_mask is not None
        # segment from memory unless the mask gives every object (the original also skips it when the
        # mask holds only known objects; then objects missing from it would lose their channel)
        need_segment = ids_mask is None or bool(self.objects) and set(objects) != set(self.objects)
        update_sensory = (self.curr_ti - self.last_mem_ti) in self.stagger_ti
        ms_features, pix_feat, key, shrinkage, selection = self.model.encode_image(image)

        if need_segment:
            prob_with_bg = self._segment(ms_features, pix_feat, key, selection, update_sensory)
        if ids_mask is not None:
            ids_mask, _ = pad_to_multiple(ids_mask)
            new = [o for o in objects if o not in self.objects]
            if need_segment and self.objects:
                fg = prob_with_bg[1:].clone()
                fg[:, ids_mask > 0] = 0  # the given mask overrules memory where it has an object
                for obj in objects:
                    if obj in self.objects:
                        fg[self.objects.index(obj)] = (ids_mask == obj).float()
                masks = torch.cat([fg] + [(ids_mask == o).float()[None] for o in new])
            else:
                masks = torch.stack([(ids_mask == o).float() for o in self.objects + new])
            self.objects += new
            prob_with_bg = torch.softmax(aggregate(masks, dim=0), dim=0)

        self.last_mask = prob_with_bg[1:][None]
        if is_mem_frame and self.objects:
            self._add_memory(image, pix_feat, key, shrinkage, selection)

        out = unpad(prob_with_bg, pad)
        if resized:
            out = F.interpolate(out[None], (h, w), mode="bilinear", align_corners=False)[0]
        return self._output(out)

    def _segment(self, ms_features, pix_feat, key, selection, update_sensory: bool) -> torch.Tensor:
        if not self.memory.engaged:  # nothing to track yet: all background
            return torch.ones(1, key.shape[-2] * 16, key.shape[-1] * 16, device=key.device)
        b, _, hh, ww = key.shape
        readout = self.memory.read(key, selection, self.model.read_top_k)
        pixel = torch.stack([readout[obj] for obj in self.objects], dim=1).view(b, len(self.objects), -1, hh, ww)
        sensory = self.memory.sensory_of(self.objects, key, self.model.sensory_dim)
        obj_memory = torch.stack([self.memory.object_memory[obj] for obj in self.objects], dim=1)
        readout_all = None
        # fusion and the object transformer run bucket by bucket (and chunk_size objects at a time), as
        # in the original: the transformer's attention masks compare the objects given to it together
        chunk = self.options["chunk_size"]
        for bucket in self.memory.buckets.values():
            step = chunk if chunk >= 1 else len(bucket.objects)
            for start in range(0, len(bucket.objects), step):
                idx = [self.objects.index(o) for o in bucket.objects[start:start + step]]
                value = self.model.read_memory(pixel[:, idx], pix_feat, sensory[:, idx], self.last_mask[:, idx],
                                               obj_memory[:, idx])
                if readout_all is None:
                    readout_all = value.new_empty(b, len(self.objects), *value.shape[2:])
                readout_all[:, idx] = value
        sensory, _, prob = self.model.segment(ms_features, readout_all, sensory, update_sensory=update_sensory)
        if update_sensory:
            self.memory.set_sensory(sensory, self.objects)
        return prob[0]

    def _add_memory(self, image, pix_feat, key, shrinkage, selection) -> None:
        sensory = self.memory.sensory_of(self.objects, key, self.model.sensory_dim)
        value, sensory, summaries = self.model.encode_mask(image, pix_feat, sensory, self.last_mask)
        self.memory.add(key, shrinkage, selection, value, summaries, self.objects)
        self.last_mem_ti = self.curr_ti
        self.memory.set_sensory(sensory, self.objects)

    def _output(self, prob_with_bg: torch.Tensor) -> TrackerOutput:
        order = sorted(range(len(self.objects)), key=lambda i: self.objects[i])
        ids = torch.tensor([0] + self.objects, device=prob_with_bg.device)
        labels = ids[prob_with_bg.max(dim=0).indices]  # max(dim) is many times faster than argmax here
        probs = prob_with_bg[1:][order] if self.objects else prob_with_bg[:0]
        return TrackerOutput(probs=probs, object_ids=[self.objects[i] for i in order], labels=labels)

    def _image(self, frame) -> torch.Tensor:
        if isinstance(frame, np.ndarray):
            frame = torch.from_numpy(np.ascontiguousarray(frame))
        if not isinstance(frame, torch.Tensor) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != torch.uint8:
            shape = tuple(frame.shape) if hasattr(frame, "shape") else type(frame).__name__
            raise MaskmlError(f"a frame must be an H x W x 3 uint8 RGB array, got {shape}")
        return frame.to(self.device).permute(2, 0, 1).float() / 255

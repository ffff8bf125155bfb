"""SAM 2 video sessions: prompts on any frame, for any object; propagation forward or backward.

    session = VideoSession(maskml.load_model("sam2.1_hiera_t"), "frames/")
    session.add_points(0, obj_id=1, points=[[210, 350]], labels=[1])
    session.add_box(0, obj_id=2, box=[300, 0, 500, 400])
    for frame_idx, obj_ids, logits in session.propagate():
        masks = logits > 0                       # (objects, H, W) at the video's resolution

The semantics are those of the official SAM2VideoPredictor (default options): each object is
tracked on its own; a prompt on a frame the object has not been tracked on makes a conditioning
frame (no memory attention; always in the object's memory bank); a prompt on a tracked frame is a
correction, stored like a tracked frame and so recomputed by the next propagation; a frame's
memory bank holds all conditioning frames, the 6 nearest earlier (reverse: later) tracked frames and
object pointers of up to 15 frames back. Frames are decoded when needed and only the last frame's
features are kept; per object, tracked outputs farther than `keep_window` frames from both the
frame being processed and every conditioning frame are dropped, so memory does not grow with the
video's length (a window >= 16 keeps every output the official predictor would read when passes
start at prompted frames, as `propagate()` does by default).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from maskml.errors import MaskmlError
from maskml.io.video import open_video
from maskml.models.sam2.sam2 import NO_OBJECT_LOGIT, FrameFeatures, Sam2
from maskml.predict.image import _as_float_array, as_image_tensor
from maskml.predict.checks import as_labels, as_object_mask, check_object_id, ids_to_remove
from maskml.predict.resize import resize_like_pillow
from maskml.runtime import keep_freed_memory


@dataclass
class FrameOutput:
    logits: torch.Tensor  # (1, 1, 256, 256) low-res mask logits
    obj_ptr: torch.Tensor  # (1, 256)
    object_score: torch.Tensor  # (1, 1)
    memory: torch.Tensor | None = None  # (1, 64, 64, 64) bfloat16, once encoded


@dataclass
class ObjectTrack:
    """Everything the session knows about one object."""

    cond: dict[int, FrameOutput] = field(default_factory=dict)  # conditioning frames
    non_cond: dict[int, FrameOutput] = field(default_factory=dict)  # tracked frames and corrections
    pending: dict[str, dict[int, FrameOutput]] = field(default_factory=lambda: {"cond": {}, "non_cond": {}})
    tracked: dict[int, bool] = field(default_factory=dict)  # frame -> tracked in reverse

    def output(self, frame: int, kind: str | None = None) -> FrameOutput | None:
        """The latest output on `frame`: a pending prompt result (of `kind`, or either), else a stored one."""
        kinds = (kind,) if kind else ("cond", "non_cond")
        for k in kinds:
            if frame in self.pending[k]:
                return self.pending[k][frame]
        return self.cond.get(frame) or self.non_cond.get(frame)


def memory_bank(model: Sam2, cond: dict[int, FrameOutput], non_cond: dict[int, FrameOutput], frame: int,
                num_frames: int, reverse: bool = False, future_pointers: bool = False):
    """What `frame` attends to, as Sam2.attend_memory's (spatial, pointers, max_pointer_distance): the memories
    of every conditioning frame and of the num_maskmem - 1 nearest earlier (reverse: later) tracked frames,
    oldest first; the object pointers of the conditioning frames and of up to max_obj_ptrs - 1 earlier
    tracked frames. Inference reads only the pointers of conditioning frames up to `frame`; the official
    training reads every conditioning frame's (future_pointers=True), since it prompts frames ahead first."""
    step = -1 if reverse else 1
    spatial = [(o.memory, model.num_maskmem - 1) for o in cond.values()]
    for distance in range(model.num_maskmem - 1, 0, -1):  # oldest first
        o = non_cond.get(frame - step * distance)
        if o is not None:
            spatial.append((o.memory, distance - 1))
    max_ptrs = min(num_frames, model.max_obj_ptrs)
    signed = model.version == "2.1"
    pointers = [(((frame - t) * step) if signed else abs(frame - t), o.obj_ptr)
                for t, o in cond.items() if future_pointers or (t >= frame if reverse else t <= frame)]
    for distance in range(1, max_ptrs):
        t = frame - step * distance
        if not 0 <= t < num_frames:
            break
        o = non_cond.get(t)
        if o is not None:
            pointers.append((distance, o.obj_ptr))
    return spatial, pointers, max_ptrs - 1


class PropagationStep(NamedTuple):
    frame_idx: int
    obj_ids: list[int]
    logits: torch.Tensor  # (objects, H, W) float32 mask logits at the video's resolution


class _Frames:
    """Random access to the frames of a video file, a frame folder, an (T, H, W, 3) array or a list of frames."""

    def __init__(self, video) -> None:
        if isinstance(video, (str, Path)):
            video = open_video(video)
        if not hasattr(video, "__len__") or not (hasattr(video, "frame") or hasattr(video, "__getitem__")):
            raise MaskmlError(f"video must be a video file or frame folder (a path), frames (T, H, W, 3) uint8 RGB, "
                              f"or a frame source such as maskml.io.video.open_video's, got {type(video).__name__}")
        self.video = video
        self.count = len(video)
        if self.count == 0:
            raise MaskmlError("the video has no frames")
        first = self[0]
        self.size = tuple(first.shape[:2])

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        return self.video.frame(index) if hasattr(self.video, "frame") else self.video[index]


OPTIONS = {"keep_window": 16, "add_all_frames_to_correct_as_cond": False, "cached_frames": 1}


def resolve_options(options: dict) -> dict:
    """VideoSession keyword options checked by name and type (for --option KEY=VALUE)."""
    resolved = dict(OPTIONS)
    for key, value in options.items():
        if key not in OPTIONS:
            raise MaskmlError(f"unknown SAM 2 option {key!r}; valid options: {', '.join(OPTIONS)}")
        expected = type(OPTIONS[key])
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            raise MaskmlError(f"SAM 2 option {key!r} must be {expected.__name__}, got {value!r}")
        resolved[key] = value
    if resolved["keep_window"] < 1 or resolved["cached_frames"] < 1:
        raise MaskmlError("SAM 2 options keep_window and cached_frames must be at least 1")
    return resolved


class VideoSession:
    def __init__(self, model: Sam2, video, keep_window: int = 16, add_all_frames_to_correct_as_cond: bool = False,
                 cached_frames: int = 1) -> None:
        """video: a video file or folder of frames (path), a frame source with frame(i), or frames
        (T, H, W, 3) uint8 RGB. keep_window: see the module docstring (>= 16 for the official results).
        cached_frames: backbone features of this many recently used frames are kept (16 MB each at 1024),
        so going back and forth over a stretch of video does not encode its frames again."""
        # another runtime's model (maskml.export.sam2_video) runs the same steps as graphs
        if not isinstance(model, Sam2) and not getattr(model, "runs_sam2_video", False):
            raise MaskmlError(f"VideoSession needs a SAM 2 model (e.g. maskml.load_model('sam2.1_hiera_t')), "
                              f"got {type(model).__name__}")
        keep_freed_memory()
        self.model = model
        self.frames = _Frames(video)
        self.keep_window = keep_window
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond
        self.objects: dict[int, ObjectTrack] = {}
        self.cached_frames = max(1, cached_frames)
        self._cache: OrderedDict[int, FrameFeatures] = OrderedDict()

    # ----------------------------------------------------------------------------------- frames
    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def video_size(self) -> tuple[int, int]:
        """(H, W) of the video's frames."""
        return self.frames.size

    @property
    def obj_ids(self) -> list[int]:
        return list(self.objects)

    def _features(self, frame: int) -> FrameFeatures:
        if frame in self._cache:
            self._cache.move_to_end(frame)
            return self._cache[frame]
        while len(self._cache) >= self.cached_frames:  # free before computing the next
            self._cache.popitem(last=False)
        features = self._cache[frame] = self._encode(self.frames[frame], frame)
        return features

    def _encode(self, image, frame: int) -> FrameFeatures:
        device = self.model.device
        image = as_image_tensor(image, device)
        if tuple(image.shape[:2]) != self.video_size:
            raise MaskmlError(f"frame {frame} is {image.shape[1]}x{image.shape[0]}, but the video is "
                              f"{self.video_size[1]}x{self.video_size[0]}: all frames must have one size")
        size = self.model.image_size
        # the official video predictor resizes with Pillow's BICUBIC on uint8
        x = resize_like_pillow(image, (size, size), "bicubic").permute(2, 0, 1)[None].float() / 255.0
        return self.model.encode_resized(x)

    # ---------------------------------------------------------------------------------- prompts
    def _check_frame(self, frame) -> int:
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= frame < self.num_frames:
            raise MaskmlError(f"frame {frame!r} does not exist: the video has frames 0 to {self.num_frames - 1}")
        return int(frame)

    def _track(self, obj_id: int) -> ObjectTrack:
        return self.objects.setdefault(obj_id, ObjectTrack())

    def _to_model_frame(self, xy: torch.Tensor) -> torch.Tensor:
        h, w = self.video_size
        return xy / xy.new_tensor([w, h]) * self.model.image_size

    @torch.inference_mode()
    def add_points(self, frame: int, obj_id: int, points=None, labels=None, box=None) -> PropagationStep:
        """Clicks (P, 2) pixels (x, y) with labels (P,) (1 object, 0 background), and/or a box (x0, y0, x1, y1),
        for object `obj_id` on `frame`; they replace that object's earlier prompts on the frame. Returns the
        frame's logits of every object (those without an output there: -1024)."""
        frame, obj_id = self._check_frame(frame), check_object_id(obj_id)
        coords, point_labels = self._prompt_tensors(points, labels, box)
        self._track(obj_id)
        return self._run_prompt(frame, obj_id, points=(coords, point_labels))

    def add_box(self, frame: int, obj_id: int, box, points=None, labels=None) -> PropagationStep:
        return self.add_points(frame, obj_id, points, labels, box=box)

    @torch.inference_mode()
    def add_mask(self, frame: int, obj_id: int, mask) -> PropagationStep:
        """The object's mask (H, W) on `frame`: booleans, 0/1 or probabilities in [0, 1] (any size; resized
        to the model's input and binarised at 0.5)."""
        frame, obj_id = self._check_frame(frame), check_object_id(obj_id)
        m = as_object_mask(mask)
        if not bool((m >= 0.5).any()):
            raise MaskmlError(f"the mask for object {obj_id} on frame {frame} is empty (no value of 0.5 or more)")
        m = m.to(self.model.device)[None, None]
        size = self.model.image_size
        if m.shape[-2:] != (size, size):
            m = (F.interpolate(m, (size, size), mode="bilinear", align_corners=False, antialias=True) >= 0.5).float()
        self._track(obj_id)
        return self._run_prompt(frame, obj_id, mask=m)

    def _prompt_tensors(self, points, labels, box) -> tuple[torch.Tensor, torch.Tensor]:
        parts, part_labels = [], []
        h, w = self.video_size
        if box is not None:
            b = _as_float_array(box, "box", (4,)).reshape(4)
            if b[2] < b[0] or b[3] < b[1]:
                raise MaskmlError(f"box {b.tolist()} must be x0, y0, x1, y1 with x1 >= x0 and y1 >= y0")
            parts.append(b.reshape(2, 2))
            part_labels.append(torch.tensor([2, 3]))
        if points is not None:
            p = _as_float_array(points, "points", (2,)).reshape(-1, 2)
            lab = torch.ones(p.shape[0], dtype=torch.int64) if labels is None else as_labels(labels, p.shape[0])
            outside = (p[:, 0] < 0) | (p[:, 0] > w) | (p[:, 1] < 0) | (p[:, 1] > h)
            if outside.any():
                raise MaskmlError(f"point {p[outside][0].tolist()} is outside the {w}x{h} frame")
            parts.append(p)
            part_labels.append(lab)
        elif labels is not None:
            raise MaskmlError("labels given without points")
        if not parts:
            raise MaskmlError("give points (with labels) or a box")
        coords = self._to_model_frame(torch.cat(parts).float()).to(self.model.device)[None]
        return coords, torch.cat(part_labels).to(torch.int32).to(self.model.device)[None]

    def _run_prompt(self, frame: int, obj_id: int, points=None, mask=None) -> PropagationStep:
        track = self.objects[obj_id]
        is_init = frame not in track.tracked
        reverse = track.tracked.get(frame, False)
        kind = "cond" if is_init or self.add_all_frames_to_correct_as_cond else "non_cond"
        previous = track.output(frame, kind) if mask is None else None
        prev_logits = previous.logits.clamp(-32.0, 32.0) if previous is not None else None
        out = self._run_frame(track, frame, is_init, reverse, points=points, mask=mask, prev_logits=prev_logits,
                              encode_memory=False)
        track.pending[kind][frame] = out
        return self._frame_result(frame, kind)

    # ------------------------------------------------------------------------------- inference
    def _run_frame(self, track: ObjectTrack, frame: int, is_init: bool, reverse: bool, points=None, mask=None,
                   prev_logits=None, encode_memory: bool = True) -> FrameOutput:
        model = self.model
        features = self._features(frame)
        if mask is not None:
            head = model.mask_as_output(features, mask)
        else:
            if is_init:
                conditioned = model.attend_memory(features, [], [], 0)
            else:
                conditioned = model.attend_memory(features, *memory_bank(model, track.cond, track.non_cond, frame,
                                                                         self.num_frames, reverse))
            coords, labels = points if points is not None else (None, None)
            multimask = labels is None or labels.shape[1] <= 1  # 0 or 1 click: choose among 3 masks
            head = model.predict_masks(conditioned, features.high_res, coords, labels, prev_logits, multimask)
        out = FrameOutput(head.logits, head.obj_ptr, head.object_score)
        if encode_memory:
            out.memory = self._encode_memory(features, out, binarize=False)
        return out

    def _encode_memory(self, features: FrameFeatures, out: FrameOutput, binarize: bool) -> torch.Tensor:
        size = self.model.image_size
        high_res = F.interpolate(out.logits, (size, size), mode="bilinear", align_corners=False)
        # stored in bfloat16, as the official predictor does (it changes results at the 1e-5 level)
        return self.model.encode_memory(features, high_res, out.object_score, binarize).to(torch.bfloat16)

    def _frame_result(self, frame: int, kind: str) -> PropagationStep:
        logits = []
        for track in self.objects.values():
            out = track.output(frame, kind)
            logits.append(out.logits if out is not None else None)
        return PropagationStep(frame, self.obj_ids, self._to_video(logits))

    def _to_video(self, logits: list[torch.Tensor | None]) -> torch.Tensor:
        h, w = self.video_size
        result = torch.full((len(logits), h, w), NO_OBJECT_LOGIT, device=self.model.device)
        present = [i for i, x in enumerate(logits) if x is not None]
        if present:
            low = torch.cat([logits[i] for i in present])
            result[present] = F.interpolate(low, (h, w), mode="bilinear", align_corners=False)[:, 0]
        return result

    # ----------------------------------------------------------------------------- propagation
    def _commit_prompts(self) -> None:
        """Encode the memories of prompted frames and move them into the memory banks."""
        if not self.objects:
            raise MaskmlError("no object has a prompt yet: add points, a box or a mask first")
        for obj_id, track in self.objects.items():
            for kind in ("non_cond", "cond"):
                for frame, out in track.pending[kind].items():
                    if out.memory is None:  # prompted frames are encoded from the binarised mask
                        out.memory = self._encode_memory(self._features(frame), out, binarize=True)
                    (track.cond if kind == "cond" else track.non_cond)[frame] = out
                track.pending[kind].clear()
            if not track.cond:
                raise MaskmlError(f"object {obj_id} has no prompt on a frame it was not tracked on: give it points, "
                                  f"a box or a mask first")
            for frame in track.cond:
                track.non_cond.pop(frame, None)

    @torch.inference_mode()
    def propagate(self, start: int | None = None, reverse: bool = False,
                  max_frames: int | None = None) -> Iterator[PropagationStep]:
        """Track every object from `start` (default: the earliest conditioning frame) to the last frame, or
        backwards to frame 0, or over `start` and the next `max_frames` frames (the official counting);
        yields each frame's logits of all objects."""
        self._commit_prompts()
        if start is None:
            start = min(t for track in self.objects.values() for t in track.cond)
        start = self._check_frame(start)
        limit = self.num_frames if max_frames is None else max_frames
        if reverse:
            order = range(start, max(start - limit, 0) - 1, -1) if start > 0 else range(0)
        else:
            order = range(start, min(start + limit, self.num_frames - 1) + 1)
        for frame in order:
            logits = []
            for track in self.objects.values():
                out = track.cond.get(frame)
                if out is None:
                    out = self._run_frame(track, frame, is_init=False, reverse=reverse)
                    track.non_cond[frame] = out
                track.tracked[frame] = reverse
                logits.append(out.logits)
                self._forget_far_outputs(track, frame)
            yield PropagationStep(frame, self.obj_ids, self._to_video(logits))

    def _forget_far_outputs(self, track: ObjectTrack, frame: int) -> None:
        window = self.keep_window
        for t in [t for t in track.non_cond if abs(t - frame) > window]:
            if all(abs(t - c) > window for c in track.cond):
                del track.non_cond[t]

    # ---------------------------------------------------------------------------------- objects
    def remove_objects(self, ids) -> list[int]:
        """Forget these objects (an iterable of ids) and all their prompts and outputs; returns the
        remaining ids."""
        for obj_id in ids_to_remove(ids, self.objects):
            del self.objects[obj_id]
        return self.obj_ids

    def reset(self) -> None:
        """Remove every object, prompt and result (the video stays open)."""
        self.objects.clear()

"""Click, then track: a prompter turns clicks and boxes into masks, a tracker carries them on.

    pipe = Pipeline(VideoTracker(maskml.load_model("cutie_small")), prompter=maskml.load_model("mobile_sam"))
    out = pipe.step(frame, [Prompt(1, points=[(320, 200)])])   # object 1 from one click
    out = pipe.step(next_frame)                                  # tracked
    out = pipe.step(later_frame, [Prompt(1, box=(40, 60, 300, 420)), Prompt(2, points=[(500, 90)])])
    pipe.remove_objects([2])

A prompt for a tracked object corrects it on that frame: the prompter's mask replaces the tracker's
estimate and enters its memory. The prompter is any image model ImagePredictor takes; its mask is the
single-mask output's `logits > 0`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Iterable, Protocol

import numpy as np
import torch

from maskml.errors import MaskmlError
from maskml.predict.cutie.tracker import TrackerOutput
from maskml.predict.image import ImagePredictor, _as_float_array
from maskml.predict.checks import as_id_map, as_labels, check_object_id, frame_size, ids_to_remove


def _as_sequence(value, name: str):
    """Points or labels as something with a length: an array as it is, any other iterable as a list."""
    if value is None:
        return ()
    if isinstance(value, (np.ndarray, torch.Tensor, str)) or hasattr(value, "__len__"):
        return value
    try:
        return list(value)
    except TypeError:
        raise MaskmlError(f"{name} must be a list of numbers, got {value!r}") from None


@dataclass(frozen=True)
class Prompt:
    """Clicks and/or a box for one object on one frame, in pixels of the frame.

    points: (x, y) pairs; labels: 1 object, 0 background, one per point (default all 1);
    box: x0, y0, x1, y1 with x1 >= x0 and y1 >= y0."""

    object_id: int
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        check_object_id(self.object_id)
        try:
            given_points, given_labels = _as_sequence(self.points, "points"), _as_sequence(self.labels, "labels")
            points = () if len(given_points) == 0 else tuple(
                (x, y) for x, y in _as_float_array(given_points, "points", (2,)).reshape(-1, 2).tolist())
            labels = tuple(as_labels(given_labels, len(points)).tolist()) if len(given_labels) else (1,) * len(points)
            box = None if self.box is None else tuple(_as_float_array(self.box, "box", (4,)).reshape(-1).tolist())
        except MaskmlError as exc:
            raise MaskmlError(f"object {self.object_id}: {exc}") from None
        if box is not None and (len(box) != 4 or box[2] < box[0] or box[3] < box[1]):
            raise MaskmlError(f"object {self.object_id}: a box is x0, y0, x1, y1 with x1 >= x0 and y1 >= y0, "
                              f"got {self.box}")
        if not points and box is None:
            raise MaskmlError(f"object {self.object_id}: a prompt needs at least one point or a box")
        object.__setattr__(self, "object_id", int(self.object_id))
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "box", box)

    def check_inside(self, size: tuple[int, int]) -> None:
        """MaskmlError unless every point and the box lie within a frame of size (H, W)."""
        h, w = size
        for x, y in self.points:
            if not (0 <= x <= w and 0 <= y <= h):
                raise MaskmlError(f"point ({x:g}, {y:g}) of object {self.object_id} is outside the {w}x{h} frame")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h):
                raise MaskmlError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) of object {self.object_id} is outside "
                                  f"the {w}x{h} frame")


def as_prompts(prompts: Iterable[Prompt]) -> list[Prompt]:
    """A list of Prompt records, or a MaskmlError that shows the form."""
    if isinstance(prompts, (Prompt, str)) or not hasattr(prompts, "__iter__"):
        raise MaskmlError(f"prompts are a list of maskml.Prompt, e.g. [Prompt(1, points=[(320, 200)])], got "
                          f"{type(prompts).__name__}")
    prompts = list(prompts)
    wrong = [p for p in prompts if not isinstance(p, Prompt)]
    if wrong:
        raise MaskmlError(f"prompts are maskml.Prompt records, e.g. Prompt(1, points=[(320, 200)]), got {wrong[0]!r}")
    return prompts


def prompt_masks(predictor: ImagePredictor, prompts: Iterable[Prompt]) -> torch.Tensor:
    """The masks of `prompts` on the predictor's image as one H x W int64 id map, later prompts on top."""
    prompts = as_prompts(prompts)
    ids = [p.object_id for p in prompts]
    if len(set(ids)) != len(ids):
        raise MaskmlError(f"one prompt per object and frame, got object ids {ids}: put all clicks of an "
                          f"object into one Prompt")
    size = predictor.original_size
    out = torch.zeros(size, dtype=torch.int64, device=predictor.device)
    for prompt in prompts:
        prompt.check_inside(size)
        prediction = predictor.predict(points=prompt.points or None, labels=prompt.labels or None, box=prompt.box,
                                       multimask=False)
        out[prediction.logits[0] > 0] = prompt.object_id
    missing = [i for i in ids if not bool((out == i).any())]
    if missing:
        raise MaskmlError(f"the prompts of objects {missing} give an empty mask on this frame (or one "
                          f"covered by a later object): click on the object, or draw a box around it")
    return out


def tracker_for(model, **options) -> "Tracker":
    """The engine that tracks with a video model, PyTorch or ONNX Runtime: Cutie's VideoTracker or SAM 2's
    Sam2Tracker, with its options (max_objects and the engine's own, by their official names)."""
    from maskml.predict.cutie.tracker import VideoTracker
    from maskml.predict.sam2.tracker import Sam2Tracker
    from maskml.zoo import get_entry

    family = get_entry(model.model_name).family
    if family not in ("cutie", "sam2"):
        raise MaskmlError(f"{model.model_name} is an image model, not a tracker (cutie_small, cutie_base, "
                          f"sam2.1_hiera_t, ...)")
    return (VideoTracker if family == "cutie" else Sam2Tracker)(model, **options)


class Tracker(Protocol):
    """What Pipeline needs from a video engine; VideoTracker (Cutie) is one.

    step(frame, mask=None) -> TrackerOutput tracks one more frame (H x W x 3 uint8 RGB). `mask`, an
    H x W map of object ids, adds the objects it holds, or replaces the tracker's estimate of tracked
    ones on this frame, and that mask enters the tracker's memory.
    remove_objects(ids) stops tracking objects (an iterable of tracked ids); reset() forgets everything
    (a new video).

    A tracker that takes clicks itself (SAM 2) declares a `prompts` keyword,
    step(frame, mask=None, prompts=()), and gets the frame's Prompts unchanged when the pipeline has
    no prompter; with a prompter it gets the prompter's masks, as any tracker."""

    def step(self, frame, mask=None) -> TrackerOutput: ...

    def remove_objects(self, ids) -> None: ...

    def reset(self) -> None: ...


class Pipeline:
    def __init__(self, tracker: Tracker, prompter=None) -> None:
        """tracker: see Tracker; prompter: an image model (mobile_sam, sam_vit_*, ...) or None when
        the tracker takes prompts itself."""
        self.tracker = tracker
        # a tracker that takes clicks itself (SAM 2) gets them, unless a prompter is given to make masks
        self.tracker_takes_prompts = prompter is None and "prompts" in inspect.signature(tracker.step).parameters
        self.predictor = None if prompter is None else ImagePredictor(prompter)
        self._embedded = None  # the frame the predictor holds the embedding of
        self.object_ids: list[int] = []  # tracked now, as of the last step

    def segment(self, frame, prompts: Iterable[Prompt]) -> torch.Tensor:
        """The prompter's masks as one H x W int64 id map, later prompts on top of earlier ones.
        The frame is embedded once per array object: repeated calls with the same array (more clicks
        on one frame) only run the mask decoder."""
        if self.predictor is None:
            raise MaskmlError("this pipeline has no prompter to turn clicks into masks: "
                              "give Pipeline(tracker, prompter=maskml.load_model('mobile_sam'))")
        if frame is not self._embedded:
            self.predictor.set_image(frame)
            self._embedded = frame
        return prompt_masks(self.predictor, prompts)

    def step(self, frame, prompts: Iterable[Prompt] = (), mask=None) -> TrackerOutput:
        """Track one frame. `prompts` add objects or correct tracked ones on this frame; `mask`, an
        H x W id map (e.g. an annotation file), does the same for the objects it holds, and prompts go
        on top of it. A frame before any object costs nothing (an empty output)."""
        prompts = as_prompts(prompts)
        if self.tracker_takes_prompts:
            if not prompts and mask is None and not self.object_ids:
                return self._empty(frame)
            out = self.tracker.step(frame, mask=mask, prompts=prompts)
        else:
            if prompts:
                ids = self.segment(frame, prompts)
                if mask is not None:
                    ids = torch.where(ids > 0, ids, as_id_map(mask, tuple(ids.shape)).to(ids.device))
                mask = ids
            if mask is None and not self.object_ids:
                return self._empty(frame)
            out = self.tracker.step(frame, mask=mask)
        self.object_ids = list(out.object_ids)
        return out

    def remove_objects(self, ids: Iterable[int]) -> None:
        """Stop tracking these objects (ids tracked as of the last step)."""
        ids = ids_to_remove(ids, self.object_ids)
        self.tracker.remove_objects(ids)
        self.object_ids = [i for i in self.object_ids if i not in ids]

    def reset(self) -> None:
        """Forget all objects (start a new video)."""
        self.tracker.reset()
        self.object_ids = []
        self._embedded = None

    def _empty(self, frame) -> TrackerOutput:
        h, w = frame_size(frame)
        device = getattr(self.tracker, "device", "cpu")  # where the tracker's own outputs are
        return TrackerOutput(probs=torch.zeros(0, h, w, device=device), object_ids=[],
                             labels=torch.zeros(h, w, dtype=torch.int64, device=device))

"""SAM 2 as a frame-by-frame tracker (live streams, Pipeline): the video session's rules applied to
frames as they arrive. Every prompt lands on a frame not tracked yet, so it makes a conditioning
frame and stays in the object's memory."""
from __future__ import annotations

import torch

from maskml.errors import MaskmlError
from maskml.predict.cutie.tracker import TrackerOutput
from maskml.predict.checks import (DEFAULT_MAX_OBJECTS, as_id_map, check_frame_size, check_mask_objects,
                                   check_max_objects, frame_size, ids_to_remove)
from maskml.predict.sam2.session import VideoSession, resolve_options

STREAM_LENGTH = 2**31 - 1  # a live stream has no known end: object pointers are coded as in a long video


class _LiveFrames:
    """The newest frame of a stream; older ones are gone."""

    def __init__(self, frame) -> None:
        self.index, self.latest = 0, frame
        self.size = tuple(frame.shape[:2])

    def push(self, frame) -> None:
        self.index += 1
        self.latest = frame

    def __len__(self) -> int:
        return STREAM_LENGTH

    def frame(self, index: int):
        if index != self.index:
            raise MaskmlError(f"frame {index} of a live stream is no longer available (now at {self.index})")
        return self.latest


class Sam2Tracker:
    """step(frame, mask=None, prompts=()) -> TrackerOutput; prompts are maskml.Prompt (clicks/boxes per
    object), mask an H x W id map (each id's pixels become that object's mask on this frame)."""

    def __init__(self, model, max_objects: int = DEFAULT_MAX_OBJECTS, **options) -> None:
        """options: those of VideoSession (keep_window, ...); max_objects: how many objects masks may add
        in all (each takes memory, see maskml.predict.checks.OBJECT_MEMORY)."""
        self.model = model
        self.max_objects = check_max_objects(max_objects)
        self.options = resolve_options(options)
        self._frames: _LiveFrames | None = None
        self._session: VideoSession | None = None

    def step(self, frame, mask=None, prompts=()) -> TrackerOutput:
        size = frame_size(frame)
        check_frame_size(size, None if self._frames is None else self._frames.size)
        ids = None if mask is None else as_id_map(mask, size)
        if ids is not None:
            present = [i for i in ids.unique().tolist() if i]
            check_mask_objects(present, [] if self._session is None else list(self._session.objects), self, size)
        if self._session is None:
            self._frames = _LiveFrames(frame)
            self._session = VideoSession(self.model, self._frames, **self.options)
        else:
            self._frames.push(frame)
        session, t = self._session, self._frames.index
        if ids is not None:
            for obj_id in ids.unique().tolist():
                if obj_id:
                    session.add_mask(t, obj_id, ids == obj_id)
        for prompt in prompts:
            session.add_points(t, prompt.object_id, prompt.points or None, prompt.labels or None, box=prompt.box)
        h, w = session.video_size
        if not session.objects:
            return TrackerOutput(torch.zeros(0, h, w), [], torch.zeros(h, w, dtype=torch.int64))
        step = next(iter(session.propagate(start=t)))  # this frame only
        return to_tracker_output(step.obj_ids, step.logits)

    def remove_objects(self, ids) -> None:
        """Stop tracking these objects (an iterable of tracked ids)."""
        if self._session is None:
            ids_to_remove(ids, ())  # nothing is tracked yet: the error names the ids
        else:
            self._session.remove_objects(ids)

    def reset(self) -> None:
        self._session = self._frames = None


def to_tracker_output(obj_ids: list[int], logits: torch.Tensor) -> TrackerOutput:
    """SAM 2 logits (objects, H, W) in session order -> probabilities in increasing id order and a label map
    (each pixel: the most confident object with logit > 0; objects may overlap in the probabilities)."""
    order = sorted(range(len(obj_ids)), key=lambda i: obj_ids[i])
    logits = logits[order]
    ids = torch.tensor([obj_ids[i] for i in order], dtype=torch.int64, device=logits.device)
    best = logits.max(dim=0)
    labels = torch.where(best.values > 0, ids[best.indices], 0)
    return TrackerOutput(torch.sigmoid(logits), [int(i) for i in ids], labels)

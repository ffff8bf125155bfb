"""The interactive demo without its window: mouse and key events in, overlay pictures out.

    session = DemoSession(pipeline, open_source("clip.mp4"), save_dir="demo_masks")
    session.on_mouse("left_down", 120, 80); session.on_mouse("left_up", 120, 80)   # a click on object 1
    session.on_key("n")                                   # the next object
    session.on_key(" "); session.tick()                   # play: track the next frame
    picture = session.render()                            # H x W x 3 RGB with masks, prompts and status

Clicks on a frame are previewed with the prompter at once and given to the tracker when the video
moves on, so the corrected masks enter its memory on the frame they were drawn on.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch

from maskml.errors import MaskmlError
from maskml.io.draw import draw_masks, draw_prompts, draw_text, palette_color
from maskml.io.masks import write_mask
from maskml.io.stream import LiveStream
from maskml.predict.pipeline import Pipeline, Prompt

HELP = "left click: object  right click: background  drag: box  n: new object  1-9: pick object  " \
       "space: play/pause  r: clear object  s: save  q: quit"
DRAG_PIXELS = 5  # a press and release closer than this is a click, farther a box


class DemoSession:
    def __init__(self, pipeline: Pipeline, source, save_dir: str | Path = "demo_masks", clock=time.perf_counter):
        """source: what open_source returns (video file, frame folder or live stream)."""
        self.pipeline = pipeline
        self.source = source
        self.frames = iter(source)
        self.save_dir = Path(save_dir)
        self.clock = clock
        self.playing = False
        self.ended = False
        self.object_id = 1  # the object that clicks go to
        self.pending: dict[int, Prompt] = {}  # prompts on the shown frame, not yet given to the tracker
        self.committed = True  # whether the tracker has seen the pending prompts
        self.message = HELP
        self.fps = 0.0
        self._press: tuple[int, int] | None = None
        self._pointer: tuple[int, int] | None = None
        self.index, self.name, self.frame = next(self.frames)
        self._track()

    # events -------------------------------------------------------------------------------------

    def on_mouse(self, event: str, x: int, y: int) -> None:
        """event: "left_down", "left_up", "right_down" or "move", at pixel (x, y) of the frame."""
        if event == "left_down":
            self._press = self._pointer = (x, y)
        elif event == "move":
            self._pointer = (x, y)
        elif event == "left_up" and self._press is not None:
            (x0, y0), self._press = self._press, None
            if max(abs(x - x0), abs(y - y0)) >= DRAG_PIXELS:
                self._add(box=(min(x0, x), min(y0, y), max(x0, x), max(y0, y)))
            else:
                self._add(point=(x, y), label=1)
        elif event == "right_down":
            self._add(point=(x, y), label=0)

    def on_key(self, key: str) -> bool:
        """One key press; False means quit."""
        if key in ("q", "\x1b"):
            return False
        if key == " ":
            self.playing = not self.playing and not self.ended
        elif key == "n":
            known = set(self.pipeline.object_ids) | set(self.pending) | {self.object_id}
            self.object_id = min(max(known) + 1, 255)
            self.message = f"object {self.object_id}: click on it or draw a box around it"
        elif key in "123456789":  # back to an earlier object, e.g. to correct it
            self.object_id = int(key)
            self.message = f"object {self.object_id}: clicks now go to it"
        elif key == "r":
            self._clear(self.object_id)
        elif key == "s":
            path = self.save_dir / f"{self.name}.png"
            self.save_dir.mkdir(parents=True, exist_ok=True)
            write_mask(path, self.labels.cpu().numpy())
            self.message = f"saved {path}"
        return True

    def tick(self) -> None:
        """Called by the window loop between events: moves on one frame while playing."""
        if self.playing:
            self.advance()

    def advance(self) -> bool:
        """Give the pending prompts to the tracker, then track the next frame (False at the end)."""
        self._commit()
        try:
            self.index, self.name, self.frame = next(self.frames)
        except StopIteration:
            self.playing, self.ended = False, True
            self.message = "end of the video: s saves this frame's masks, q quits"
            return False
        start = self.clock()
        self._track()
        seconds = self.clock() - start
        if seconds > 0:
            self.fps = 1 / seconds if self.fps == 0 else 0.8 * self.fps + 0.2 / seconds
        return True

    # picture ------------------------------------------------------------------------------------

    def render(self) -> np.ndarray:
        picture = draw_masks(self.frame, self.labels.cpu().numpy())
        prompt = self.pending.get(self.object_id)
        if prompt is not None:
            picture = draw_prompts(picture, prompt.points, prompt.labels, prompt.box)
        if self._press is not None and self._pointer != self._press:
            cv2.rectangle(picture, self._press, self._pointer, (30, 144, 255), 1)
        draw_text(picture, [self.status])
        radius = max(4, picture.shape[0] // 80)  # the current object's colour, after its id
        cv2.circle(picture, (picture.shape[1] - 2 * radius, 2 * radius), radius, palette_color(self.object_id), -1)
        return draw_text(picture, [self.message], bottom=True)

    @property
    def status(self) -> str:
        state = "end" if self.ended else "playing" if self.playing else "paused"
        status = f"frame {self.index}  {self.fps:.1f} fps  object {self.object_id}  {state}"
        if isinstance(self.source, LiveStream):
            status += f"  dropped {self.source.dropped}"
        return status

    # the work -------------------------------------------------------------------------------------

    def _track(self, prompts=()) -> None:
        self.tracked = self.pipeline.step(self.frame, prompts).labels  # what the tracker made of the frame
        self.labels = self.tracked  # what is shown and saved: the tracked masks, or the prompts' previews

    def _add(self, point=None, label=1, box=None) -> None:
        old = self.pending.get(self.object_id)
        points, labels = (old.points, old.labels) if old else ((), ())
        if point is not None:
            points, labels = points + (point,), labels + (label,)
        try:
            box = box if box is not None else old.box if old else None
            prompt = Prompt(self.object_id, points=points, labels=labels, box=box)
            prompt.check_inside(self.frame.shape[:2])
        except MaskmlError as exc:
            self.message = str(exc)
            return
        old_pending = dict(self.pending)
        self.pending[self.object_id] = prompt
        if not self._update():
            self.pending = old_pending  # a prompt that gives no mask is not kept

    def _update(self) -> bool:
        """Show the pending prompts' masks over the tracked ones; False (and a message) when that fails."""
        try:
            if self.pipeline.predictor is None:  # the tracker takes the clicks itself: let it segment now
                self._track(self.pending.values())
                self.committed = True
            else:
                ids = self.pipeline.segment(self.frame, self.pending.values()).to(self.tracked.device)
                prompted = torch.isin(self.tracked, torch.tensor(list(self.pending), device=ids.device))
                self.labels = torch.where(ids > 0, ids, torch.where(prompted, 0, self.tracked))
                self.committed = False
        except MaskmlError as exc:
            self.message = str(exc)
            return False
        self.message = f"object {self.object_id}: {len(self.pending[self.object_id].points)} clicks" + \
                       (" and a box" if self.pending[self.object_id].box else "") + "; space tracks it"
        return True

    def _commit(self) -> None:
        if self.pending and not self.committed:
            try:
                self._track(self.pending.values())
            except MaskmlError as exc:
                self.message = str(exc)
        self.pending, self.committed = {}, True

    def _clear(self, obj: int) -> None:
        self.pending.pop(obj, None)
        if obj in self.pipeline.object_ids:
            self.pipeline.remove_objects([obj])
        self.tracked = torch.where(self.tracked == obj, 0, self.tracked)
        self.labels = torch.where(self.labels == obj, 0, self.labels)
        self.message = f"object {obj} cleared"

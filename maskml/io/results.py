"""Per-frame tracking results on disk: indexed PNGs, probability .npy files and an overlay MP4.

    with ResultWriter("masks/", probs="probs/", overlay="tracked.mp4", object_ids=[1, 2],
                      size=(480, 854), fps=24, source=video, total=len(video)) as results:
        for index, name, frame in video:
            results.write(index, name, frame, tracker.step(frame))

Frames may come in any order, and a frame written again replaces its earlier result (SAM 2 runs a
forward, then a backward pass). The folders stay under temporary names until the block ends
without error. The overlay is encoded as results come while they come in frame order; after a
write out of order it is drawn again at the end, from the label PNGs and the frames read once more
from `source`, so memory never holds more than one frame either way.
"""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from maskml.errors import MaskmlError
from maskml.io.draw import draw_masks
from maskml.io.masks import read_mask, save_mask
from maskml.io.video import VideoWriter, atomic_dir


def check_outputs(out: str | None, probs: str | None, overlay: str | None) -> None:
    """Flag values checked before anything slow runs."""
    for flag, path in (("out", out), ("probs", probs)):
        if path and Path(path).exists() and not Path(path).is_dir():
            raise MaskmlError(f"--{flag} {path} exists and is not a folder")
    if overlay and Path(overlay).suffix.lower() != ".mp4":
        raise MaskmlError(f"--overlay {overlay}: the overlay is written as an .mp4 file")


class ResultWriter:
    def __init__(self, out: str | Path, probs: str | Path | None = None, overlay: str | Path | None = None, *,
                 object_ids, size: tuple[int, int], fps: float, source=None, total: int | None = None,
                 desc: str = "tracking") -> None:
        """out: folder of one indexed PNG per frame (DAVIS palette); probs: folder of float16 .npy of
        shape (len(object_ids), H, W) in increasing id order, zeros for absent objects; overlay: MP4.
        size: (H, W); source: iterable of (index, name, frame) to read the frames again for an overlay
        written out of order (None for a live source, whose results come in order)."""
        self.paths = (Path(out), Path(probs) if probs else None, Path(overlay) if overlay else None)
        self.object_ids = sorted(int(i) for i in object_ids)
        self.size, self.fps, self.source = tuple(size), fps, source
        self.progress = {"total": total, "unit": "frame", "desc": desc}
        self.video: VideoWriter | None = None
        self._next = 0  # the frame the live overlay expects next
        self._redraw = False

    def __enter__(self) -> ResultWriter:
        out, probs, overlay = self.paths
        with ExitStack() as stack:
            self.out_dir = stack.enter_context(atomic_dir(out))
            self.probs_dir = stack.enter_context(atomic_dir(probs)) if probs else None
            if overlay:
                h, w = self.size
                self.video = VideoWriter(overlay, fps=self.fps, size=(w, h))
            stack.push(self._finish_overlay)  # before the folders are renamed: a redraw reads the label PNGs
            self.bar = stack.enter_context(tqdm(**self.progress))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return self._stack.__exit__(exc_type, exc, tb)

    def write(self, index: int, name: str, frame: np.ndarray, result) -> None:
        """Results (a TrackerOutput) of frame `index` named `name` (the output file stem)."""
        labels = result.labels.cpu().numpy()
        save_mask(self.out_dir / f"{name}.png", labels)
        if self.probs_dir is not None:
            probs = torch.zeros(len(self.object_ids), *labels.shape, dtype=torch.float16)
            for channel, obj in enumerate(result.object_ids):
                if obj not in self.object_ids:
                    raise ValueError(f"object {obj} is not among the objects {self.object_ids} given to ResultWriter")
                probs[self.object_ids.index(obj)] = result.probs[channel].cpu()
            np.save(self.probs_dir / f"{name}.npy", probs.numpy())
        if self.video is not None:
            if index == self._next:
                self.video.write(draw_masks(frame, labels))
                self._next += 1
            else:
                self._drop_live_overlay()
        self.bar.update(1)

    def _drop_live_overlay(self) -> None:
        if self.source is None:
            raise ValueError("results came out of frame order, and there is no source to read the frames "
                             "again for the overlay")
        self.video.__exit__(RuntimeError, None, None)  # deletes its temporary file
        self.video = None
        self._redraw = True

    def _finish_overlay(self, exc_type, exc, tb) -> bool:
        if self.video is not None:
            self.video.__exit__(exc_type, exc, tb)
        elif self._redraw and exc_type is None:
            h, w = self.size
            with VideoWriter(self.paths[2], fps=self.fps, size=(w, h)) as video:
                for _, name, frame in self.source:
                    path = self.out_dir / f"{name}.png"
                    labels = read_mask(path) if path.exists() else np.zeros(self.size, np.uint8)
                    video.write(draw_masks(frame, labels))
        return False

"""Per-frame tracking results on disk: indexed PNGs, probability .npy files, an overlay video and COCO
annotations.

    with ResultWriter("masks/", probs="probs/", overlay="tracked.mp4", coco="masks.json", object_ids=[1, 2],
                      size=(480, 854), fps=24, source=video) as results:
        for index, name, frame in video:
            results.write(index, name, frame, tracker.step(frame))

Each frame's files (<name>.png, <name>.npy) are written whole under a temporary name in their
folder, then renamed, as soon as the frame is done: an interrupted or failed run keeps every frame
completed, and the overlay is finished with the frames so far, so it plays. The folders may hold
other files, which are never touched; a file of the same name (an earlier run's result) is
replaced. With atomic=True the files go to hidden folders and move into the output folders only
when the block ends without error: all or nothing.

Frames may come in any order, and a frame written again replaces its earlier result (SAM 2 runs a
forward, then a backward pass). The overlay is encoded as results come while they come in frame
order; after a write out of order it is drawn again at the end, from the label PNGs and the frames
read once more from `source`, so memory never holds more than one frame either way. The COCO file
(one image per frame, one annotation per object and frame, segmentation as compressed RLE) is
written when the block ends, with the frames done, as the overlay is.
"""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import json

import numpy as np
import torch

from maskml.errors import MaskmlError
from maskml.io.draw import draw_masks
from maskml.io.images import atomic_path
from maskml.io.masks import read_mask, write_mask
from maskml.io.outputs import atomic_dir, make_folder, remove_empty_folders, remove_stale_temporaries
from maskml.io.rle import object_annotations
from maskml.io.video import VIDEO_CODECS, VideoWriter


def check_overlay_suffix(overlay: str | None) -> None:
    if overlay and Path(overlay).suffix.lower() not in VIDEO_CODECS:
        raise MaskmlError(f"--overlay {overlay}: the overlay is written as an .mp4 or .webm file")


def check_coco_suffix(coco: str | None) -> None:
    if coco and Path(coco).suffix.lower() != ".json":
        raise MaskmlError(f"--coco {coco}: the COCO annotations are written as a .json file")


class ResultWriter:
    def __init__(self, out: str | Path, probs: str | Path | None = None, overlay: str | Path | None = None, *,
                 object_ids, size: tuple[int, int], fps: float, source=None, atomic: bool = False,
                 coco: str | Path | None = None, object_names: dict[int, str] | None = None) -> None:
        """out: folder of one indexed PNG per frame (DAVIS palette); probs: folder of float16 .npy of
        shape (len(object_ids), H, W) in increasing id order, zeros for absent objects; overlay:
        .mp4 or .webm video; coco: .json file of COCO annotations, whose categories are the objects,
        named by object_names (default "object <id>"). size: (H, W); source: what open_video returns,
        to read the frames again for an overlay written out of order (None for a live source, whose
        results come in order)."""
        self.paths = (Path(out), Path(probs) if probs else None, Path(overlay) if overlay else None)
        self.coco = Path(coco) if coco else None
        self.object_ids = sorted(int(i) for i in object_ids)
        self.object_names = {i: (object_names or {}).get(i, f"object {i}") for i in self.object_ids}
        self._annotations: dict[int, list[dict]] = {}  # frame index -> its objects' annotations
        self.size, self.fps, self.source, self.atomic = tuple(size), fps, source, atomic
        self.video: VideoWriter | None = None
        self.written: dict[int, str] = {}  # frame index -> name, of the frames whose results are on disk
        self.codec: str | None = None  # the overlay's, once it is open
        self.browser_playable = True
        self.overlay_kept = False  # whether the overlay is there, once the block has ended
        self._next = 0  # the frame the live overlay expects next
        self._redraw = False

    def __enter__(self) -> ResultWriter:
        out, probs, overlay = self.paths
        self._created: list[Path] = []
        for folder in (out, probs):
            if folder is not None:  # an all-or-nothing folder appears when complete, so only its parent is made now
                self._created += make_folder(folder.parent if self.atomic else folder)
                remove_stale_temporaries(folder)  # what a run killed outright left: files in it, folders beside it
                remove_stale_temporaries(folder.parent)
        for file in (overlay, self.coco):
            if file is not None:
                self._created += make_folder(file.parent)
                remove_stale_temporaries(file.parent)
        with ExitStack() as stack:
            stack.callback(self._remove_unused_folders)  # runs last, after the atomic folders are moved
            self.out_dir = stack.enter_context(atomic_dir(out)) if self.atomic else out
            self.probs_dir = (stack.enter_context(atomic_dir(probs)) if self.atomic else probs) if probs else None
            if overlay:
                h, w = self.size
                self.video = VideoWriter(overlay, fps=self.fps, size=(w, h))
                self.codec, self.browser_playable = self.video.codec, self.video.browser_playable
            stack.push(self._finish_overlay)  # before atomic folders are moved: a redraw reads the label PNGs
            stack.push(self._finish_coco)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return self._stack.__exit__(exc_type, exc, tb)

    def write(self, index: int, name: str, frame: np.ndarray, result) -> None:
        """Results (a TrackerOutput) of frame `index` named `name` (the output file stem)."""
        labels = result.labels.cpu().numpy()
        if self.probs_dir is not None:
            probs = torch.zeros(len(self.object_ids), *labels.shape, dtype=torch.float16)
            for channel, obj in enumerate(result.object_ids):
                if obj not in self.object_ids:
                    raise ValueError(f"object {obj} is not among the objects {self.object_ids} given to ResultWriter")
                probs[self.object_ids.index(obj)] = result.probs[channel].cpu()
            with atomic_path(self.probs_dir / f"{name}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, probs.numpy())
        write_mask(self.out_dir / f"{name}.png", labels)
        if self.coco is not None:
            self._annotations[index] = object_annotations(result.labels)
        self.written[index] = name
        if self.video is not None and not self._redraw:
            if index == self._next:
                self.video.write(draw_masks(frame, labels))
                self._next += 1
            elif self.source is None:
                raise ValueError("results came out of frame order, and there is no source to read the frames "
                                 "again for the overlay")
            else:
                self._redraw = True

    def _finish_overlay(self, exc_type, exc, tb) -> bool:
        """Encoded live: finish it, kept unless an all-or-nothing run failed. Out of order: drawn
        again from the results on disk (those so far, after a failure or Ctrl-C)."""
        if self.video is None:
            return False
        keep = exc_type is None or not self.atomic
        if not self._redraw:
            self.overlay_kept = self.video.close(keep=keep)
            return False
        self.video.close(keep=False)
        if keep and self.written:
            h, w = self.size
            with VideoWriter(self.paths[2], fps=self.fps, size=(w, h)) as video:
                for index, name in sorted(self.written.items()):
                    video.write(draw_masks(self.source.frame(index), read_mask(self.out_dir / f"{name}.png")))
            self.overlay_kept = True
        return False

    def _finish_coco(self, exc_type, exc, tb) -> bool:
        """The annotations of the frames written, kept unless an all-or-nothing run failed."""
        if self.coco is None or not self.written or exc_type is not None and self.atomic:
            return False
        h, w = self.size
        images, annotations = [], []
        for index, name in sorted(self.written.items()):
            images.append({"id": index, "file_name": name, "frame_index": index, "height": h, "width": w})
            for annotation in self._annotations[index]:
                annotations.append({"id": len(annotations) + 1, "image_id": index, **annotation})
        categories = [{"id": i, "name": self.object_names[i]} for i in self.object_ids]
        with atomic_path(self.coco) as tmp:
            tmp.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        return False

    def _remove_unused_folders(self) -> None:
        if not self.written:  # a run that failed before its first frame leaves no empty folders behind
            remove_empty_folders(self._created)

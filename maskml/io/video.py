"""Frame sources (video files, frame folders), an MP4 writer and atomic output folders.

Frames are read lazily, one at a time, so memory does not grow with video length.
Frame folders are decoded with Pillow (bit-identical to the official pipelines);
video files with OpenCV.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from maskml.errors import MaskmlError
from maskml.io.images import _UMASK, read_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


class FrameFolder:
    """A folder of images, sorted by name; frame names are the file stems."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not self.files:
            raise MaskmlError(f"folder {path} holds no frames (.jpg, .jpeg or .png files)")
        self.names = [p.stem for p in self.files]
        if len(set(self.names)) != len(self.names):
            raise MaskmlError(f"folder {path} has two frames with the same name but different suffixes")
        first = self.frame(0)
        self.size = first.shape[:2]
        self.fps = 24.0

    def __len__(self) -> int:
        return len(self.files)

    def frame(self, index: int) -> np.ndarray:
        image = read_image(self.files[index])
        if index and image.shape[:2] != self.size:
            raise MaskmlError(f"frame {self.files[index]} is {image.shape[1]}x{image.shape[0]}, but the first frame "
                              f"is {self.size[1]}x{self.size[0]}: all frames must have one size")
        return image

    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]:
        for index, name in enumerate(self.names):
            yield index, name, self.frame(index)


class VideoFile:
    """A video decoded by OpenCV; frame names are the zero-based index with five digits.
    len() is the container's frame count; a stream that ends early stops iteration there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        capture = cv2.VideoCapture(str(path))
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            capture.release()
            raise MaskmlError(f"cannot decode video {path}: not a video OpenCV can read, or it has no frames")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.fps = capture.get(cv2.CAP_PROP_FPS) or 24.0
        capture.release()
        self.count = max(count, 1)
        self.size = frame.shape[:2]
        self.names = [f"{i:05d}" for i in range(self.count)]

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if index >= len(self.names):  # the header under-counted
                    self.names.append(f"{index:05d}")
                yield index, f"{index:05d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            capture.release()

    def frame(self, index: int) -> np.ndarray:
        capture = cv2.VideoCapture(str(self.path))
        try:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
        finally:
            capture.release()
        if not ok:
            raise MaskmlError(f"video {self.path} has no frame {index}")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def open_video(path: str | Path) -> FrameFolder | VideoFile:
    """A video file or a folder of frames, read lazily."""
    path = Path(path)
    if path.is_dir():
        return FrameFolder(path)
    if not path.exists():
        raise MaskmlError(f"video {path} does not exist")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise MaskmlError(f"{path} is neither a folder of frames nor a video file ({', '.join(VIDEO_SUFFIXES)})")
    return VideoFile(path)


class VideoWriter:
    """MP4 writer taking RGB frames; the file appears under its name only when closed without error."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]) -> None:
        """size: (width, height)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".mp4", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise MaskmlError(f"cannot write video {self.path}: OpenCV has no MP4 encoder here")

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.writer.release()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path`, on failure or
    interruption it is removed and whatever `path` held before stays untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders; outputs get the usual permissions
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

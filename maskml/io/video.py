"""Frame sources (video files, frame folders), an MP4 writer and atomic output folders.

    source = open_video("clip.mp4")          # or a folder of .jpg/.png frames
    for index, name, frame in source:        # frame: H x W x 3 uint8 RGB
        ...

Frames are read lazily, one at a time, so memory does not grow with video length.
Frame folders are decoded with Pillow (bit-identical to the official pipelines);
video files with OpenCV.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# FFmpeg, inside OpenCV, prints its own line about a broken file ("[mov,mp4,...] moov atom not found")
# before maskml's message says what is wrong once. OpenCV reads this setting when it first uses FFmpeg,
# so it is set on import (a setting of the user's own wins; a process that used OpenCV's FFmpeg before
# importing maskml keeps FFmpeg's lines).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

import cv2  # noqa: E402 - after the setting above
import numpy as np  # noqa: E402

from maskml.errors import MaskmlError  # noqa: E402
from maskml.io.images import _UMASK, read_image  # noqa: E402

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_FPS = 24.0  # a frame folder has no frame rate, and some containers report none


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV's own log silenced for the block (its warnings for a file or camera it cannot open: the
    MaskmlError that follows says it once), then set back."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


class VideoSource:
    """What open_video returns. names: one per frame; size: (H, W); fps: frames per second;
    len(): the number of frames; iteration yields (index, name, frame) in order; frame(index)
    reads any one frame, forwards or backwards."""

    path: Path
    names: list[str]
    size: tuple[int, int]
    fps: float

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]:
        for index, name in enumerate(self.names):
            yield index, name, self.frame(index)

    def _check_index(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise MaskmlError(f"{self.path} has {len(self)} frames (0 to {len(self) - 1}); there is no frame {index}")
        return index

    def _check_size(self, frame: np.ndarray, where: str) -> np.ndarray:
        if frame.shape[:2] != self.size:
            raise MaskmlError(f"{where} is {frame.shape[1]}x{frame.shape[0]}, but the first frame is "
                              f"{self.size[1]}x{self.size[0]}: all frames must have one size")
        return frame


class FrameFolder(VideoSource):
    """A folder of images in the order of their file names (names that are all numbers in the
    order of their values, as SAM 2 reads them, so 1.jpg, 2.jpg, 10.jpg need no zero padding);
    frame names are the file stems."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # dot files are skipped: archives made on macOS carry "._00000.jpg" metadata next to each frame
        files = [p for p in path.iterdir()
                 if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".") and p.is_file()]
        if not files:
            raise MaskmlError(f"folder {path} holds no frames: put the frames there as .jpg, .jpeg or .png files")
        numbered = all(p.stem.isascii() and p.stem.isdigit() for p in files)
        self.files = sorted(files, key=(lambda p: (int(p.stem), p.name)) if numbered else (lambda p: p.name))
        self.names = [p.stem for p in self.files]
        if len(set(self.names)) != len(self.names):
            twice = sorted({n for n in self.names if self.names.count(n) > 1})
            raise MaskmlError(f"folder {path} has two frames named {twice[0]} with different suffixes: keep one")
        self.size = read_image(self.files[0]).shape[:2]  # decoded, not just the header: a corrupt first frame fails now
        self.fps = DEFAULT_FPS

    def frame(self, index: int) -> np.ndarray:
        path = self.files[self._check_index(index)]
        return self._check_size(read_image(path), f"frame {path}")


class VideoFile(VideoSource):
    """A video decoded by OpenCV; frame names are the zero-based index with five digits.

    len() is the frame count the container declares, which is only a promise: a stream that
    ends early stops iteration there, and one that declares no count (some .mkv/.webm) starts
    at 1 and grows as iteration finds frames. frame() keeps a capture open, so reading frames
    in order decodes each once; any other jump seeks (FFmpeg goes to the keyframe before and
    decodes forward, so the frame is exact).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._capture: cv2.VideoCapture | None = None  # frame()'s, opened on first use
        self._next = 0  # index of the frame that capture reads next
        with quiet_opencv():
            capture = cv2.VideoCapture(str(path))
            try:
                ok, frame = capture.read() if capture.isOpened() else (False, None)
                count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if ok else 0
                fps = capture.get(cv2.CAP_PROP_FPS) if ok else 0.0
            finally:
                capture.release()
        if not ok:
            raise MaskmlError(f"cannot decode video {path}: OpenCV cannot read it or it has no frames "
                              f"(re-encode it, e.g. ffmpeg -i {path.name} out.mp4, or extract its frames to a folder)")
        self.size = frame.shape[:2]
        self.fps = fps if math.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
        self.names = [f"{i:05d}" for i in range(max(count, 1))]

    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]:
        capture = cv2.VideoCapture(str(self.path))  # its own capture: iterations and frame() do not interfere
        try:
            index = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                name = f"{index:05d}"
                if index == len(self.names):  # the container under-counted
                    self.names.append(name)
                yield index, name, self._to_rgb(frame, index)
                index += 1
        finally:
            capture.release()

    def frame(self, index: int) -> np.ndarray:
        self._check_index(index)
        if self._capture is None:
            self._capture, self._next = cv2.VideoCapture(str(self.path)), 0
        if index != self._next:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = self._capture.read()
        if not ok:
            self.close()
            raise MaskmlError(f"video {self.path} declares {len(self)} frames but frame {index} cannot be decoded")
        self._next = index + 1
        return self._to_rgb(frame, index)

    def _to_rgb(self, frame: np.ndarray, index: int) -> np.ndarray:
        return self._check_size(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), f"frame {index} of {self.path}")

    def close(self) -> None:
        """Release the capture frame() keeps open (the next frame() opens a new one)."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def open_video(path: str | Path) -> VideoSource:
    """A video file (.mp4, .avi, .mov, .mkv, ...) or a folder of frames, read lazily."""
    path = Path(path)
    if path.is_dir():
        return FrameFolder(path)
    if not path.exists():
        raise MaskmlError(f"video {path} does not exist (give a video file or a folder of frames)")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise MaskmlError(f"{path} is neither a folder of frames nor a video file ({', '.join(VIDEO_SUFFIXES)})")
    return VideoFile(path)


class VideoWriter:
    """MP4 (mp4v) writer taking H x W x 3 uint8 RGB frames of one size, used as a context manager:
    the file appears under its name only when the block ends without error and with at least one
    frame written; otherwise nothing is left."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]) -> None:
        """size: (width, height), as OpenCV takes it."""
        self.path = Path(path)
        if not (math.isfinite(fps) and fps > 0):
            raise MaskmlError(f"cannot write video {self.path} at {fps} frames per second: give a positive rate")
        self.size = tuple(size)
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the temporary name ends in .mp4 whatever the final one: OpenCV picks the container from it
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".mp4", dir=self.path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        self.tmp = Path(tmp)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, self.size)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise MaskmlError(f"cannot write video {self.path}: this OpenCV build has no MP4 (mp4v) encoder; "
                              f"write the frames to a folder instead")

    def write(self, frame: np.ndarray) -> None:
        # OpenCV drops a frame of another size or type without a word
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise MaskmlError(f"frames for {self.path} must be H x W x 3 uint8 RGB, got {frame.dtype} {frame.shape}")
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise MaskmlError(f"frame {self.count} for {self.path} is {frame.shape[1]}x{frame.shape[0]}, but the "
                              f"video is {self.size[0]}x{self.size[1]}")
        self.writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
        self.count += 1

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.writer.release()
        if exc_type is None and self.count == 0:
            self.tmp.unlink(missing_ok=True)
            raise MaskmlError(f"no frames were given for video {self.path}; nothing was written")
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path` (and whatever
    it held), on failure or Ctrl-C it is removed and whatever `path` held before stays untouched."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MaskmlError(f"output folder {path} exists and is a file: remove it or choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders; outputs get the usual permissions
    try:
        yield tmp
        if path.exists():
            # a folder cannot replace a non-empty one in one rename: move the old one aside first
            old = tmp.with_name(tmp.name + ".old")  # unique, as tmp is
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

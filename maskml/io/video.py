"""Frame sources (video files, frame folders) and a video writer.

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
import sys
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
from maskml.io.images import read_image  # noqa: E402
from maskml.io.outputs import temporary_file  # noqa: E402

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_FPS = 24.0  # a frame folder has no frame rate, and some containers report none


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """Silence what FFmpeg and OpenCV print straight to the process's stderr while a capture or a writer
    is opened (e.g. "tag 0x30395056/'VP90' is not supported", a hardware H.264 encoder that finds no
    device, warnings for a file or camera it cannot open): whether it opened is the one answer needed,
    and the MaskmlError that follows a failure says it once."""
    sys.stderr.flush()
    saved = os.dup(2)
    level = cv2.utils.logging.getLogLevel()
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)
        os.dup2(saved, 2)
        os.close(saved)


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


def in_frame_order(files: list[Path]) -> list[Path]:
    """Frame files in time order: by the numbers their stems are when all are numbers, else by name."""
    numbered = all(p.stem.isascii() and p.stem.isdigit() for p in files)
    return sorted(files, key=(lambda p: (int(p.stem), p.name)) if numbered else (lambda p: p.name))


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
        self.files = in_frame_order(files)
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


# fourccs to try for each suffix, browser-playable first; what the installed OpenCV's FFmpeg can
# encode is found at run time (pip's opencv-python-headless has VP9 and VP8 but no H.264 encoder).
# WebM takes VP8 first: the same browsers play it, and through OpenCV (which passes libvpx no speed
# setting) it encodes about 6x faster than VP9 for files only ~6% larger (benchmarks/bench_overlay.py)
VIDEO_CODECS = {".mp4": ("avc1", "vp09", "mp4v"), ".webm": ("VP80", "VP90")}
CODEC_NAMES = {"avc1": "H.264", "vp09": "VP9", "VP90": "VP9", "VP80": "VP8", "mp4v": "MPEG-4 part 2 (mp4v)"}
BROWSER_PLAYABLE = {"avc1", "vp09", "VP90", "VP80"}


class VideoWriter:
    """Writer of H x W x 3 uint8 RGB frames of one size into an .mp4 or .webm file, in a format
    browsers play where the installed OpenCV can encode one: for .mp4 H.264, else VP9, else mp4v
    (which browsers do not play: `browser_playable` says so); for .webm VP8, else VP9. `codec`
    names the one written.

    The frames go to a temporary file beside `path`, which takes the final name on close(keep=True)
    with at least one frame written. As a context manager the file appears only when the block
    ends without error; otherwise nothing is left."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int],
                 codecs: tuple[str, ...] | None = None) -> None:
        """size: (width, height), as OpenCV takes it. codecs: the fourccs to try instead of the
        suffix's (e.g. ("mp4v",): encoded 100x faster than VP9, for a file no browser will show)."""
        self.path = Path(path)
        if not (math.isfinite(fps) and fps > 0):
            raise MaskmlError(f"cannot write video {self.path} at {fps} frames per second: give a positive rate")
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_CODECS:
            raise MaskmlError(f"cannot write video {self.path}: videos are written as .mp4 or .webm files")
        codecs = codecs or VIDEO_CODECS[suffix]
        self.size = tuple(size)
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_file(self.path)  # its name ends in the final name: OpenCV picks the container from it
        for fourcc in codecs:
            with quiet_opencv():
                self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), fps, self.size)
            if self.writer.isOpened():
                break
            self.writer.release()
        else:
            self.tmp.unlink(missing_ok=True)
            raise MaskmlError(f"cannot write video {self.path}: this OpenCV build has no encoder for it "
                              f"({', '.join(codecs)}); write the frames to a folder instead")
        self.fourcc = fourcc
        self.codec = CODEC_NAMES.get(fourcc, fourcc)
        self.browser_playable = fourcc in BROWSER_PLAYABLE

    def write(self, frame: np.ndarray) -> None:
        # OpenCV drops a frame of another size or type without a word
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise MaskmlError(f"frames for {self.path} must be H x W x 3 uint8 RGB, got {frame.dtype} {frame.shape}")
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise MaskmlError(f"frame {self.count} for {self.path} is {frame.shape[1]}x{frame.shape[0]}, but the "
                              f"video is {self.size[0]}x{self.size[1]}")
        self.writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
        self.count += 1

    def close(self, keep: bool = True) -> bool:
        """Finish the file (it plays, with the frames written so far) and give it its name, or with
        keep=False remove it. True if the file was kept; one without frames never is."""
        self.writer.release()
        if keep and self.count:
            os.replace(self.tmp, self.path)
            return True
        self.tmp.unlink(missing_ok=True)
        return False

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.close(keep=exc_type is None) and exc_type is None:
            raise MaskmlError(f"no frames were given for video {self.path}; nothing was written")
        return False

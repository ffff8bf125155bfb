"""Live sources (cameras, stream URLs), read on a background thread that keeps only the newest frame.

    source = open_source("clip.mp4")                   # or a folder, a URL, or open_source(camera=0)
    for index, name, frame in source:                  # as for open_video's sources
        ...                                            # a slow model makes a live source drop frames
    source.dropped

A model slower than its camera never falls behind: a frame that arrives while the model is busy
replaces the one waiting, and is counted in `dropped`. So at most two frames are held (the one being
processed and the newest), and a result is at most one model step plus one frame interval old.
Indices and names ("00000", ...) count the frames handed out, not the dropped ones.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from maskml.errors import MaskmlError
from maskml.io.video import open_video, quiet_opencv


class LiveStream:
    def __init__(self, capture, description: str) -> None:
        """capture: anything with cv2.VideoCapture's read() -> (ok, BGR frame) and release(), e.g. an
        opened cv2.VideoCapture. Its first frame is read here, so a source without frames fails now."""
        self.description = description
        self.capture = capture
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise MaskmlError(f"{description} opened but gives no frames (is another program using it?)")
        self.size = first.shape[:2]
        fps = capture.get(cv2.CAP_PROP_FPS) if hasattr(capture, "get") else 0.0
        self.fps = fps if 0 < fps < 1000 else 24.0
        self.received = 1  # frames the source gave, handed out or dropped
        self.dropped = 0
        self.error: str | None = None  # why the source stopped early, when it failed rather than ended
        self._latest: np.ndarray | None = first
        self._ended = False
        self._closing = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, name=f"maskml {description}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self._closing.is_set():
                ok, frame = self.capture.read()
                if not ok or frame is None:
                    break
                with self._changed:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = frame
                    self.received += 1
                    self._changed.notify()
        except Exception as exc:  # a driver failure ends the stream like its end; the frames so far stay valid
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.capture.release()
            with self._changed:
                self._ended = True
                self._changed.notify()

    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]:
        index = 0
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._latest is not None or self._ended)
                    frame, self._latest = self._latest, None
                if frame is None:
                    return
                yield index, f"{index:05d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading; the reader thread releases the source once its current read returns."""
        self._closing.set()


def open_stream(source: int | str) -> LiveStream:
    """A camera by index (0, 1, ...) or a stream URL OpenCV can read (rtsp://, http://, ...)."""
    # OpenCV and FFmpeg print their own warnings for a missing device or an unreachable host; the
    # MaskmlError below says it once (FFmpeg's are silenced on import of maskml.io.video)
    with quiet_opencv():
        capture = cv2.VideoCapture(source)
    if isinstance(source, int):
        description = f"camera {source}"
        hint = "no such camera, or another program is using it (cameras are numbered from 0)"
    else:
        description = f"stream {source}"
        hint = "OpenCV cannot connect to it or cannot decode it (check the address and that the stream is live)"
    if not capture.isOpened():
        capture.release()
        raise MaskmlError(f"cannot open {description}: {hint}")
    return LiveStream(capture, description)


def open_source(video: str | Path | None = None, camera: int | None = None):
    """A video file or frame folder (open_video), or a live source: a camera, or a URL that is not a
    file or folder here."""
    if (video is None) == (camera is None):
        raise MaskmlError("give either a VIDEO (file, frame folder or stream URL) or --camera N")
    if camera is not None:
        if camera < 0:
            raise MaskmlError(f"--camera {camera}: cameras are numbered from 0")
        return open_stream(camera)
    if "://" in str(video) and not Path(video).exists():
        return open_stream(str(video))
    return open_video(video)

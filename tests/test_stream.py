"""Live sources: a reader thread keeps only the newest frame, so a slow consumer drops frames, never queues them."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from maskml import MaskmlError
from maskml.io.stream import LiveStream, open_source
from maskml.io.video import FrameFolder, VideoWriter


class GatedCamera:
    """A synthetic live source: like a camera between two frames, read() waits until the test lets the
    next frame out. Frame i is filled with the value i (BGR, as OpenCV captures give)."""

    def __init__(self, count: int) -> None:
        self.count, self.next = count, 0
        self.gate = threading.Semaphore(1)  # the first frame is there at once
        self.released = False

    def read(self):
        self.gate.acquire()
        if self.next == self.count:
            return False, None
        self.next += 1
        return True, np.full((24, 32, 3), self.next - 1, np.uint8)

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.released = True


def wait_until(condition) -> None:
    """Wait for the reader thread to get there (a wait, not a measurement)."""
    for _ in range(2000):
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError("the reader thread did not get there")


def test_frames_arriving_while_busy_are_dropped():
    camera = GatedCamera(10)
    stream = LiveStream(camera, "test camera")
    assert stream.size == (24, 32) and stream.fps == 30.0
    frames = iter(stream)
    assert next(frames)[:2] == (0, "00000")

    camera.gate.release(3)  # three frames come while the consumer is busy: only the newest is kept
    wait_until(lambda: stream.received == 4)
    index, name, frame = next(frames)
    assert (index, name, int(frame[0, 0, 0])) == (1, "00001", 3) and stream.dropped == 2
    assert frame.shape == (24, 32, 3) and frame.dtype == np.uint8

    camera.gate.release(1)  # the consumer keeps up: nothing dropped
    wait_until(lambda: stream.received == 5)
    assert int(next(frames)[2][0, 0, 0]) == 4 and stream.dropped == 2

    camera.gate.release(6)  # five more frames, then the end of the stream
    wait_until(lambda: camera.released)
    index, name, frame = next(frames)
    assert (index, int(frame[0, 0, 0])) == (3, 9)  # the last frame is handed out, not lost
    assert stream.dropped == 6 and stream.received == 10
    with pytest.raises(StopIteration):
        next(frames)
    assert camera.released and stream.error is None


def test_slow_consumer_over_a_video_read_as_a_stream(tmp_path):
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=30, size=(64, 48)) as writer:
        for i in range(30):
            writer.write(np.full((48, 64, 3), 8 * i, np.uint8))
    stream = open_source(f"file://{path}")  # not a file name here: a URL, read live
    assert isinstance(stream, LiveStream) and stream.size == (48, 64)
    seen = []
    for index, name, frame in stream:
        assert index == len(seen) and name == f"{index:05d}"
        seen.append(round(float(frame.mean()) / 8))
        time.sleep(0.05)  # a model far slower than the decoder
    # which frame comes first is a race with the reader (it may replace frame 0 before the first
    # next()); what a live stream promises is newer frames only, and the last one never lost
    assert seen[-1] == 29 and seen == sorted(set(seen))
    assert len(seen) + stream.dropped == stream.received == 30
    assert stream.dropped > 0


def test_sources_that_cannot_be_opened(tmp_path):
    with pytest.raises(MaskmlError, match="cannot open camera 9: no such camera"):
        open_source(camera=9)
    with pytest.raises(MaskmlError, match="numbered from 0"):
        open_source(camera=-1)
    with pytest.raises(MaskmlError, match="cannot open stream rtsp://127.0.0.1:9/none"):
        open_source("rtsp://127.0.0.1:9/none")
    with pytest.raises(MaskmlError, match="either a VIDEO"):
        open_source(tmp_path, camera=0)
    with pytest.raises(MaskmlError, match="gives no frames"):
        LiveStream(GatedCamera(0), "empty camera")
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "00000.png"), np.zeros((8, 8, 3), np.uint8))
    assert isinstance(open_source(folder), FrameFolder)

"""The interactive demo: its logic driven headless with synthetic events, and its window under Xvfb."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

import maskml
from maskml import Pipeline, Prompt
from maskml.demo import DemoSession
from maskml.demo.session import HELP
from maskml.demo.window import opencv_swap_commands
from maskml.io.draw import TEXT_MARGIN, draw_text, fit_text, text_scale
from maskml.io.masks import read_mask
from maskml.io.stream import LiveStream
from maskml.io.video import open_video
from test_pipeline import BoxTracker
from test_stream import GatedCamera, wait_until

ROOT = Path(__file__).resolve().parents[1]
GUI_OPENCV = ROOT / "build" / "opencv-gui"  # OpenCV's desktop build, installed there by `make test`


class Clock:
    """Each reading is a quarter second after the previous one: a tracking step takes 0.25 s."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def expected_ids(predictor, prompts) -> torch.Tensor:
    ids = torch.zeros(predictor.original_size, dtype=torch.int64)
    for p in prompts:
        ids[predictor.predict(points=p.points or None, labels=p.labels or None, box=p.box).logits[0] > 0] = p.object_id
    return ids


def test_events_become_prompts_tracked_objects_and_pictures(tmp_path, small_judo, sam_checkpoints, cutie_small_checkpoint):
    tracker = maskml.VideoTracker(maskml.load_model("cutie_small", checkpoint=cutie_small_checkpoint))
    pipe = Pipeline(tracker, maskml.load_model("mobile_sam", checkpoint=sam_checkpoints["mobile_sam"]))
    session = DemoSession(pipe, open_video(small_judo), save_dir=tmp_path / "saved", clock=Clock())
    assert (session.index, session.object_id, session.playing) == (0, 1, False) and not session.labels.any()
    assert session.status == "frame 0  0.0 fps  object 1  paused"
    plain = session.render()
    assert plain.shape == (96, 160, 3) and plain.dtype == np.uint8

    session.on_mouse("left_down", 80, 48)
    session.on_mouse("left_up", 81, 49)  # moved less than a drag: a click
    session.on_mouse("right_down", 10, 10)
    assert session.pending == {1: Prompt(1, points=[(81, 49), (10, 10)], labels=[1, 0])}
    torch.testing.assert_close(session.labels, expected_ids(pipe.predictor, session.pending.values()), rtol=0, atol=0)
    assert tracker.curr_ti == -1  # previews only: the tracker has not seen the clicks yet

    session.on_mouse("left_down", 400, 10)
    session.on_mouse("left_up", 400, 10)
    assert "outside the 160x96 frame" in session.message and len(session.pending[1].points) == 2

    session.on_key("n")
    session.on_mouse("left_down", 100, 20)
    session.on_mouse("move", 150, 90)
    dragging = session.render()
    assert tuple(dragging[55, 100]) == (30, 144, 255)  # the box being drawn
    session.on_mouse("left_up", 150, 90)
    assert session.object_id == 2 and session.pending[2] == Prompt(2, box=(100, 20, 150, 90))
    torch.testing.assert_close(session.labels, expected_ids(pipe.predictor, session.pending.values()), rtol=0, atol=0)
    assert not np.array_equal(session.render(), plain)

    assert session.on_key("s")
    np.testing.assert_array_equal(read_mask(tmp_path / "saved" / "00000.png"), session.labels.numpy())

    session.on_key(" ")
    session.tick()  # the prompts enter the tracker on frame 0, then frame 1 is tracked
    assert session.playing and session.index == 1 and session.pending == {} and tracker.curr_ti == 1
    assert pipe.object_ids == [1, 2] and session.fps == pytest.approx(4.0)
    assert session.status == "frame 1  4.0 fps  object 2  playing"

    session.on_key(" ")  # pause, correct object 1 on frame 1: only object 1's mask changes
    tracked = session.labels.clone()
    session.on_key("1")
    session.on_mouse("left_down", 40, 30)
    session.on_mouse("left_up", 40, 30)
    fix = expected_ids(pipe.predictor, [Prompt(1, points=[(40, 30)])])
    torch.testing.assert_close(session.labels, torch.where(fix > 0, fix, torch.where(tracked == 1, 0, tracked)),
                               rtol=0, atol=0)
    session.on_key("2")
    session.on_key("r")
    assert pipe.object_ids == [1] and not (session.labels == 2).any()
    session.on_key(" ")
    session.tick()
    assert session.index == 2 and pipe.object_ids == [1] and tracker.curr_ti == 3  # frame 1 again, then 2
    for _ in range(4):
        session.tick()
    assert session.ended and not session.playing and session.index == 5 and "end of the video" in session.message
    session.on_key(" ")
    assert not session.playing
    assert not session.on_key("q")


@pytest.mark.parametrize("width, height", [(854, 480), (320, 180)])
def test_key_help_is_wrapped_to_the_window(width, height):
    frame = np.zeros((height, width, 3), np.uint8)
    rows = fit_text([HELP], width, text_scale(frame))
    assert len(rows) > 1 and rows[-1][0].endswith("q: quit")
    assert "  ".join(text for text, _ in rows) == HELP  # every key's help, whole and in order
    assert all(TEXT_MARGIN + drawn_width <= width - TEXT_MARGIN for _, drawn_width in rows)
    text = draw_text(frame, [HELP], bottom=True).max(axis=2) > 128  # white text on the darkened band
    columns = np.nonzero(text.any(axis=0))[0]
    assert TEXT_MARGIN <= columns.min() and columns.max() < width - TEXT_MARGIN
    line_tops = np.flatnonzero(np.diff(text.any(axis=1).astype(int)) == 1)  # where a run of text rows starts
    assert len(line_tops) == len(rows)


def test_a_tracker_that_takes_clicks_segments_at_once(small_judo):
    tracker = BoxTracker()
    session = DemoSession(Pipeline(tracker), open_video(small_judo))
    session.on_mouse("left_down", 10, 20)
    session.on_mouse("left_up", 30, 40)
    assert int((session.labels == 1).sum()) == 20 * 20 and tracker.steps == 1
    session.advance()
    assert tracker.steps == 2 and int((session.labels == 1).sum()) == 400  # no second step for frame 0


def test_live_source_shows_its_drops():
    camera = GatedCamera(5)
    stream = LiveStream(camera, "test camera")
    session = DemoSession(Pipeline(BoxTracker()), stream)
    camera.gate.release(3)
    wait_until(lambda: stream.received == 4)
    session.advance()
    assert session.index == 1 and int(session.frame[0, 0, 0]) == 3
    assert session.status.endswith("dropped 2")
    stream.close()


def test_without_window_support_the_demo_says_how_to_swap_opencv(small_judo):
    """The headless OpenCV that maskml installs has no windows: the advice swaps it for the desktop build of
    the same version (installing that beside it would leave two builds sharing one cv2 folder) and back."""
    opencv = version("opencv-python-headless")
    swap = f"pip uninstall -y opencv-python-headless && pip install 'opencv-python=={opencv}'"
    back = f"pip uninstall -y opencv-python && pip install 'opencv-python-headless=={opencv}'"
    assert opencv_swap_commands() == (swap, back)
    env = {**os.environ, "DISPLAY": ":99"}  # a display is set, so the window itself is what fails
    demo = subprocess.run([sys.executable, "-m", "maskml", "demo", str(small_judo), "--prompter", "mobile_sam"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 2 and demo.stdout == ""
    assert demo.stderr.count("\n") == 1 and "no window support" in demo.stderr
    assert swap in demo.stderr and back in demo.stderr and "--point and --box" in demo.stderr
    usage = subprocess.run([sys.executable, "-m", "maskml", "demo", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300).stdout
    assert f"\n  {swap}\nand back:\n  {back}\n" in usage


def xdotool(display: str, *args: str) -> str:
    return subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": display}, check=True,
                          capture_output=True, text=True, timeout=120).stdout.strip()


def press_until(display: str, window: str, key: str, path: Path, seconds: int = 120) -> None:
    """Press `key` once a second until `path` exists: a key pressed while the demo is busy can be lost."""
    for _ in range(seconds):
        xdotool(display, "key", "--window", window, key)
        if path.exists():
            return
        time.sleep(1)
    raise AssertionError(f"{path.name} was not written within {seconds} s")


def test_window_under_xvfb(tmp_path, small_judo, sam_checkpoints, cutie_small_checkpoint):
    """`maskml demo` in a real OpenCV window on a virtual display, clicked and typed at with xdotool."""
    missing = [tool for tool in ("Xvfb", "xdotool") if subprocess.run(["which", tool], capture_output=True).returncode]
    assert not missing and (GUI_OPENCV / "cv2").is_dir(), \
        f"the window test needs Xvfb, xdotool and {GUI_OPENCV}: `make test` installs them (missing: {missing})"
    # an explicit display with neither a lock file nor a socket: left to choose (-displayfd alone), Xvfb takes
    # :0 when only a stale /tmp/.X11-unix/X0 of an earlier server remains, and clients then cannot connect
    free = next(n for n in range(99, 1000)
                if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists())
    server = subprocess.Popen(["Xvfb", f":{free}", "-displayfd", "1", "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    demo = None
    try:
        display = f":{server.stdout.readline().strip()}"
        env = {**os.environ, "DISPLAY": display, "PYTHONPATH": str(GUI_OPENCV), "QT_QPA_PLATFORM": "xcb"}
        saved = tmp_path / "saved"
        demo = subprocess.Popen([sys.executable, "-m", "maskml", "demo", str(small_judo), "--checkpoint",
                                 str(cutie_small_checkpoint), "--prompter", "mobile_sam", "--prompter-checkpoint",
                                 str(sam_checkpoints["mobile_sam"]), "--save-dir", str(saved)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(1000):  # the title gets the video's name once the models are loaded
            assert demo.poll() is None, demo.communicate()[0]
            found = subprocess.run(["xdotool", "search", "--name", "^maskml demo: "], capture_output=True,
                                   text=True, env={**os.environ, "DISPLAY": display}).stdout.split()
            if found:
                break
            time.sleep(0.2)
        window = found[0]
        xdotool(display, "mousemove", "--window", window, "80", "48", "click", "1")  # object 1
        press_until(display, window, "s", saved / "00000.png")  # the click's mask may take a while on a busy machine
        assert (read_mask(saved / "00000.png") == 1).any()
        xdotool(display, "key", "--window", window, "space")  # track to the end of the video, then save
        press_until(display, window, "s", saved / "00005.png")
        xdotool(display, "key", "--window", window, "q")
        output, _ = demo.communicate(timeout=60)
        assert demo.returncode == 0, output
    finally:
        if demo is not None and demo.poll() is None:
            demo.kill()
        server.kill()
        server.wait()

"""Frame sources (folders and video files) and the video writer."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import READ_BACK_FOURCCS, video_fourcc
from maskml import MaskmlError
from maskml.io.video import FrameFolder, VideoFile, VideoWriter, open_video

JUDO = Path(__file__).parents[1] / "examples" / "judo"


def make_frames(folder, count=5, size=(48, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(count)]
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i * 5:05d}.png")
    return frames


def level(i):
    return 10 + 7 * i  # up to 30 frames


def make_video(path, count=30, size=(48, 96), fourcc="mp4v", fps=10):
    """Frames getting brighter, with a moving white square. mp4v puts a keyframe every 12 frames,
    so 30 frames make three groups of pictures to seek between."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (size[1], size[0]))
    assert writer.isOpened()
    for i in range(count):
        frame = np.full((*size, 3), level(i), np.uint8)
        frame[10:20, 2 * i:2 * i + 10] = 255
        writer.write(frame)
    writer.release()
    return path


def test_frame_folder_is_sorted_lazy_and_exact(tmp_path):
    frames = make_frames(tmp_path / "f")
    (tmp_path / "f" / "notes.txt").write_text("ignored")
    (tmp_path / "f" / "._00000.png").write_bytes(b"macOS metadata, not an image")
    video = open_video(tmp_path / "f")
    assert isinstance(video, FrameFolder)
    assert len(video) == 5 and video.size == (48, 64) and video.fps > 0
    assert video.names == ["00000", "00005", "00010", "00015", "00020"]
    items = list(video)
    assert [(i, n) for i, n, _ in items] == list(enumerate(video.names))
    for (_, _, frame), expected in zip(items, frames):
        assert frame.dtype == np.uint8 and frame.shape == (48, 64, 3)
        np.testing.assert_array_equal(frame, expected)
    for i in (3, 0, 4):
        np.testing.assert_array_equal(video.frame(i), frames[i])
    with pytest.raises(MaskmlError, match="has 5 frames .* no frame 5"):
        video.frame(5)
    with pytest.raises(MaskmlError, match="no frame -1"):
        video.frame(-1)


def test_frame_folder_order(tmp_path):
    frame = np.zeros((4, 4, 3), np.uint8)
    for name in ("10", "2", "1", "0100"):  # numbers without zero padding go by value
        Image.fromarray(frame).save(tmp_path / f"{name}.png")
    assert open_video(tmp_path).names == ["1", "2", "10", "0100"]
    Image.fromarray(frame).save(tmp_path / "b.png")  # not all numbers: by name
    assert open_video(tmp_path).names == ["0100", "1", "10", "2", "b"]


def test_real_jpeg_frames_are_decoded_by_pillow():
    video = open_video(JUDO)
    assert video.names == [f"{i:05d}" for i in range(8)] and video.size == (480, 854)
    for _, name, frame in video:
        with Image.open(JUDO / f"{name}.jpg") as im:
            np.testing.assert_array_equal(frame, np.array(im.convert("RGB")))  # bit-identical to the official loaders


def test_video_file_iteration_and_random_access(tmp_path):
    video = open_video(make_video(tmp_path / "clip.mp4"))
    assert isinstance(video, VideoFile)
    assert len(video) == 30 and video.size == (48, 96) and video.fps == pytest.approx(10)
    items = list(video)
    assert [(i, n) for i, n, _ in items] == [(i, f"{i:05d}") for i in range(30)]
    assert video.names == [n for _, n, _ in items]
    for i, (_, _, frame) in enumerate(items):
        assert frame.shape == (48, 96, 3) and abs(frame[30:, 60:].mean() - level(i)) < 5
        square = np.flatnonzero(frame[15].min(axis=1) > (level(i) + 255) / 2)
        assert square.tolist() == list(range(2 * i, 2 * i + 10)), i  # frame i, not a neighbour

    for i in range(29, -1, -1):  # backwards: a seek for every frame, across keyframes
        np.testing.assert_array_equal(video.frame(i), items[i][2], err_msg=f"frame {i}")
    capture = video._capture
    for i in (5, 6, 7, 20, 13, 14, 0):  # in order, jumps forwards and backwards
        np.testing.assert_array_equal(video.frame(i), items[i][2], err_msg=f"frame {i}")
    assert video._capture is capture  # one capture kept open, not one per frame
    with pytest.raises(MaskmlError, match="has 30 frames .* no frame 30"):
        video.frame(30)
    with pytest.raises(MaskmlError, match="no frame -1"):
        video.frame(-1)
    video.close()
    np.testing.assert_array_equal(video.frame(3), items[3][2])  # a new capture after close
    assert len(list(video)) == 30  # iterable again, alongside frame()'s capture


def test_stream_that_ends_early_stops_cleanly(tmp_path):
    # an AVI whose data is cut off: the header still declares every frame
    path = make_video(tmp_path / "full.avi", count=20, fourcc="MJPG")
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) // 2])
    video = open_video(cut)
    assert len(video) == 20  # the declared count: approximate for such a stream
    decoded = [index for index, _, _ in video]
    assert 0 < len(decoded) < 20 and decoded == list(range(len(decoded)))
    with pytest.raises(MaskmlError, match="cannot be decoded"):
        video.frame(19)


def test_bad_sources(tmp_path):
    with pytest.raises(MaskmlError, match="does not exist"):
        open_video(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskmlError, match="holds no frames"):
        open_video(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    with pytest.raises(MaskmlError, match="holds no frames"):
        open_video(tmp_path / "notes")
    with pytest.raises(MaskmlError, match="neither a folder of frames nor a video"):
        (tmp_path / "x.txt").write_text("")
        open_video(tmp_path / "x.txt")

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    with pytest.raises(MaskmlError, match="cannot decode video"):
        open_video(corrupt)
    data = make_video(tmp_path / "good.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[:len(data) // 2])  # the index at the end is gone: no frame decodes
    with pytest.raises(MaskmlError, match="cannot decode video"):
        open_video(tmp_path / "truncated.mp4")

    make_frames(tmp_path / "mixed", count=2)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "mixed" / "00099.png")
    mixed = open_video(tmp_path / "mixed")  # lazy: found when that frame is read
    with pytest.raises(MaskmlError, match=r"00099.png is 10x10, but the first frame is 64x48"):
        list(mixed)

    make_frames(tmp_path / "twice", count=1)
    shutil.copy(tmp_path / "twice" / "00000.png", tmp_path / "twice" / "00000.jpg")
    with pytest.raises(MaskmlError, match="two frames named 00000"):
        open_video(tmp_path / "twice")

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "00000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(MaskmlError, match="cannot read image"):
        open_video(tmp_path / "broken")


def test_writer_round_trip_and_permissions(tmp_path):
    path = tmp_path / "sub" / "out.mp4"
    with VideoWriter(path, fps=12, size=(48, 32)) as writer:
        for i in range(6):
            writer.write(np.full((32, 48, 3), (40 * i, 0, 255 - 40 * i), np.uint8))
        assert not path.exists()  # only a temporary file so far
    assert [p.name for p in path.parent.iterdir()] == ["out.mp4"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    video = open_video(path)
    assert len(video) == 6 and video.size == (32, 48) and video.fps == pytest.approx(12)
    last = video.frame(5)
    assert abs(int(last[..., 0].mean()) - 200) <= 4 and abs(int(last[..., 2].mean()) - 55) <= 4  # RGB, not BGR


def test_failed_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "out.mp4", fps=5, size=(16, 16)) as writer:
            writer.write(np.zeros((16, 16, 3), np.uint8))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MaskmlError, match="is 8x16, but the video is 16x16"):
        with VideoWriter(tmp_path / "out.mp4", fps=5, size=(16, 16)) as writer:
            writer.write(np.zeros((16, 16, 3), np.uint8))
            writer.write(np.zeros((16, 8, 3), np.uint8))  # OpenCV would drop it silently
    for wrong in (np.zeros((16, 16), np.uint8), np.zeros((16, 16, 3), np.float32), np.zeros((16, 16, 4), np.uint8)):
        with pytest.raises(MaskmlError, match="H x W x 3 uint8"):
            with VideoWriter(tmp_path / "out.mp4", fps=5, size=(16, 16)) as writer:
                writer.write(wrong)
    with pytest.raises(MaskmlError, match="no frames"):
        with VideoWriter(tmp_path / "out.mp4", fps=5, size=(16, 16)):
            pass
    with pytest.raises(MaskmlError, match="positive rate"):
        VideoWriter(tmp_path / "out.mp4", fps=0, size=(16, 16))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_writer_picks_a_browser_playable_codec_and_says_which(tmp_path, capfd, suffix):
    path = tmp_path / f"out{suffix}"
    with VideoWriter(path, fps=10, size=(64, 48)) as writer:
        for i in range(3):
            writer.write(np.full((48, 64, 3), 60 * i, np.uint8))
    assert capfd.readouterr().err == ""  # FFmpeg's and OpenCV's chatter while codecs are tried is silenced
    assert video_fourcc(path) in READ_BACK_FOURCCS[writer.fourcc]
    # pip's opencv-python-headless encodes VP9 and VP8 (not H.264): never the mp4v fallback there
    assert writer.browser_playable and writer.codec in {".mp4": ("H.264", "VP9"), ".webm": ("VP8", "VP9")}[suffix]
    assert len(open_video(path)) == 3


def test_writer_falls_back_to_mp4v_and_says_so(tmp_path):
    # as on a build with no H.264 or VP9 encoder: "XXXX" opens no writer
    with VideoWriter(tmp_path / "out.mp4", fps=10, size=(64, 48), codecs=("XXXX", "mp4v")) as writer:
        writer.write(np.zeros((48, 64, 3), np.uint8))
    assert writer.codec == "MPEG-4 part 2 (mp4v)" and not writer.browser_playable
    assert video_fourcc(tmp_path / "out.mp4") in READ_BACK_FOURCCS["mp4v"]
    with pytest.raises(MaskmlError, match=r"written as \.mp4 or \.webm"):
        VideoWriter(tmp_path / "out.avi", fps=10, size=(64, 48))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_close_keeps_the_frames_so_far(tmp_path):
    writer = VideoWriter(tmp_path / "out.webm", fps=10, size=(64, 48))
    for i in range(4):
        writer.write(np.full((48, 64, 3), 50 * i, np.uint8))
    assert writer.close(keep=True)
    assert len(list(open_video(tmp_path / "out.webm"))) == 4
    empty = VideoWriter(tmp_path / "empty.mp4", fps=10, size=(64, 48))
    assert not empty.close(keep=True)  # no frames: no file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.webm"]

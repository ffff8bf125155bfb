"""Video sources, the MP4 writer, atomic output folders and indexed-PNG masks."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskml import MaskmlError
from maskml.io.masks import DAVIS_PALETTE, read_mask, save_mask, write_mask
from maskml.io.video import VideoWriter, atomic_dir, open_video


def make_frames(folder, count=5, size=(48, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(count)]
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i * 5:05d}.png")
    return frames


def test_frame_folder_is_sorted_lazy_and_exact(tmp_path):
    frames = make_frames(tmp_path / "f")
    (tmp_path / "f" / "notes.txt").write_text("ignored")
    video = open_video(tmp_path / "f")
    assert len(video) == 5 and video.size == (48, 64)
    assert video.names == ["00000", "00005", "00010", "00015", "00020"]
    for (index, name, frame), expected in zip(video, frames):
        np.testing.assert_array_equal(frame, expected)
    np.testing.assert_array_equal(video.frame(3), frames[3])


def test_video_file_round_trip(tmp_path):
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=10, size=(64, 48)) as writer:
        for i in range(7):
            writer.write(np.full((48, 64, 3), 30 * i, np.uint8))
    video = open_video(path)
    assert len(video) == 7 and video.size == (48, 64) and video.fps == pytest.approx(10)
    items = list(video)
    assert [name for _, name, _ in items] == [f"{i:05d}" for i in range(7)]
    assert all(abs(int(frame.mean()) - 30 * i) <= 3 for i, (_, _, frame) in enumerate(items))


def test_bad_sources(tmp_path):
    with pytest.raises(MaskmlError, match="does not exist"):
        open_video(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskmlError, match="holds no frames"):
        open_video(tmp_path / "empty")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    with pytest.raises(MaskmlError, match="cannot decode video"):
        open_video(corrupt)
    make_frames(tmp_path / "mixed", count=2)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "mixed" / "00099.png")
    with pytest.raises(MaskmlError, match="must have one size"):
        list(open_video(tmp_path / "mixed"))
    with pytest.raises(MaskmlError, match="neither a folder of frames nor a video"):
        (tmp_path / "x.txt").write_text("")
        open_video(tmp_path / "x.txt")


def test_failed_writer_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "out.mp4", fps=5, size=(16, 16)) as writer:
            writer.write(np.zeros((16, 16, 3), np.uint8))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.png").write_text("earlier result")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "new.png").write_text("half")
            raise KeyboardInterrupt
    assert [p.name for p in out.iterdir()] == ["old.png"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_dir(out) as tmp:
        (tmp / "new.png").write_text("done")
    assert [p.name for p in out.iterdir()] == ["new.png"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_masks_indexed_gray_and_rgb(tmp_path):
    ids = np.zeros((20, 30), np.uint8)
    ids[2:8, 3:9] = 1
    ids[10:15, 20:28] = 7
    write_mask(tmp_path / "m.png", ids)
    image = Image.open(tmp_path / "m.png")
    assert image.mode == "P" and image.getpalette()[:24] == DAVIS_PALETTE[:24]
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), ids)

    other_palette = Image.fromarray(ids, mode="P")
    other_palette.putpalette([255 - c for c in DAVIS_PALETTE])
    other_palette.save(tmp_path / "other.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "other.png"), ids)  # the index is the id, any palette

    Image.fromarray((ids > 0).astype(np.uint8) * 255).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "gray.png"), (ids > 0).astype(np.uint8))

    rgb = np.array(DAVIS_PALETTE, np.uint8).reshape(256, 3)[ids]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), ids)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with pytest.raises(MaskmlError, match=r"colour \(1, 2, 3\)"):
        read_mask(tmp_path / "odd.png")
    with pytest.raises(MaskmlError, match="0..255"):
        save_mask(tmp_path / "big.png", np.full((2, 2), 300))


def test_davis_palette():
    # the standard palette: 1 dark red, 2 green, 3 olive, 4 navy, ..., 255 near white
    assert DAVIS_PALETTE[3:15] == [128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]
    assert DAVIS_PALETTE[-3:] == [224, 224, 192]

"""ResultWriter: per-frame outputs written in any order, overwritten, and the overlay kept in frame order."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from maskml import TrackerOutput
from maskml.io.draw import draw_masks
from maskml.io.masks import read_mask
from maskml.io.results import ResultWriter
from maskml.io.video import open_video

H, W = 48, 64


def output(labels: np.ndarray) -> TrackerOutput:
    labels = torch.from_numpy(labels).long()
    ids = [i for i in (1, 2) if (labels == i).any()]
    return TrackerOutput(probs=torch.stack([(labels == i).float() * 0.75 for i in ids]) if ids else torch.zeros(0, H, W),
                         object_ids=ids, labels=labels)


@pytest.fixture
def video(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    return open_video(folder)


def labels_for(index: int, value: int = 1) -> np.ndarray:
    labels = np.zeros((H, W), np.uint8)
    labels[:, index * 16:(index + 1) * 16] = value
    return labels


def read_overlay(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32))
    capture.release()
    return frames


def test_out_of_order_writes_and_overwrites(tmp_path, video):
    frames = [f for _, _, f in video]
    final = {0: labels_for(0), 1: labels_for(1, 2), 2: np.full((H, W), 2, np.uint8), 3: labels_for(3)}
    with ResultWriter(tmp_path / "out", tmp_path / "probs", tmp_path / "overlay.mp4", object_ids=[2, 1],
                      size=(H, W), fps=10, source=video) as results:
        results.write(2, "f2", frames[2], output(labels_for(2)))  # a forward pass from frame 2 ...
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f2.png"]  # each frame's file when done
        results.write(3, "f3", frames[3], output(final[3]))
        results.write(2, "f2", frames[2], output(final[2]))  # ... then a backward pass that overwrites frame 2
        results.write(1, "f1", frames[1], output(final[1]))
        results.write(0, "f0", frames[0], output(final[0]))
    for i in range(4):
        np.testing.assert_array_equal(read_mask(tmp_path / "out" / f"f{i}.png"), final[i])
        probs = np.load(tmp_path / "probs" / f"f{i}.npy")
        assert probs.dtype == np.float16 and probs.shape == (2, H, W)
        np.testing.assert_array_equal(probs, np.stack([(final[i] == o) * np.float16(0.75) for o in (1, 2)]))
    overlay = read_overlay(tmp_path / "overlay.mp4")
    assert len(overlay) == 4  # redrawn in frame order from the label PNGs and the frames read again
    for i, got in enumerate(overlay):
        right = np.abs(got - draw_masks(frames[i], final[i])).mean()
        stale = labels_for(2) if i == 2 else np.zeros((H, W), np.uint8)  # the first write, or no mask at all
        wrong = np.abs(got - draw_masks(frames[i], stale)).mean()
        assert right < wrong
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_in_order_writes_need_no_source(tmp_path, video):
    frames = [f for _, _, f in video]
    with ResultWriter(tmp_path / "out", overlay=tmp_path / "live.mp4", object_ids=[1, 2], size=(H, W),
                      fps=10) as results:  # a live source: frames come once, in order
        for i in range(4):
            results.write(i, f"{i:05d}", frames[i], output(labels_for(i)))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    assert len(read_overlay(tmp_path / "live.mp4")) == 4

    with pytest.raises(ValueError, match="no source to read the frames"):
        with ResultWriter(tmp_path / "out2", overlay=tmp_path / "o2.mp4", object_ids=[1], size=(H, W), fps=10) as r:
            r.write(1, "a", frames[1], output(labels_for(1)))
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["a.png"]  # the frame done is kept


def test_failure_before_the_first_frame_leaves_nothing(tmp_path, video):
    frames = [f for _, _, f in video]
    with pytest.raises(ValueError, match="not among the objects"):
        with ResultWriter(tmp_path / "new" / "out", tmp_path / "p", tmp_path / "v" / "o.mp4", object_ids=[2],
                          size=(H, W), fps=10) as r:
            r.write(0, "a", frames[0], output(labels_for(0)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]  # no empty folders made for nothing


def test_interruption_keeps_frames_done_and_a_playable_overlay(tmp_path, video):
    frames = [f for _, _, f in video]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(KeyboardInterrupt):
        with ResultWriter(out, tmp_path / "probs", tmp_path / "o.mp4", object_ids=[1], size=(H, W), fps=10,
                          source=video) as results:
            for i in range(3):
                results.write(i, f"f{i}", frames[i], output(labels_for(i)))
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["f0.png", "f1.png", "f2.png", "notes.txt"]
    assert (out / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in (tmp_path / "probs").iterdir()) == ["f0.npy", "f1.npy", "f2.npy"]
    overlay = read_overlay(tmp_path / "o.mp4")
    assert len(overlay) == 3
    for i, got in enumerate(overlay):
        assert np.abs(got - draw_masks(frames[i], labels_for(i))).mean() < np.abs(got - frames[i]).mean()
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no temporary left


def test_interrupted_out_of_order_run_redraws_the_frames_done(tmp_path, video):
    frames = [f for _, _, f in video]
    with pytest.raises(KeyboardInterrupt):
        with ResultWriter(tmp_path / "out", overlay=tmp_path / "o.mp4", object_ids=[1], size=(H, W), fps=10,
                          source=video) as results:
            results.write(2, "f2", frames[2], output(labels_for(2)))
            results.write(3, "f3", frames[3], output(labels_for(3)))
            raise KeyboardInterrupt
    overlay = read_overlay(tmp_path / "o.mp4")
    assert len(overlay) == 2  # frames 2 and 3, in order
    for got, i in zip(overlay, (2, 3)):
        assert np.abs(got - draw_masks(frames[i], labels_for(i))).mean() < np.abs(got - frames[i]).mean()


def test_atomic_is_all_or_nothing(tmp_path, video):
    frames = [f for _, _, f in video]
    out = tmp_path / "out"
    out.mkdir()
    (out / "f0.png").write_text("an earlier result")
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(KeyboardInterrupt):
        with ResultWriter(out, tmp_path / "probs", tmp_path / "o.mp4", object_ids=[1], size=(H, W), fps=10,
                          source=video, atomic=True) as results:
            for i in range(2):
                results.write(i, f"f{i}", frames[i], output(labels_for(i)))
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["f0.png", "notes.txt"]
    assert (out / "f0.png").read_text() == "an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "out"]  # no probs/, no overlay, no temporary

    with ResultWriter(out, tmp_path / "probs", object_ids=[1], size=(H, W), fps=10, atomic=True) as results:
        for i in range(2):
            results.write(i, f"f{i}", frames[i], output(labels_for(i)))
        assert sorted(p.name for p in out.iterdir()) == ["f0.png", "notes.txt"]  # nothing moved in yet
        assert not (tmp_path / "probs").exists()
    assert sorted(p.name for p in out.iterdir()) == ["f0.png", "f1.png", "notes.txt"]
    np.testing.assert_array_equal(read_mask(out / "f0.png"), labels_for(0))
    assert (out / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in (tmp_path / "probs").iterdir()) == ["f0.npy", "f1.npy"]

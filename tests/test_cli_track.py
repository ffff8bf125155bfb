"""`maskml track` end to end with Cutie, through the real entry point."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from PIL import Image

import maskml
from conftest import FIXTURES, READ_BACK_FOURCCS, sigint_as_in_a_terminal, video_fourcc, write_parity_checkpoint
from maskml.cli import main
from maskml.io.masks import read_mask, save_mask

JUDO = FIXTURES / "cutie" / "inputs" / "images" / "judo"
JUDO_MASKS = FIXTURES / "cutie" / "inputs" / "masks" / "judo"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_parity_checkpoint(FIXTURES / "cutie" / "manifest_cutie_small.json",
                                   tmp_path_factory.mktemp("ck") / "cutie-small-mega.pth")


def test_track_frame_folder(tmp_path, checkpoint, capsys):
    out, probs, overlay = tmp_path / "out", tmp_path / "probs", tmp_path / "tracked.mp4"
    rc = main(["track", str(JUDO), "--model", "cutie_small", "--checkpoint", str(checkpoint), "--mask-dir",
               str(JUDO_MASKS), "--out", str(out), "--probs", str(probs), "--overlay", str(overlay),
               "--option", "max_internal_size=-1"])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    codec = re.fullmatch(rf"10 frames, objects \[1, 2\] -> {out}, {probs}, overlay {overlay} \((.+)\)", last).group(1)
    # the codec named is the one in the file: VP9 with pip's OpenCV, H.264 where it has an encoder
    assert video_fourcc(overlay) in READ_BACK_FOURCCS[{"VP9": "vp09", "H.264": "avc1"}[codec]]
    names = sorted(p.stem for p in JUDO.glob("*.jpg"))
    assert sorted(p.stem for p in out.iterdir()) == names and sorted(p.stem for p in probs.iterdir()) == names

    tracker = maskml.VideoTracker(maskml.load_model("cutie_small", checkpoint=checkpoint), max_internal_size=-1)
    for i, name in enumerate(names):
        mask_file = JUDO_MASKS / f"{name}.png"
        result = tracker.step(np.array(Image.open(JUDO / f"{name}.jpg").convert("RGB")),
                              read_mask(mask_file) if mask_file.exists() else None)
        labels = read_mask(out / f"{name}.png")
        assert Image.open(out / f"{name}.png").mode == "P"
        np.testing.assert_array_equal(labels, result.labels.numpy())
        p = np.load(probs / f"{name}.npy")
        assert p.dtype == np.float16 and p.shape == (2, 360, 640)
        if i < 5:
            assert not p[1].any()  # object 2 appears at frame 5
        expected = np.zeros_like(p)
        for k, obj in enumerate(result.object_ids):
            expected[obj - 1] = result.probs[k].numpy()
        np.testing.assert_array_equal(p, expected)
    capture = cv2.VideoCapture(str(overlay))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    capture.release()


def test_track_video_file_and_options(tmp_path, checkpoint):
    video = tmp_path / "judo.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (640, 360))
    for path in sorted(JUDO.glob("*.jpg")):
        writer.write(cv2.imread(str(path)))
    writer.release()
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copy(JUDO_MASKS / "00000.png", masks / "00000.png")
    rc = main(["track", str(video), "--model", "cutie_small", "--checkpoint", str(checkpoint), "--mask-dir",
               str(masks), "--out", str(tmp_path / "out"), "--option", "mem_every=3",
               "--option", "use_long_term=true", "--option", "long_term.max_mem_frames=4",
               "--option", "long_term.min_mem_frames=2"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:05d}.png" for i in range(10)]


def test_bad_input_is_one_line_and_keeps_earlier_results(tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_text("earlier result")
    base = ["track", str(JUDO), "--model", "cutie_small", "--checkpoint", str(checkpoint), "--out", str(out)]

    def fails(extra, message, setup=None):
        masks = tmp_path / "m"
        shutil.rmtree(masks, ignore_errors=True)
        masks.mkdir()
        if setup:
            setup(masks)
        assert main(base + ["--mask-dir", str(masks)] + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
        assert [p.name for p in out.iterdir()] == ["earlier.png"]

    fails([], "holds no .png masks")
    fails([], "named after no frame", lambda m: shutil.copy(JUDO_MASKS / "00000.png", m / "00042.png"))
    fails([], "but the frames are 640x360",
          lambda m: Image.fromarray(np.ones((10, 10), np.uint8)).save(m / "00000.png"))
    fails([], "contains no object", lambda m: Image.fromarray(np.zeros((360, 640), np.uint8)).save(m / "00000.png"))
    fails(["--option", "mem_evry=3"], "unknown tracker option 'mem_evry'",
          lambda m: shutil.copy(JUDO_MASKS / "00000.png", m / "00000.png"))
    fails(["--option", "mem_every"], "KEY=VALUE", lambda m: shutil.copy(JUDO_MASKS / "00000.png", m / "00000.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["track", str(empty), "--mask-dir", str(JUDO_MASKS), "--out", str(out)]) == 2
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video at all")
    assert main(["track", str(corrupt), "--mask-dir", str(JUDO_MASKS), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds no frames" in err and "cannot decode video" in err
    assert [p.name for p in out.iterdir()] == ["earlier.png"]


ROOT = FIXTURES.parents[1]


@pytest.fixture
def long_clip(tmp_path, small_judo):
    """100 frames at 160x96 (small_judo's six, over and over) and the first frame's mask: a run long
    enough to be stopped in the middle on any machine."""
    frames, masks = tmp_path / "frames", tmp_path / "masks"
    frames.mkdir()
    masks.mkdir()
    six = sorted(small_judo.iterdir())
    for i in range(100):
        shutil.copy(six[i % 6], frames / f"{i:05d}.png")
    Image.open(JUDO_MASKS / "00000.png").resize((160, 96), Image.NEAREST).save(masks / "00000.png")
    return frames, masks


def start_tracking(clip, checkpoint, out, probs, overlay):
    frames, masks = clip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "maskml", "track", str(frames), "--model", "cutie_small",
                             "--checkpoint", str(checkpoint), "--mask-dir", str(masks), "--out", str(out),
                             "--probs", str(probs), "--overlay", str(overlay)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_as_in_a_terminal)


def wait_for_frames(process, out, count: int) -> None:
    deadline = time.monotonic() + 300
    while len(list(out.glob("0*.png"))) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no frames written in 300 s"
        time.sleep(0.02)


def overlay_frames(path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_ctrl_c_keeps_the_frames_done_and_a_playable_overlay(tmp_path, long_clip, cutie_small_checkpoint):
    out, probs, overlay = tmp_path / "out", tmp_path / "probs", tmp_path / "tracked.mp4"
    process = start_tracking(long_clip, cutie_small_checkpoint, out, probs, overlay)
    wait_for_frames(process, out, 3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    line = err.strip().splitlines()[-1]
    match = re.fullmatch(rf"maskml track: interrupted after (\d+) of 100 frames: the results of frames "
                         rf"00000\.\.(\d+) are in {out} and {probs}, and {overlay} shows them; run the same command "
                         rf"again to track the whole video \(it replaces those files\)", line)
    assert match, line
    done = int(match.group(1))
    assert done >= 3 and int(match.group(2)) == done - 1
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(done)]
    assert sorted(p.name for p in probs.iterdir()) == [f"{i:05d}.npy" for i in range(done)]
    for i in range(done):  # every file whole
        assert read_mask(out / f"{i:05d}.png").shape == (96, 160)
        assert np.load(probs / f"{i:05d}.npy").shape == (1, 96, 160)
    # the frame being drawn when Ctrl-C came may be missing from the video, never half there
    assert done - 1 <= overlay_frames(overlay) <= done
    assert [p.name for p in tmp_path.rglob(".maskml.*")] == []


def test_kill_9_leaves_whole_files_and_the_next_run_clears_its_temporaries(tmp_path, long_clip,
                                                                          cutie_small_checkpoint):
    out, probs, overlay = tmp_path / "out", tmp_path / "probs", tmp_path / "tracked.mp4"
    process = start_tracking(long_clip, cutie_small_checkpoint, out, probs, overlay)
    wait_for_frames(process, out, 2)
    process.kill()
    process.communicate()
    left = [p for p in tmp_path.rglob(".maskml.*")]
    assert any(p.name.endswith(".tracked.mp4") for p in left)  # the video being encoded, under its temporary name
    assert all(p.name.startswith(f".maskml.{process.pid}.") for p in left)
    assert not overlay.exists()
    for png in out.glob("0*.png"):  # whatever has a final name is whole
        assert read_mask(png).shape == (96, 160)
    (out / "notes.txt").write_text("the user's")

    frames, masks = long_clip
    for path in sorted(frames.iterdir())[2:]:  # the next run into those folders: a short one
        path.unlink()
    assert main(["track", str(frames), "--model", "cutie_small", "--checkpoint", str(cutie_small_checkpoint),
                 "--mask-dir", str(masks), "--out", str(out), "--probs", str(probs), "--overlay", str(overlay),
                 "--atomic"]) == 0  # all or nothing: moved into the folders that exist, beside what they hold
    assert list(tmp_path.rglob(".maskml.*")) == []
    assert (out / "notes.txt").read_text() == "the user's"
    assert overlay_frames(overlay) == 2


def test_an_existing_output_folder_keeps_the_files_maskml_did_not_write(tmp_path, small_judo, cutie_small_checkpoint,
                                                                       capsys):  # data loss 3
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.open(JUDO_MASKS / "00000.png").resize((160, 96), Image.NEAREST).save(masks / "00000.png")
    frames = tmp_path / "frames"
    frames.mkdir()
    for path in sorted(small_judo.iterdir())[:2]:
        shutil.copy(path, frames)
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes.txt").write_text("the user's notes")
    (out / "notes" / "00000.png").write_text("not maskml's")
    (out / "00001.png").write_text("an earlier run's result")
    assert main(["track", str(frames), "--model", "cutie_small", "--checkpoint", str(cutie_small_checkpoint),
                 "--mask-dir", str(masks), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "notes", "notes.txt"]
    assert (out / "notes.txt").read_text() == "the user's notes"
    assert (out / "notes" / "00000.png").read_text() == "not maskml's"
    assert read_mask(out / "00001.png").shape == (96, 160)  # a result of the same name is replaced
    assert capsys.readouterr().out.strip().endswith(f"2 frames, objects [1] -> {out}")


def test_too_many_objects_are_refused_before_the_model_loads(tmp_path, small_judo, cutie_small_checkpoint, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    every_id = np.arange(96 * 160).reshape(96, 160) % 256  # a mask of 0..255: a picture saved as a mask
    save_mask(masks / "00000.png", every_id)
    base = ["track", str(small_judo), "--model", "cutie_small", "--checkpoint", str(cutie_small_checkpoint),
            "--mask-dir", str(masks), "--out", str(tmp_path / "out")]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "loading" not in err, err
    assert (f"mask {masks / '00000.png'} holds 255 object ids (1 to 255): more than the limit of 32 objects; "
            f"255 objects would take about ") in err
    assert "with cutie_small on 160x96 frames" in err and "To track that many, give --max-objects 255" in err

    three = np.zeros((96, 160), np.uint8)
    three[10:30, 10:30], three[40:60, 40:60], three[70:90, 100:140] = 1, 2, 3
    save_mask(masks / "00000.png", three)
    assert main(base + ["--max-objects", "2"]) == 2
    assert "holds 3 object ids (1 to 3): more than the limit of 2 objects" in capsys.readouterr().err
    assert main(base + ["--max-objects", "2", "--point", "4:1:5,5", "--prompter", "mobile_sam"]) == 2
    assert "holds 3 object ids" in capsys.readouterr().err
    save_mask(masks / "00000.png", np.minimum(three, 2))
    assert main(base + ["--max-objects", "2", "--point", "4:1:5,5", "--prompter", "mobile_sam"]) == 2
    assert "the masks and prompts give 3 objects: more than the limit of 2" in capsys.readouterr().err
    assert main(base + ["--max-objects", "0"]) == 2
    assert "--max-objects 0: give a positive number of objects" in capsys.readouterr().err
    save_mask(masks / "00000.png", three)
    assert main(base + ["--max-objects", "3"]) == 0
    assert sorted(np.unique(read_mask(tmp_path / "out" / "00000.png")).tolist()) == [0, 1, 2, 3]


def test_broken_video_prints_only_maskmls_line(tmp_path):
    """FFmpeg's own "[mov,mp4,...] moov atom not found" line is silenced: stderr is maskml's one line."""
    import subprocess
    import sys

    writer = cv2.VideoWriter(str(tmp_path / "good.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[:len(data) // 2])  # FFmpeg: "Invalid mdhd time scale"
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")  # FFmpeg: "moov atom not found"
    for name in ("truncated.mp4", "junk.mp4"):
        run = subprocess.run([sys.executable, "-m", "maskml", "track", str(tmp_path / name), "--mask-dir",
                              str(JUDO_MASKS), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                             cwd=FIXTURES.parents[1])
        assert run.returncode == 2
        assert run.stderr.startswith(f"maskml track: error: cannot decode video {tmp_path / name}") and \
            run.stderr.count("\n") == 1, run.stderr


def test_coco_output_is_a_json_file(tmp_path, capsys):
    args = ["track", str(JUDO), "--mask-dir", str(JUDO_MASKS), "--out", str(tmp_path / "out")]
    assert main(args + ["--coco", str(tmp_path / "masks.txt")]) == 2
    assert "--coco" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(args + ["--coco", str(JUDO_MASKS / "masks.json")]) == 2  # nothing is written into an input
    assert "lies inside the input --mask-dir" in capsys.readouterr().err

"""maskml never loses a user's data: outputs are checked against the inputs and each other before any
work, and maskml's temporary files are the only ones it ever removes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import FIXTURES
from maskml import MaskmlError
from maskml.cli import main
from maskml.io.outputs import check_outputs, remove_stale_temporaries, temporary_file

IMAGE = FIXTURES / "sam" / "truck_1200x800.png"
MISSING_CHECKPOINT = "/nonexistent/checkpoint.pt"  # were it read, the error would be about it: outputs come first


@pytest.fixture
def frames(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("00000.jpg", "00001.jpg"):
        shutil.copy(FIXTURES / "cutie" / "inputs" / "images" / "judo" / name, folder / name)
    return folder


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    return err


def test_segment_refuses_to_overwrite_its_input_image(tmp_path, capsys):  # data loss 1
    image = tmp_path / "self.png"
    shutil.copy(IMAGE, image)
    before = image.read_bytes()
    refused(capsys, ["segment", str(image), "--point", "10,10", "--checkpoint", MISSING_CHECKPOINT,
                     "--out", str(image)], f"--out {image} is the input image {image}")
    refused(capsys, ["segment", str(image), "--point", "10,10", "--out", str(tmp_path / "m.png"),
                     "--overlay", str(tmp_path / "." / "self.png")], "is the input image")
    checkpoint = tmp_path / "mobile_sam.pt"
    checkpoint.write_bytes(b"weights")
    refused(capsys, ["segment", str(image), "--point", "10,10", "--checkpoint", str(checkpoint),
                     "--out", str(tmp_path / "m.png"), "--logits", str(checkpoint)], "is the input --checkpoint")
    assert image.read_bytes() == before and checkpoint.read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mobile_sam.pt", "self.png"]


def test_track_refuses_to_write_into_its_input_frames(tmp_path, capsys, frames):  # data loss 2
    before = snapshot(tmp_path)
    base = ["track", str(frames), "--mask-dir", str(frames), "--checkpoint", MISSING_CHECKPOINT]
    refused(capsys, base + ["--out", str(frames)], f"--out {frames} is the input video {frames}")
    refused(capsys, base + ["--out", str(frames / "masks")], "lies inside the input video")
    refused(capsys, base + ["--out", str(tmp_path)], f"--out {tmp_path} holds the input video {frames}")
    refused(capsys, base + ["--out", str(tmp_path / "m"), "--overlay", str(frames / "tracked.mp4")],
            "--overlay")
    masks = tmp_path / "masks"
    masks.mkdir()
    refused(capsys, ["track", str(frames), "--mask-dir", str(masks), "--out", str(masks)],
            f"--out {masks} is the input --mask-dir {masks}")
    assert snapshot(tmp_path) == before and not (frames / "masks").exists()


def test_two_outputs_of_one_command_may_not_collide(tmp_path, capsys, frames):  # data loss: collisions
    base = ["track", str(frames), "--mask-dir", str(frames), "--checkpoint", MISSING_CHECKPOINT]
    out = str(tmp_path / "out")
    refused(capsys, base + ["--out", out, "--probs", out], f"--probs {out} and --out {out} are the same path")
    refused(capsys, base + ["--out", out, "--probs", f"{out}/probs"], "are nested")
    refused(capsys, base + ["--out", out, "--overlay", f"{out}/tracked.mp4"], "are nested")
    refused(capsys, ["segment", str(IMAGE), "--point", "10,10", "--out", str(tmp_path / "m.png"),
                     "--overlay", str(tmp_path / "m.png")], "are the same path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_the_current_folder_is_no_output_folder(tmp_path, capsys, frames, monkeypatch):  # data loss: --out .
    elsewhere = tmp_path / "work" / "here"
    elsewhere.mkdir(parents=True)
    (elsewhere / "00000.png").write_text("a user's file that happens to have a frame's name")
    monkeypatch.chdir(elsewhere)
    for out in (".", str(elsewhere), ".."):
        refused(capsys, ["track", str(frames), "--mask-dir", str(frames), "--checkpoint", MISSING_CHECKPOINT,
                         "--out", out], "is the current folder")
    refused(capsys, ["demo", str(frames), "--save-dir", "."], "--save-dir . is the current folder")
    assert (elsewhere / "00000.png").read_text().startswith("a user's file")


def test_outputs_that_cannot_be_written_fail_before_the_work(tmp_path, capsys, frames):
    base = ["track", str(frames), "--mask-dir", str(frames), "--checkpoint", MISSING_CHECKPOINT]
    (tmp_path / "file").write_text("a file")
    refused(capsys, base + ["--out", str(tmp_path / "file")], "is a file, not a folder")
    refused(capsys, base + ["--out", str(tmp_path / "file" / "masks")], "is a file, so no folder can be made")
    refused(capsys, ["segment", str(IMAGE), "--point", "10,10", "--out", str(frames.parent)], "is a folder")
    refused(capsys, ["segment", str(IMAGE), "--point", "10,10", "--out", str(tmp_path / "m.png"),
                     "--logits", os.devnull], "is no regular file")
    if os.geteuid() == 0:  # permission bits do not stop root: sysfs takes no new files from anyone
        locked = "/sys/maskml-test/masks"
    else:
        locked_folder = tmp_path / "locked"
        locked_folder.mkdir()
        locked_folder.chmod(0o555)
        locked = str(locked_folder / "masks")
    refused(capsys, base + ["--out", locked], "cannot write into")
    refused(capsys, ["eval", "davis", "--pred", str(frames), "--gt", str(frames), "--out", locked],
            "cannot write into")


def test_an_output_another_maskml_is_writing_is_busy(tmp_path):
    out = tmp_path / "masks"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        partial = out / f".maskml.{other.pid}.abcd1234.00007.png"
        partial.write_bytes(b"half a frame")
        with pytest.raises(MaskmlError, match=rf"another maskml \(process {other.pid}\) is writing it now"):
            check_outputs({}, folders={"--out": out})
        beside = tmp_path / f".maskml.{other.pid}.abcd1234.tracked.mp4"
        beside.write_bytes(b"half a video")
        with pytest.raises(MaskmlError, match="another maskml"):
            check_outputs({}, files={"--overlay": tmp_path / "tracked.mp4"})
        check_outputs({}, files={"--overlay": tmp_path / "other.mp4"})  # another name in that folder is free
        assert remove_stale_temporaries(out) == 0  # a live run's files are never removed
    finally:
        other.kill()
        other.wait()
    assert remove_stale_temporaries(tmp_path) == 1  # that process has ended: its leftovers are stale
    check_outputs({}, folders={"--out": out})  # and the next command into the folder clears them
    assert list(out.iterdir()) == []


def test_segment_clears_what_a_killed_run_left_beside_its_output(tmp_path, capsys):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for name in ("mask.png", "logits.npy"):
        (tmp_path / f".maskml.{int(ended.stdout)}.q1w2e3r4.{name}").write_bytes(b"half written")
    (tmp_path / "notes.txt").write_text("the user's")
    # the command fails later (no prompt), but its output check has run
    refused(capsys, ["segment", str(IMAGE), "--out", str(tmp_path / "mask.png")], "no prompt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_only_maskmls_stale_temporaries_are_removed(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)
    (tmp_path / f".maskml.{dead}.x1y2z3w4.00003.png").write_bytes(b"left by kill -9")
    (tmp_path / f".maskml.{dead}.x1y2z3w4.masks").mkdir()  # an --atomic run's folder
    (tmp_path / f".maskml.{dead}.x1y2z3w4.masks" / "00000.png").write_bytes(b"")
    keep = [".maskml", ".maskml.notes", f".maskml.{dead}", ".00003.png", "notes.txt", ".hidden"]
    for name in keep:
        (tmp_path / name).write_text("the user's")
    mine = temporary_file(tmp_path / "00004.png")  # this process's own: in use
    assert remove_stale_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + [mine.name])

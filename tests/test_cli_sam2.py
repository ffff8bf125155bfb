"""`maskml track` with a SAM 2 model: clicks, boxes and masks taken by SAM 2 itself, both directions."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import FIXTURES
from maskml.cli import main
from maskml.io.masks import read_mask, save_mask

SAM2 = FIXTURES / "sam2"


@pytest.fixture(scope="module")
def three_frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bedroom3")
    for i in range(3):
        shutil.copy(SAM2 / "inputs" / "bedroom" / f"{i:05d}.jpg", folder)
    return folder


def test_prompts_on_two_frames_tracked_both_ways(tmp_path, capsys, three_frames, sam2_checkpoint):
    out, probs, overlay = tmp_path / "out", tmp_path / "probs", tmp_path / "tracked.mp4"
    masks = tmp_path / "masks"
    masks.mkdir()
    given = np.zeros((270, 480), np.uint8)
    given[150:250, 300:420] = 3
    save_mask(masks / "00002.png", given)
    rc = main(["track", str(three_frames), "--model", "sam2.1_hiera_t", "--checkpoint", str(sam2_checkpoint),
               "--point", "1:0:105,105", "--box", "2:0:389,13,479,125", "--mask-dir", str(masks),
               "--out", str(out), "--probs", str(probs), "--overlay", str(overlay)])
    assert rc == 0
    captured = capsys.readouterr()
    assert f"3 frames, objects [1, 2, 3] (both) -> {out}, {probs}, overlay {overlay} (" in captured.out
    bars = captured.err.replace("\r", "\n")  # one bar per pass, each counting its own frames
    assert "sam2.1_hiera_t pass 1/2, forward from frame 0: 100%" in bars and "3/3" in bars
    assert "sam2.1_hiera_t pass 2/2, backward from frame 2: 100%" in bars and "6/6" not in bars
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert overlay.stat().st_size > 0
    # frame 0 is a conditioning frame of objects 1 and 2: exactly the official prompt outputs there
    official = np.load(SAM2 / "expected_video_click_box.npz")
    p0 = np.load(probs / "00000.npy")
    assert p0.shape == (3, 270, 480) and p0.dtype == np.float16
    expected = 1 / (1 + np.exp(-official["add1_logits_sub"][0].astype(np.float64)))
    np.testing.assert_allclose(p0[:2, ::4, ::4], expected, atol=2e-3)
    labels = read_mask(out / "00000.png")
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels == 1).any() and (labels == 2).any()
    # object 3's mask on frame 2 is its output there (a mask prompt is taken as the output itself)
    p2 = np.load(probs / "00002.npy")[2]
    assert (p2[given == 3] > 0.5).mean() > 0.95 and (p2[given == 0] < 0.5).mean() > 0.95


@pytest.mark.parametrize("extra,match", [
    (["--point", "1:3:10,10"], "there is no frame 3"),
    (["--point", "0:0:10,10"], "OBJ is an object id from 1 to 255"),
    (["--box", "1:0:300,10,100,50"], "x1 >= x0"),
    (["--point", "1:0:900,10"], "outside the 480x270 frame"),
    (["--point", "1:0:10,10", "--option", "mem_every=3"], "unknown SAM 2 option 'mem_every'"),
])
def test_bad_sam2_prompts_are_one_line_errors(tmp_path, capsys, three_frames, sam2_checkpoint, extra, match):
    rc = main(["track", str(three_frames), "--model", "sam2.1_hiera_t", "--checkpoint", str(sam2_checkpoint),
               "--out", str(tmp_path / "out")] + extra)
    err = capsys.readouterr().err
    assert rc == 2 and match in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_direction_is_for_sam2_and_image_models_are_no_trackers(tmp_path, capsys, three_frames):
    assert main(["track", str(three_frames), "--model", "cutie_small", "--direction", "both",
                 "--mask-dir", str(three_frames), "--out", str(tmp_path / "o")]) == 2
    assert "--direction is for SAM 2 models" in capsys.readouterr().err
    assert main(["track", str(three_frames), "--model", "mobile_sam", "--point", "1:0:5,5",
                 "--out", str(tmp_path / "o")]) == 2
    assert "is an image model, not a tracker" in capsys.readouterr().err

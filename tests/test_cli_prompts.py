"""`maskml track --prompter ... --point/--box`: clicks and boxes on several frames become tracked objects."""
from __future__ import annotations

import cv2
import numpy as np

import maskml
from maskml import Prompt
from maskml.cli import main
from maskml.cli.track import parse_prompts
from maskml.io.masks import read_mask, save_mask
from maskml.io.video import VideoWriter, open_video

def test_clicks_boxes_and_masks_on_several_frames(tmp_path, small_judo, sam_checkpoints, cutie_small_checkpoint):
    masks = tmp_path / "masks"
    masks.mkdir()
    given = np.zeros((96, 160), np.uint8)
    given[60:90, 5:30] = 3
    save_mask(masks / "00001.png", given)
    out, probs, overlay = tmp_path / "out", tmp_path / "probs", tmp_path / "tracked.mp4"
    rc = main(["track", str(small_judo), "--model", "cutie_small", "--checkpoint", str(cutie_small_checkpoint),
               "--prompter", "mobile_sam", "--prompter-checkpoint", str(sam_checkpoints["mobile_sam"]),
               "--point", "1:0:80,50", "--point", "1:0:20,10,0", "--box", "2:3:100,20,150,90",
               "--point", "1:3:70,40", "--mask-dir", str(masks),
               "--out", str(out), "--probs", str(probs), "--overlay", str(overlay)])
    assert rc == 0

    # the same through the Python API
    pipe = maskml.Pipeline(maskml.VideoTracker(maskml.load_model("cutie_small", checkpoint=cutie_small_checkpoint)),
                           prompter=maskml.load_model("mobile_sam", checkpoint=sam_checkpoints["mobile_sam"]))
    prompts = {0: [Prompt(1, points=[(80, 50), (20, 10)], labels=[1, 0])],
               3: [Prompt(1, points=[(70, 40)]), Prompt(2, box=(100, 20, 150, 90))]}
    for index, name, frame in open_video(small_judo):
        result = pipe.step(frame, prompts.get(index, ()), given if index == 1 else None)
        np.testing.assert_array_equal(read_mask(out / f"{name}.png"), result.labels.numpy())
        p = np.load(probs / f"{name}.npy")
        assert p.shape == (3, 96, 160)  # objects 1, 2, 3 in id order, zeros before they appear
        expected = np.zeros_like(p)
        for channel, obj in enumerate(result.object_ids):
            expected[[1, 2, 3].index(obj)] = result.probs[channel].numpy()
        np.testing.assert_array_equal(p, expected)
    assert result.object_ids == [1, 2, 3]
    capture = cv2.VideoCapture(str(overlay))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    capture.release()


def test_prompt_records():
    prompts = parse_prompts(["2:4:10,20", "2:4:30,40,0", "1:4:5,5"], ["2:4:0,0,50,60", "1:0:1,2,3,4"],
                            size=(96, 160), frame_count=6)
    assert prompts == {0: [Prompt(1, box=(1, 2, 3, 4))],
                       4: [Prompt(1, points=[(5, 5)]), Prompt(2, points=[(10, 20), (30, 40)], labels=[1, 0],
                                                                   box=(0, 0, 50, 60))]}
    assert parse_prompts(["1:900:3,3"], [], size=(96, 160), frame_count=None) == {900: [Prompt(1, points=[(3, 3)])]}


def test_bad_prompts_are_one_line_and_keep_earlier_results(tmp_path, small_judo, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_text("earlier result")
    masks = tmp_path / "masks"
    masks.mkdir()
    one = np.zeros((96, 160), np.uint8)
    one[:10, :10] = 1
    save_mask(masks / "00002.png", one)
    base = ["track", str(small_judo), "--out", str(out)]
    prompter = ["--prompter", "mobile_sam"]

    def fails(extra, message):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
        assert [p.name for p in out.iterdir()] == ["earlier.png"]

    fails(["--point", "1:0:5,5"], "--point/--box need --prompter NAME")
    fails(["--prompter-checkpoint", "x.pt", "--mask-dir", str(masks)], "without --prompter")
    fails(prompter, "nothing to track")
    fails(prompter + ["--point", "1:0"], "'1:0' is not of the form OBJ:FRAME:X,Y or OBJ:FRAME:X,Y,LABEL")
    fails(prompter + ["--point", "a:0:5,5"], "integers OBJ and FRAME")
    fails(prompter + ["--box", "1:0:5,5,6"], "not of the form OBJ:FRAME:X0,Y0,X1,Y1")
    fails(prompter + ["--point", "0:0:5,5"], "OBJ is an object id from 1 to 255, got 0")
    fails(prompter + ["--point", "256:0:5,5"], "from 1 to 255, got 256")
    fails(prompter + ["--point", "1:6:5,5"], "there is no frame 6 (frames are numbered 0 to 5)")
    fails(prompter + ["--point", "1:0:161,5"], "--point '1:0:161,5': point (161, 5) of object 1 is outside the 160x96")
    fails(prompter + ["--point", "1:0:-5,10"], "--point '1:0:-5,10': point (-5, 10) of object 1 is outside the 160x96")
    fails(prompter + ["--point", "-1:0:5,5"], "OBJ is an object id from 1 to 255, got -1")
    fails(prompter + ["--box", "-2:0:1,1,5,5"], "OBJ is an object id from 1 to 255, got -2")
    fails(prompter + ["--point", "1:0:5,5,2"], "LABEL must be 1 (object) or 0 (background)")
    fails(prompter + ["--box", "1:0:50,5,10,20"], "x1 >= x0 and y1 >= y0")
    fails(prompter + ["--box", "1:0:0,0,200,20"], "is outside the 160x96 frame")
    fails(prompter + ["--box", "1:0:0,0,9,9", "--box", "1:0:1,1,5,5"], "already has a box on frame 0")
    fails(prompter + ["--mask-dir", str(masks), "--point", "1:2:50,50"],
          "object 1 on frame 2 is already given by the --mask-dir mask")
    fails(prompter + ["--camera", "0", "--point", "1:0:5,5"], "either a VIDEO")


def test_camera_that_cannot_be_opened_prints_only_one_line(tmp_path, capfd):
    assert main(["track", "--camera", "9", "--prompter", "mobile_sam", "--point", "1:0:1,1",
                 "--out", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("maskml track: error: cannot open camera 9") and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_stream_that_ends_early_keeps_its_results(tmp_path, sam_checkpoints, cutie_small_checkpoint, capsys):
    video = tmp_path / "clip.mp4"
    with VideoWriter(video, fps=30, size=(64, 48)) as writer:
        for i in range(8):
            frame = np.zeros((48, 64, 3), np.uint8)
            frame[10:30, 5 + 4 * i:25 + 4 * i] = 255
            writer.write(frame)
    out = tmp_path / "out"
    rc = main(["track", f"file://{video}", "--checkpoint", str(cutie_small_checkpoint), "--prompter", "mobile_sam",
               "--prompter-checkpoint", str(sam_checkpoints["mobile_sam"]), "--point", "1:0:15,20",
               "--point", "2:50:30,20", "--out", str(out), "--overlay", str(tmp_path / "live.mp4")])
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()[-1]
    assert "stream file://" in err and "before frames [50] that have objects" in err, err
    count = int(err.split("ended after ")[1].split(" frames")[0])
    dropped = int(captured.out.split(" dropped")[0].split(", ")[-1])
    assert count >= 1 and count + dropped == 8  # a slow model drops frames of a fast stream
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(count)]
    assert read_mask(out / "00000.png").max() == 1
    capture = cv2.VideoCapture(str(tmp_path / "live.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == count
    capture.release()

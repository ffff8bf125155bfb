"""`maskml segment` end to end, through the real entry point."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import maskml
from conftest import FIXTURES
from maskml.cli import main
from maskml.io.images import atomic_paths

IMAGE = FIXTURES / "sam" / "truck_1200x800.png"


def test_point_prompt_writes_mask_logits_and_overlay(tmp_path, capsys, sam_checkpoints, truck_image):
    ckpt = sam_checkpoints["mobile_sam"]
    mask_path, logits_path, overlay_path = tmp_path / "m.png", tmp_path / "l.npy", tmp_path / "o.jpg"
    rc = main(["segment", str(IMAGE), "--model", "mobile_sam", "--checkpoint", str(ckpt), "--point", "430,310",
               "--point", "210,620,0", "--multimask", "--out", str(mask_path), "--logits", str(logits_path),
               "--overlay", str(overlay_path)])
    assert rc == 0
    printed = capsys.readouterr()
    assert printed.out.strip().endswith(f"-> {mask_path}, {logits_path}, {overlay_path}")
    assert printed.err == f"loading mobile_sam from {ckpt} ...\n"  # the seconds of loading are no hang

    predictor = maskml.ImagePredictor(maskml.load_model("mobile_sam", checkpoint=ckpt))
    predictor.set_image(truck_image)
    out = predictor.predict(points=[[430, 310], [210, 620]], labels=[1, 0], multimask=True)

    logits = np.load(logits_path)
    assert logits.dtype == np.float32 and logits.shape == (3, 800, 1200)
    np.testing.assert_array_equal(logits, out.logits.numpy())

    mask = Image.open(mask_path)
    assert mask.mode == "L" and mask.size == (1200, 800)
    expected = out.masks[int(out.scores.argmax())].numpy().astype(np.uint8) * 255
    np.testing.assert_array_equal(np.array(mask), expected)

    overlay = Image.open(overlay_path)
    assert overlay.size == (1200, 800) and overlay.mode == "RGB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.npy", "m.png", "o.jpg"]


@pytest.mark.parametrize("args,message", [
    (["--point", "1300,10"], "outside the 1200x800 image"),
    (["--point", "10,-1"], "outside"),
    (["--point", "-5,10"], "--point '-5,10' is outside the 1200x800 image"),  # not argparse's "expected one argument"
    (["--box", "-5,-5,10,10"], "--box '-5,-5,10,10' is outside the 1200x800 image"),
    (["--point", "10,20,7"], "LABEL must be 1"),
    (["--point", "10;20"], "not of the form X,Y"),
    (["--box", "100,100,50,200"], "X0 < X1"),
    (["--box", "1,2,3"], "not of the form X0,Y0,X1,Y1"),
    ([], "no prompt"),
    (["--model", "sam_vit_q", "--point", "1,1"], "unknown model"),
    (["--point", "1,1", "--checkpoint", "/nonexistent/mobile_sam.pt"], "does not exist"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out" / "mask.png"
    argv = ["segment", str(IMAGE), "--out", str(out)] + args
    if "--model" not in args:
        argv += ["--model", "mobile_sam"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("maskml segment: error:")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_folder_and_text_file_for_image_and_checkpoint(tmp_path, capsys):
    folder, out = tmp_path / "inputs", tmp_path / "out"  # outputs apart: inside an input they are refused first
    folder.mkdir()
    notes = folder / "notes.txt"
    notes.write_text("my notes, not a checkpoint")
    for argv, message in [([str(folder), "--point", "1,1"], f"image {folder} is a folder, not a file"),
                          ([str(IMAGE), "--point", "1,1", "--checkpoint", str(notes)],
                           f"{notes} is not a checkpoint: a PyTorch checkpoint is a zip archive"),
                          ([str(IMAGE), "--point", "1,1", "--checkpoint", str(folder)],
                           f"checkpoint {folder} is a folder, not a file")]:
        assert main(["segment", *argv, "--out", str(out / "m.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"maskml segment: error: {message}") and err.count("\n") == 1, err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert not out.exists() or list(out.iterdir()) == []


def test_missing_or_unreadable_image(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "none.jpg"), "--point", "1,1", "--out", str(tmp_path / "m.png")]) == 2
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(["segment", str(broken), "--point", "1,1", "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "cannot read image" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jpg"]


def test_failed_write_keeps_earlier_outputs_untouched(tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.npy"
    first.write_text("earlier result")
    with pytest.raises(RuntimeError):
        with atomic_paths(first, second) as temps:
            temps[0].write_text("new")
            raise RuntimeError("interrupted")
    assert first.read_text() == "earlier result" and not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_everything_writes_coco_rle_json_and_overlay(tmp_path, capsys, sam_checkpoints, truck_image):
    import json

    from maskml.io.rle import decode_rle

    out, overlay = tmp_path / "masks.json", tmp_path / "all.png"
    rc = main(["segment", str(IMAGE), "--model", "mobile_sam", "--checkpoint", str(sam_checkpoints["mobile_sam"]),
               "--everything", "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
               "--out", str(out), "--overlay", str(overlay)])
    assert rc == 0
    assert capsys.readouterr().out.strip().endswith(f"masks -> {out}, {overlay}")
    records = json.loads(out.read_text())
    assert records and all(set(r) == {"segmentation", "area", "bbox", "predicted_iou", "point_coords",
                                      "stability_score", "crop_box"} for r in records)
    assert all(int(decode_rle(r["segmentation"]).sum()) == r["area"] for r in records)
    assert Image.open(overlay).size == (1200, 800)


def test_everything_rejects_prompts_and_wrong_suffix(tmp_path, capsys):
    assert main(["segment", str(IMAGE), "--everything", "--point", "1,1", "--out", str(tmp_path / "m.json")]) == 2
    assert main(["segment", str(IMAGE), "--everything", "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert "drop --point/--box" in err and "is a .json file" in err
    assert list(tmp_path.iterdir()) == []

"""DAVIS J&F evaluation: masks with known answers, the official tool's numbers on a real mask,
the CSV files and the CLI."""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from maskml import MaskmlError
from maskml.cli import main
from maskml.eval.davis import (boundary_f_measure, boundary_map, evaluate_davis, format_table, region_similarity,
                               statistics, write_csv)
from maskml.io.masks import read_mask, save_mask

JUDO_MASK = Path(__file__).parents[1] / "examples" / "judo_masks" / "00000.png"


def square(h, w, top, left, size, value=1):
    mask = np.zeros((h, w), np.uint8)
    mask[top:top + size, left:left + size] = value
    return mask


def write_sequence(root, name, frames):
    (root / name).mkdir(parents=True)
    for i, ids in enumerate(frames):
        save_mask(root / name / f"{i:05d}.png", ids)


def test_boundary_map_is_the_tools_seg2bmap():
    # a 2 x 2 square at rows/columns 1-2 of a 4 x 5 image: its boundary is the outline of rows/columns
    # 0-2, half a pixel towards the origin
    mask = square(4, 5, 1, 1, 2).astype(bool)
    assert boundary_map(mask).astype(int).tolist() == [[1, 1, 1, 0, 0],
                                                       [1, 0, 1, 0, 0],
                                                       [1, 1, 1, 0, 0],
                                                       [0, 0, 0, 0, 0]]
    # on the last row only the east neighbour counts, on the last column only the south one, and the
    # last pixel is never on the boundary (outputs of the tool's _seg2bmap)
    edge = np.array([[0, 0, 1], [1, 0, 1], [0, 1, 1]], bool)
    assert boundary_map(edge).astype(int).tolist() == [[1, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert boundary_map(np.array([[0, 1], [1, 0]], bool)).astype(int).tolist() == [[1, 1], [1, 0]]
    assert boundary_map(np.ones((3, 3), bool)).sum() == 0


def test_identical_empty_and_shifted_masks():
    gt = square(100, 100, 30, 30, 20).astype(bool)[None]
    assert region_similarity(gt, gt)[0] == 1.0 and boundary_f_measure(gt, gt)[0] == 1.0
    empty = np.zeros_like(gt)
    assert region_similarity(gt, empty)[0] == 0.0 and boundary_f_measure(gt, empty)[0] == 0.0
    assert region_similarity(empty, gt)[0] == 0.0 and boundary_f_measure(empty, gt)[0] == 0.0
    assert region_similarity(empty, empty)[0] == 1.0 and boundary_f_measure(empty, empty)[0] == 1.0
    # tolerance: ceil(0.008 * hypot(100, 100)) = 2 pixels
    shifted = square(100, 100, 30, 31, 20).astype(bool)[None]
    assert region_similarity(gt, shifted)[0] == pytest.approx(380 / 420)
    assert boundary_f_measure(gt, shifted)[0] == 1.0
    # shifted 3 to the right: both boundaries are 21 x 21 outlines, 80 pixels each. Of the moved one,
    # 20 + 20 pixels of the top and bottom rows (all but the last) and 4 of its left column (2 at
    # each end) are within 2 pixels of the other: precision 44/80, recall 44/80 by symmetry
    three = square(100, 100, 30, 33, 20).astype(bool)[None]
    assert region_similarity(gt, three)[0] == pytest.approx(17 * 20 / (800 - 17 * 20))
    assert boundary_f_measure(gt, three)[0] == pytest.approx(44 / 80)
    far = square(100, 100, 30, 60, 20).astype(bool)[None]  # disjoint, boundaries 10 pixels apart
    assert region_similarity(gt, far)[0] == 0.0 and boundary_f_measure(gt, far)[0] == 0.0


def test_statistics_mean_recall_and_decay():
    mean, recall, decay = statistics(np.array([1, 1, 1, 1, 0, 0, 0, 0], float))
    # the tool's quarter bins for 8 frames are [0:3], [2:5], [4:6], [5:8]
    assert (mean, recall, decay) == (0.5, 0.5, 1.0)
    # 5 frames: bin boundaries 0, 1, 2, 3, 4 -> bins [0:2] and [3:5]
    assert statistics(np.array([0.9, 0.7, 0.5, 0.3, 0.1]))[2] == pytest.approx(0.8 - 0.2)
    assert statistics(np.array([0.2, 0.6, 0.7]))[1] == pytest.approx(2 / 3)  # recall: strictly above 0.5
    assert statistics(np.array([0.5, 0.5]))[1] == 0.0
    assert statistics(np.array([0.4]))[2] == 0.0  # one frame: both bins are that frame
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quietly, as the tool
        long = statistics(np.ones(300))  # the tool's uint8 bin indices wrap: its decay is NaN
    assert long[:2] == (1.0, 1.0) and np.isnan(long[2])


def test_evaluate_folders_and_csv(tmp_path):
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    two = [np.maximum(square(60, 80, 5, 5, 20, 1), square(60, 80, 30, 40, 20, 2)) for _ in range(6)]
    write_sequence(gt_root, "cows", two)
    # object 1 perfect, object 2 missing from the prediction
    write_sequence(pred_root, "cows", [square(60, 80, 5, 5, 20, 1) for _ in range(6)])
    write_sequence(gt_root, "dog", [square(60, 80, 10, 10, 30) for _ in range(5)])
    write_sequence(pred_root, "dog", [square(60, 80, 10, 10, 30) for _ in range(5)])
    (pred_root / "extra").mkdir()  # predictions of sequences without ground truth are not scored
    (gt_root / "cows" / "._00000.png").write_bytes(b"macOS metadata")  # dot files are skipped, as the tool's glob does
    (gt_root / ".cache").mkdir()
    results = evaluate_davis(pred_root, gt_root)
    assert results.sequences == ["cows", "dog"] and results.objects == ["cows_1", "cows_2", "dog_1"]
    assert results.j_mean == [1.0, 0.0, 1.0] and results.f_mean == [1.0, 0.0, 1.0]
    scores = results.global_scores()
    assert scores["J-Mean"] == pytest.approx(2 / 3) and scores["J&F-Mean"] == pytest.approx(2 / 3)
    write_csv(results, tmp_path / "out")
    assert (tmp_path / "out" / "global_results.csv").read_text().splitlines() == [
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay",
        "0.667,0.667,0.667,0.000,0.667,0.667,0.000"]
    assert (tmp_path / "out" / "per-sequence_results.csv").read_text().splitlines() == [
        "Sequence,J-Mean,F-Mean", "cows_1,1.000,1.000", "cows_2,0.000,0.000", "dog_1,1.000,1.000"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["global_results.csv", "per-sequence_results.csv"]
    table = format_table(results)
    assert "| 0.667 | 0.667 | 0.667 | 0.000 | 0.667 | 0.667 | 0.000 |" in table
    assert "| cows_2 | 0.000 | 0.000 |" in table


def test_first_and_last_frames_are_not_scored(tmp_path):
    frames = [square(40, 40, 5, 5, 10) for _ in range(4)]
    write_sequence(tmp_path / "gt", "s", frames)
    wrong_ends = [np.zeros((40, 40), np.uint8), frames[1], frames[2], np.zeros((40, 40), np.uint8)]
    write_sequence(tmp_path / "pred", "s", wrong_ends)
    assert evaluate_davis(tmp_path / "pred", tmp_path / "gt").j_mean == [1.0]
    for name in ("00000.png", "00003.png"):  # the tool does not even read them
        (tmp_path / "pred" / "s" / name).unlink()
    assert evaluate_davis(tmp_path / "pred", tmp_path / "gt").j_mean == [1.0]


def test_decay_void_and_late_objects(tmp_path):
    # 10 frames, 8 scored: right for the first four, lost for the last four
    gt = [square(50, 50, 10, 10, 20) for _ in range(10)]
    for ids in gt:
        ids[0:3, :] = 255  # void: counts as background
    gt[6][40:45, 40:45] = 2  # an object the first frame does not have is not scored
    pred = [square(50, 50, 10, 10, 20) if i <= 4 else np.zeros((50, 50), np.uint8) for i in range(10)]
    write_sequence(tmp_path / "gt", "s", gt)
    write_sequence(tmp_path / "pred", "s", pred)
    results = evaluate_davis(tmp_path / "pred", tmp_path / "gt")
    assert results.objects == ["s_1"]
    assert (results.j_mean, results.j_recall, results.j_decay) == ([0.5], [0.5], [1.0])
    assert (results.f_mean, results.f_recall, results.f_decay) == ([0.5], [0.5], [1.0])


def test_matches_the_official_tool_on_a_real_mask(tmp_path):
    """Per-object scores computed by davis2017-evaluation (semi-supervised) for this sequence."""
    person = read_mask(JUDO_MASK)
    box = np.zeros_like(person)
    box[40:100, 700:790] = 1
    disk5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))

    def ids(one, two):
        out = one.astype(np.uint8).copy()
        out[two > 0] = 2
        return out

    gt = [ids(person, box), ids(person, box), ids(np.roll(person, 12, axis=0), box), ids(person, box), ids(person, box)]
    pred = [gt[0], ids(cv2.erode(person, disk5), np.roll(box, 4, axis=1)), ids(person, np.zeros_like(box)),
            ids(cv2.dilate(person, np.ones((7, 7), np.uint8)), box), np.zeros_like(person)]
    write_sequence(tmp_path / "gt", "judo", gt)
    write_sequence(tmp_path / "pred", "judo", pred)
    r = evaluate_davis(tmp_path / "pred", tmp_path / "gt")
    assert r.objects == ["judo_1", "judo_2"]
    official = {"j_mean": [0.895691730501253, 0.6382978723404255],
                "j_recall": [1.0, 0.6666666666666666],
                "j_decay": [0.0010147675496939845, -0.5425531914893618],
                "f_mean": [0.9298222633035321, 0.6666666666666666],
                "f_recall": [1.0, 0.6666666666666666],
                "f_decay": [-0.08181269605987107, -0.5]}
    for key, values in official.items():
        assert getattr(r, key) == pytest.approx(values, rel=1e-12, abs=1e-12), key


def test_bad_input(tmp_path):
    frames = [square(40, 40, 5, 5, 10) for _ in range(3)]
    write_sequence(tmp_path / "gt", "s", frames)
    with pytest.raises(MaskmlError, match="prediction folder .*pred does not exist"):
        evaluate_davis(tmp_path / "pred", tmp_path / "gt")
    (tmp_path / "pred").mkdir()
    with pytest.raises(MaskmlError, match="has no folder for sequence s"):
        evaluate_davis(tmp_path / "pred", tmp_path / "gt")
    write_sequence(tmp_path / "pred", "s", [frames[0], square(40, 50, 5, 5, 10), frames[2]])
    with pytest.raises(MaskmlError, match="predictions of s are 50x40, but its ground truth is 40x40"):
        evaluate_davis(tmp_path / "pred", tmp_path / "gt")
    save_mask(tmp_path / "pred" / "s" / "00001.png", square(40, 40, 5, 5, 10, value=255))
    with pytest.raises(MaskmlError, match="contain object 255, but .* only 1 objects"):
        evaluate_davis(tmp_path / "pred", tmp_path / "gt")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "pred" / "s" / "00001.png")
    with pytest.raises(MaskmlError, match="is a RGB image: save masks as indexed PNGs"):
        evaluate_davis(tmp_path / "pred", tmp_path / "gt")
    (tmp_path / "pred" / "s" / "00001.png").unlink()
    with pytest.raises(MaskmlError, match=r"00001.png is missing \(1 of 1 frames of s\)"):
        evaluate_davis(tmp_path / "pred", tmp_path / "gt")
    save_mask(tmp_path / "gt" / "s" / "00003.png", square(30, 30, 5, 5, 10))
    with pytest.raises(MaskmlError, match="ground-truth mask .*00003.png is 30x30"):
        evaluate_davis(tmp_path / "gt", tmp_path / "gt")
    write_sequence(tmp_path / "short", "s", frames[:2])
    with pytest.raises(MaskmlError, match="at least 3"):
        evaluate_davis(tmp_path / "short", tmp_path / "short")
    (tmp_path / "none").mkdir()
    with pytest.raises(MaskmlError, match="holds no sequence folders"):
        evaluate_davis(tmp_path / "gt", tmp_path / "none")
    write_sequence(tmp_path / "blank", "s", [np.zeros((8, 8), np.uint8)] * 3)
    with pytest.raises(MaskmlError, match="nothing to score"):
        evaluate_davis(tmp_path / "blank", tmp_path / "blank")


def test_cli_prints_table_and_rejects_bad_input(tmp_path, capsys):
    write_sequence(tmp_path / "gt", "s", [square(40, 40, 5, 5, 10) for _ in range(3)])
    write_sequence(tmp_path / "pred", "s", [square(40, 40, 5, 5, 10) for _ in range(3)])
    assert main(["eval", "davis", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--out", f"{tmp_path / 'out'}/"]) == 0
    out = capsys.readouterr().out
    assert "| 1.000 | 1.000 |" in out and "| s_1 | 1.000 | 1.000 |" in out
    folder = tmp_path / "out"
    assert out.strip().endswith(f"-> {folder / 'global_results.csv'}, {folder / 'per-sequence_results.csv'}")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["global_results.csv", "per-sequence_results.csv"]
    assert (tmp_path / "out" / "global_results.csv").read_text().splitlines()[1] == \
        "1.000,1.000,1.000,0.000,1.000,1.000,0.000"
    assert main(["eval", "davis", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    assert main(["eval", "davis", "--pred", str(tmp_path / "nope"), "--gt", str(tmp_path / "gt")]) == 2
    (tmp_path / "pred" / "s" / "00001.png").unlink()
    assert main(["eval", "davis", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "is missing" in err
    assert "maskml eval: error: prediction folder" in err
    assert not (tmp_path / "out2").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "kitti", "--pred", "a", "--gt", "b"])
    assert exit_info.value.code == 2

"""DAVIS J&F evaluation on masks with known answers, the CSV files and the CLI."""
from __future__ import annotations

import numpy as np
import pytest

from maskml.cli import main
from maskml.eval.davis import boundary_f_measure, evaluate_davis, region_similarity, statistics, write_csv
from maskml.io.masks import save_mask


def square(h, w, top, left, size, value=1):
    mask = np.zeros((h, w), np.uint8)
    mask[top:top + size, left:left + size] = value
    return mask


def write_sequence(root, name, frames):
    (root / name).mkdir(parents=True)
    for i, ids in enumerate(frames):
        save_mask(root / name / f"{i:05d}.png", ids)


def test_identical_empty_and_shifted_masks():
    gt = square(100, 100, 30, 30, 20).astype(bool)[None]
    assert region_similarity(gt, gt)[0] == 1.0 and boundary_f_measure(gt, gt)[0] == 1.0
    empty = np.zeros_like(gt)
    assert region_similarity(gt, empty)[0] == 0.0 and boundary_f_measure(gt, empty)[0] == 0.0
    assert region_similarity(empty, empty)[0] == 1.0 and boundary_f_measure(empty, empty)[0] == 1.0
    shifted = square(100, 100, 30, 31, 20).astype(bool)[None]  # one pixel: within the 2-pixel tolerance
    assert region_similarity(gt, shifted)[0] == pytest.approx(380 / 420)
    assert boundary_f_measure(gt, shifted)[0] == 1.0
    far = square(100, 100, 30, 60, 20).astype(bool)[None]  # disjoint, boundaries 10 pixels apart
    assert region_similarity(gt, far)[0] == 0.0 and boundary_f_measure(gt, far)[0] == 0.0


def test_statistics_mean_recall_and_decay():
    mean, recall, decay = statistics(np.array([1, 1, 1, 1, 0, 0, 0, 0], float))
    # the tool's quarter bins for 8 frames are [0:3], [2:5], [4:6], [5:8]
    assert (mean, recall, decay) == (0.5, 0.5, 1.0)
    assert statistics(np.array([0.2, 0.6, 0.7]))[1] == pytest.approx(2 / 3)


def test_evaluate_folders_and_csv(tmp_path):
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    two = [np.maximum(square(60, 80, 5, 5, 20, 1), square(60, 80, 30, 40, 20, 2)) for _ in range(6)]
    write_sequence(gt_root, "cows", two)
    # object 1 perfect, object 2 missing from the prediction
    write_sequence(pred_root, "cows", [square(60, 80, 5, 5, 20, 1) for _ in range(6)])
    write_sequence(gt_root, "dog", [square(60, 80, 10, 10, 30) for _ in range(5)])
    write_sequence(pred_root, "dog", [square(60, 80, 10, 10, 30) for _ in range(5)])
    results = evaluate_davis(pred_root, gt_root)
    assert results.objects == ["cows_1", "cows_2", "dog_1"]
    assert results.j_mean == [1.0, 0.0, 1.0] and results.f_mean == [1.0, 0.0, 1.0]
    scores = results.global_scores()
    assert scores["J-Mean"] == pytest.approx(2 / 3) and scores["J&F-Mean"] == pytest.approx(2 / 3)
    write_csv(results, tmp_path / "out")
    assert (tmp_path / "out" / "global_results.csv").read_text().splitlines() == [
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay",
        "0.667,0.667,0.667,0.000,0.667,0.667,0.000"]
    assert (tmp_path / "out" / "per-sequence_results.csv").read_text().splitlines() == [
        "Sequence,J-Mean,F-Mean", "cows_1,1.000,1.000", "cows_2,0.000,0.000", "dog_1,1.000,1.000"]


def test_first_and_last_frames_are_not_scored(tmp_path):
    frames = [square(40, 40, 5, 5, 10) for _ in range(4)]
    write_sequence(tmp_path / "gt", "s", frames)
    wrong_ends = [np.zeros((40, 40), np.uint8), frames[1], frames[2], np.zeros((40, 40), np.uint8)]
    write_sequence(tmp_path / "pred", "s", wrong_ends)
    assert evaluate_davis(tmp_path / "pred", tmp_path / "gt").j_mean == [1.0]


def test_cli_prints_table_and_rejects_bad_folders(tmp_path, capsys):
    write_sequence(tmp_path / "gt", "s", [square(40, 40, 5, 5, 10) for _ in range(3)])
    write_sequence(tmp_path / "pred", "s", [square(40, 40, 5, 5, 10) for _ in range(3)])
    assert main(["eval", "davis", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--out", str(tmp_path / "out")]) == 0
    assert "| 1.000 | 1.000 |" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["global_results.csv", "per-sequence_results.csv"]
    assert main(["eval", "davis", "--pred", str(tmp_path / "nope"), "--gt", str(tmp_path / "gt")]) == 2
    (tmp_path / "pred" / "s" / "00001.png").unlink()
    assert main(["eval", "davis", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "is missing" in err

"""DAVIS 2017 semi-supervised evaluation: region similarity J, boundary accuracy F, J&F.

Computes what the official davis2017-evaluation tool computes: per object and frame,
J = IoU (1 when both masks are empty) and F = boundary F-measure with a tolerance of
ceil(0.008 * image diagonal) pixels (disk-shaped dilation of the 1-pixel boundary maps);
the first and last annotated frames of each sequence are not scored; per object the
mean, the recall (fraction of frames > 0.5) and the decay (mean of the first quarter of
frames minus the last, with the tool's binning, uint8 indices included). Objects are those
of a sequence's first ground-truth frame; an object missing from the prediction is scored
as an empty mask (0 where the ground truth has it); ground-truth pixels of value 255 (void)
count as background, as the tool passes no void mask in the semi-supervised task.

Reference: github.com/davisvideochallenge/davis2017-evaluation, davis2017/evaluation.py
(evaluate, _evaluate_semisupervised), metrics.py (db_eval_iou, f_measure, _seg2bmap) and
utils.py (db_statistics). One difference: the tool names its files global_results-<set>.csv
and per-sequence_results-<set>.csv; write_csv leaves out the set.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from maskml.errors import MaskmlError
from maskml.io.images import atomic_paths

GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
BOUND_TH = 0.008
_WINDOW = np.ones((2, 2), np.uint8)


@dataclass
class DavisResults:
    """Per-object statistics in the tool's order (sequences sorted, objects by id); global_scores()
    gives the row of global_results.csv."""

    sequences: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)  # "<sequence>_<object id>"
    j_mean: list[float] = field(default_factory=list)
    j_recall: list[float] = field(default_factory=list)
    j_decay: list[float] = field(default_factory=list)
    f_mean: list[float] = field(default_factory=list)
    f_recall: list[float] = field(default_factory=list)
    f_decay: list[float] = field(default_factory=list)

    def global_scores(self) -> dict[str, float]:
        j, f = float(np.mean(self.j_mean)), float(np.mean(self.f_mean))
        return dict(zip(GLOBAL_COLUMNS, [(j + f) / 2, j, float(np.mean(self.j_recall)), float(np.mean(self.j_decay)),
                                         f, float(np.mean(self.f_recall)), float(np.mean(self.f_decay))]))


def _read_indexed(path: Path) -> np.ndarray:
    """Palette indices as they are, as the tool reads them (np.array(Image.open(path)))."""
    try:
        with Image.open(path) as im:
            ids = np.array(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise MaskmlError(f"cannot read mask {path}: {exc}") from None
    if ids.ndim != 2:
        raise MaskmlError(f"mask {path} is a {im.mode} image: save masks as indexed PNGs (palette index = object id)")
    return ids


def _read_sequence(paths: list[Path], what: str) -> np.ndarray:
    """(T, H, W) masks of one sequence."""
    masks = [_read_indexed(path) for path in paths]
    for path, ids in zip(paths, masks):
        if ids.shape != masks[0].shape:
            raise MaskmlError(f"{what} mask {path} is {ids.shape[1]}x{ids.shape[0]}, but {paths[0]} is "
                              f"{masks[0].shape[1]}x{masks[0].shape[0]}: all masks of a sequence must have one size")
    return np.stack(masks)


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """J per frame: (T, H, W) bool each -> (T,)."""
    inter = np.count_nonzero(gt & pred, axis=(-2, -1))
    union = np.count_nonzero(gt | pred, axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def boundary_map(masks: np.ndarray) -> np.ndarray:
    """1-pixel boundaries of (..., H, W) bool masks, as the tool's seg2bmap: a pixel is on the
    boundary when it differs from its east, south or south-east neighbour, neighbours outside the
    image not counting (so on the last row only the east one counts, on the last column only the
    south one). That is max != min over the 2 x 2 window the pixel starts, which OpenCV's dilate
    and erode with the anchor in the window's corner give (their border leaves outside pixels out)."""
    flat = np.ascontiguousarray(masks, dtype=bool).reshape(-1, *masks.shape[-2:])
    out = np.empty(flat.shape, np.uint8)
    for t, m in enumerate(flat.view(np.uint8)):
        cv2.bitwise_xor(cv2.dilate(m, _WINDOW, anchor=(0, 0)), cv2.erode(m, _WINDOW, anchor=(0, 0)), dst=out[t])
    return out.view(bool).reshape(masks.shape)


def disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def boundary_f_measure(gt: np.ndarray, pred: np.ndarray, frame_size: tuple[int, int] | None = None) -> np.ndarray:
    """F per frame: (T, H, W) bool each -> (T,). frame_size: the full frame (H, W) when gt and pred
    are crops of it (the tolerance depends on the frame's diagonal)."""
    radius = int(np.ceil(BOUND_TH * np.linalg.norm(frame_size or gt.shape[-2:])))
    kernel = disk(radius)
    gt_b, pred_b = boundary_map(gt), boundary_map(pred)
    n_gt_all, n_pred_all = np.count_nonzero(gt_b, axis=(1, 2)), np.count_nonzero(pred_b, axis=(1, 2))
    scores = np.zeros(len(gt_b))
    for t in range(len(gt_b)):
        n_pred, n_gt = int(n_pred_all[t]), int(n_gt_all[t])
        if n_pred == 0 or n_gt == 0:
            # no boundary on one side: precision/recall of 1 and 0 -> F 0; none on either -> 1
            scores[t] = 1.0 if n_pred == n_gt == 0 else 0.0
            continue
        # Dilation is the cost: do it on this frame's box around both boundaries only. Only boundary
        # pixels are looked up in the dilated maps, and no boundary pixel lies outside the box.
        g, p = gt_b[t], pred_b[t]
        rows, cols = np.flatnonzero((g | p).any(axis=1)), np.flatnonzero((g | p).any(axis=0))
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        g, p = np.ascontiguousarray(g[box]), np.ascontiguousarray(p[box])
        gt_dil = cv2.dilate(g.view(np.uint8), kernel).view(bool)
        pred_dil = cv2.dilate(p.view(np.uint8), kernel).view(bool)
        precision = np.count_nonzero(p & gt_dil) / n_pred
        recall = np.count_nonzero(g & pred_dil) / n_gt
        scores[t] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return scores


def _object_scores(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """J and F per frame of one object, computed on the box (over all frames) around both masks
    plus a 1-pixel margin: outside it both masks are empty, so nothing there changes a score."""
    h, w = gt.shape[-2:]
    either = gt | pred
    rows, cols = np.flatnonzero(either.any(axis=(0, 2))), np.flatnonzero(either.any(axis=(0, 1)))
    if rows.size == 0:
        return np.ones(len(gt)), np.ones(len(gt))
    y0, y1 = max(rows[0] - 1, 0), min(rows[-1] + 2, h)
    x0, x1 = max(cols[0] - 1, 0), min(cols[-1] + 2, w)
    gt, pred = np.ascontiguousarray(gt[:, y0:y1, x0:x1]), np.ascontiguousarray(pred[:, y0:y1, x0:x1])
    return region_similarity(gt, pred), boundary_f_measure(gt, pred, frame_size=(h, w))


def statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall (fraction > 0.5) and decay (mean of the first of 4 bins minus the last), with the
    tool's bins: boundaries round(linspace(1, T, 5)) - 1 cast to uint8, each bin up to and including
    the next boundary, so neighbouring bins share a frame. From 256 frames on the uint8 indices wrap,
    the last bin is empty and the tool's decay is NaN; that is kept, as the scores are the tool's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # the wrap and empty bins, silenced as the tool does
        mean = float(np.nanmean(per_frame))
        recall = float(np.nanmean(per_frame > 0.5))
        ids = (np.round(np.linspace(1, len(per_frame), 5) + 1e-10) - 1).astype(np.uint8)
        bins = [per_frame[ids[i]:ids[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def evaluate_davis(pred_dir: str | Path, gt_dir: str | Path) -> DavisResults:
    """Score predicted masks against ground truth, both in the DAVIS Annotations layout
    DIR/<sequence>/<frame>.png (indexed PNGs). Every sequence of gt_dir is scored; pred_dir needs
    a mask for every ground-truth frame but the first and the last, and may hold more."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for what, folder in (("ground-truth", gt_dir), ("prediction", pred_dir)):
        if not folder.is_dir():
            raise MaskmlError(f"{what} folder {folder} does not exist or is not a folder")
    sequences = sorted(p.name for p in gt_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not sequences:
        raise MaskmlError(f"ground-truth folder {gt_dir} holds no sequence folders "
                          f"(expected {gt_dir}/<sequence>/<frame>.png)")
    # every file is checked before any is read: a missing frame fails at once, not after minutes
    frames = {sequence: _frames(pred_dir, gt_dir, sequence) for sequence in sequences}
    # Sequences in parallel threads: PNG decoding, OpenCV and NumPy's large operations release the
    # GIL (measured 1.3x faster on 2 cores). On an error, the sequences not started are dropped.
    pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
    try:
        scored = list(pool.map(lambda s: _score_sequence(pred_dir, gt_dir, s, frames[s]), sequences))
    finally:
        pool.shutdown(cancel_futures=True)
    results = DavisResults(sequences=sequences)
    for sequence, objects in zip(sequences, scored):
        for obj, (j, f) in enumerate(objects, start=1):
            j_mean, j_recall, j_decay = statistics(j)
            f_mean, f_recall, f_decay = statistics(f)
            results.objects.append(f"{sequence}_{obj}")
            results.j_mean.append(j_mean)
            results.j_recall.append(j_recall)
            results.j_decay.append(j_decay)
            results.f_mean.append(f_mean)
            results.f_recall.append(f_recall)
            results.f_decay.append(f_decay)
    if not results.objects:
        raise MaskmlError(f"no sequence in {gt_dir} has an object in its first ground-truth frame: nothing to score")
    return results


def _frames(pred_dir: Path, gt_dir: Path, sequence: str) -> list[str]:
    """Ground-truth frame names of a sequence, as the tool's sorted glob gives them (by file name,
    no dot files), once every prediction the tool reads is known to exist."""
    frames = [p.stem for p in sorted((gt_dir / sequence).glob("*.png")) if not p.name.startswith(".")]
    if len(frames) < 3:
        raise MaskmlError(f"sequence {sequence} has {len(frames)} ground-truth frames in {gt_dir / sequence}; "
                          f"the first and the last are not scored, so at least 3 are needed")
    if not (pred_dir / sequence).is_dir():
        raise MaskmlError(f"prediction folder {pred_dir} has no folder for sequence {sequence} "
                          f"(expected {pred_dir / sequence}/<frame>.png)")
    missing = [name for name in frames[1:-1] if not (pred_dir / sequence / f"{name}.png").is_file()]
    if missing:
        raise MaskmlError(f"prediction {pred_dir / sequence / missing[0]}.png is missing ({len(missing)} of "
                          f"{len(frames) - 2} frames of {sequence}): every ground-truth frame but the first and "
                          f"the last needs one")
    return frames


def _score_sequence(pred_dir: Path, gt_dir: Path, sequence: str, frames: list[str]):
    """Per-frame J and F of each object of the sequence's first ground-truth frame."""
    gt = _read_sequence([gt_dir / sequence / f"{name}.png" for name in frames], "ground-truth")
    gt[gt == 255] = 0  # void
    num_objects = int(gt[0].max())  # the objects are those of the first frame, as in the tool
    gt = gt[1:-1]  # the first frame is the given one; the tool leaves out the last as well
    pred = _read_sequence([pred_dir / sequence / f"{name}.png" for name in frames[1:-1]], "predicted")
    if pred.shape[1:] != gt.shape[1:]:
        raise MaskmlError(f"predictions of {sequence} are {pred.shape[2]}x{pred.shape[1]}, but its ground truth "
                          f"is {gt.shape[2]}x{gt.shape[1]}")
    if int(pred.max()) > num_objects:
        hint = " (a 0/255 mask? save one object as index 1)" if int(pred.max()) == 255 else ""
        raise MaskmlError(f"predictions of {sequence} contain object {int(pred.max())}, but its first "
                          f"ground-truth frame has only {num_objects} objects{hint}")
    # an object missing from the prediction is scored as empty masks, as the tool's zero padding
    return [_object_scores(gt == obj, pred == obj) for obj in range(1, num_objects + 1)]


def write_csv(results: DavisResults, out_dir: str | Path) -> tuple[Path, Path]:
    """The tool's global_results.csv and per-sequence_results.csv (its columns, 3 decimals as its
    float_format="%.3f"); both appear together, and only once complete. Returns their paths."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MaskmlError(f"output folder {out_dir} exists and is a file: remove it or choose another name")
    scores = results.global_scores()
    rows = [",".join(GLOBAL_COLUMNS), ",".join(f"{scores[c]:.3f}" for c in GLOBAL_COLUMNS)]
    per_object = ["Sequence,J-Mean,F-Mean"] + [f"{name},{j:.3f},{f:.3f}" for name, j, f in
                                               zip(results.objects, results.j_mean, results.f_mean)]
    paths = out_dir / "global_results.csv", out_dir / "per-sequence_results.csv"
    with atomic_paths(*paths) as (g, s):
        g.write_text("".join(row + "\n" for row in rows))
        s.write_text("".join(row + "\n" for row in per_object))
    return paths


def format_table(results: DavisResults) -> str:
    """The global scores and the per-object means as Markdown tables, for the terminal."""
    scores = results.global_scores()
    lines = ["| " + " | ".join(GLOBAL_COLUMNS) + " |", "|" + "---|" * len(GLOBAL_COLUMNS),
             "| " + " | ".join(f"{scores[c]:.3f}" for c in GLOBAL_COLUMNS) + " |", "",
             "| Sequence | J-Mean | F-Mean |", "|---|---|---|"]
    lines += [f"| {n} | {j:.3f} | {f:.3f} |" for n, j, f in zip(results.objects, results.j_mean, results.f_mean)]
    return "\n".join(lines)

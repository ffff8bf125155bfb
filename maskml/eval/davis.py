"""DAVIS 2017 semi-supervised evaluation: region similarity J, boundary accuracy F, J&F.

Computes what the official davis2017-evaluation tool computes: per object and frame,
J = IoU (1 when both masks are empty) and F = boundary F-measure with a tolerance of
ceil(0.008 * image diagonal) pixels (disk-shaped dilation of the 1-pixel boundary maps);
the first and last annotated frames of each sequence are not scored; per object the
mean, the recall (fraction of frames > 0.5) and the decay (mean of the first quarter of
frames minus the last, with the tool's binning). Objects are those of a sequence's first
ground-truth frame; an object missing from the prediction scores zero; ground-truth
pixels of value 255 are void (treated as background).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from maskml.errors import MaskmlError
from maskml.io.images import atomic_path

GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
BOUND_TH = 0.008


@dataclass
class DavisResults:
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
    try:
        with Image.open(path) as im:
            return np.array(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise MaskmlError(f"cannot read mask {path}: {exc}") from None


def _read_all(paths: list[Path]) -> list[np.ndarray]:
    """PNG decoding releases the GIL: read a sequence's masks on a few threads."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(_read_indexed, paths))


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """J per frame: (T, H, W) bool each -> (T,)."""
    inter = np.count_nonzero(gt & pred, axis=(-2, -1))
    union = np.count_nonzero(gt | pred, axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def boundary_map(masks: np.ndarray) -> np.ndarray:
    """1-pixel boundaries of (T, H, W) bool masks, offset half a pixel towards the origin
    (the tool's seg2bmap: a pixel differs from its east, south or south-east neighbour; on the
    last row only the east one counts, on the last column only the south one)."""
    m = masks
    b = np.zeros_like(m)
    core = m[..., :-1, :-1]
    b[..., :-1, :-1] = (core ^ m[..., :-1, 1:]) | (core ^ m[..., 1:, :-1]) | (core ^ m[..., 1:, 1:])
    b[..., -1, :-1] = m[..., -1, :-1] ^ m[..., -1, 1:]
    b[..., :-1, -1] = m[..., :-1, -1] ^ m[..., 1:, -1]
    return b


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
        gt_dil = cv2.dilate(gt_b[t].view(np.uint8), kernel).view(bool)
        pred_dil = cv2.dilate(pred_b[t].view(np.uint8), kernel).view(bool)
        precision = np.count_nonzero(pred_b[t] & gt_dil) / n_pred
        recall = np.count_nonzero(gt_b[t] & pred_dil) / n_gt
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
    """Mean, recall (> 0.5) and decay, with the tool's quarter bins (including its uint8 indices)."""
    mean = float(np.nanmean(per_frame))
    recall = float(np.nanmean(per_frame > 0.5))
    ids = (np.round(np.linspace(1, len(per_frame), 5) + 1e-10) - 1).astype(np.uint8)
    bins = [per_frame[ids[i]:ids[i + 1] + 1] for i in range(4)]
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def evaluate_davis(pred_dir: str | Path, gt_dir: str | Path) -> DavisResults:
    """Both folders in the DAVIS Annotations layout: DIR/<sequence>/<frame>.png (indexed PNGs)."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for flag, folder in (("--gt", gt_dir), ("--pred", pred_dir)):
        if not folder.is_dir():
            raise MaskmlError(f"{flag} {folder} is not a folder")
    sequences = sorted(p.name for p in gt_dir.iterdir() if p.is_dir())
    if not sequences:
        raise MaskmlError(f"--gt {gt_dir} holds no sequence folders (expected {gt_dir}/<sequence>/<frame>.png)")
    results = DavisResults(sequences=sequences)
    for sequence in sequences:
        frames = sorted(p.stem for p in (gt_dir / sequence).glob("*.png"))
        if len(frames) < 3:
            raise MaskmlError(f"sequence {sequence} has {len(frames)} ground-truth frames; the first and the last "
                              f"are not scored, so at least 3 are needed")
        gt = np.stack(_read_all([gt_dir / sequence / f"{name}.png" for name in frames]))
        gt[gt == 255] = 0  # void
        num_objects = int(gt[0].max())
        scored = frames[1:-1]
        if not (pred_dir / sequence).is_dir():
            raise MaskmlError(f"--pred {pred_dir} has no folder for sequence {sequence}")
        paths = [pred_dir / sequence / f"{name}.png" for name in scored]
        for path in paths:
            if not path.is_file():
                raise MaskmlError(f"prediction {path} is missing (every ground-truth frame but the first and the "
                                  f"last needs one)")
        pred = np.stack(_read_all(paths))
        if pred.shape != (len(scored), *gt.shape[1:]):
            raise MaskmlError(f"predictions of {sequence} are {pred.shape[2]}x{pred.shape[1]}, ground truth is "
                              f"{gt.shape[2]}x{gt.shape[1]}")
        if int(pred.max()) > num_objects:
            raise MaskmlError(f"predictions of {sequence} contain object {int(pred.max())}, but its first "
                              f"ground-truth frame has only {num_objects} objects")
        gt = gt[1:-1]
        for obj in range(1, num_objects + 1):
            j, f = _object_scores(gt == obj, pred == obj)
            j_mean, j_recall, j_decay = statistics(j)
            f_mean, f_recall, f_decay = statistics(f)
            results.objects.append(f"{sequence}_{obj}")
            results.j_mean.append(j_mean)
            results.j_recall.append(j_recall)
            results.j_decay.append(j_decay)
            results.f_mean.append(f_mean)
            results.f_recall.append(f_recall)
            results.f_decay.append(f_decay)
    return results


def write_csv(results: DavisResults, out_dir: str | Path) -> None:
    """The tool's global_results.csv and per-sequence_results.csv (3 decimals), each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = results.global_scores()
    with atomic_path(out_dir / "global_results.csv") as tmp:
        tmp.write_text(",".join(GLOBAL_COLUMNS) + "\n" + ",".join(f"{scores[c]:.3f}" for c in GLOBAL_COLUMNS) + "\n")
    rows = [f"{name},{j:.3f},{f:.3f}" for name, j, f in zip(results.objects, results.j_mean, results.f_mean)]
    with atomic_path(out_dir / "per-sequence_results.csv") as tmp:
        tmp.write_text("Sequence,J-Mean,F-Mean\n" + "".join(row + "\n" for row in rows))


def format_table(results: DavisResults) -> str:
    scores = results.global_scores()
    lines = ["| " + " | ".join(GLOBAL_COLUMNS) + " |", "|" + "---|" * len(GLOBAL_COLUMNS),
             "| " + " | ".join(f"{scores[c]:.3f}" for c in GLOBAL_COLUMNS) + " |", "",
             "| Sequence | J-Mean | F-Mean |", "|---|---|---|"]
    lines += [f"| {n} | {j:.3f} | {f:.3f} |" for n, j, f in zip(results.objects, results.j_mean, results.f_mean)]
    return "\n".join(lines)

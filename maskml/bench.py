"""`maskml bench`: one table, one process: per model, PyTorch float32 against its ONNX Runtime exports
(float32, int8; int8-static with calibration images; bf16 and torch.compile rows on CUDA).

Columns: encoder ms (ImagePredictor.set_image), decoder ms per prompt (predict() of one click, upscaling
to the original size included), video frame ms with 1 and 3 objects (tracker.step on a short synthetic
clip), peak memory (the rise of the process's resident memory during the row, sampled), mask IoU of the
row's masks against PyTorch float32 on three clicks per image. Every time is the median of `runs` calls
after one warm-up call.

Video cells: the row's own model (PyTorch, or the ONNX Runtime export loaded with backend="onnxruntime")
driven by maskml's tracker, so both backends run the same Python memory code.
"""
from __future__ import annotations

import ctypes
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from maskml.errors import MaskmlError

PYTORCH = "PyTorch fp32"
VIDEO_FAMILIES = ("cutie", "sam2")
IMAGE_FAMILIES = ("sam", "sam2")
VIDEO_SIZE = (480, 854)  # (h, w) of the synthetic clip the trackers run on
CLICKS = ((0.5, 0.5), (0.3, 0.6), (0.7, 0.4))  # fractions of (w, h): the prompts of the IoU column


@dataclass
class Row:
    model: str
    backend: str
    encoder_mb: float | None = None
    encoder_ms: float | None = None
    decoder_ms: float | None = None
    frame_ms_1: float | None = None
    frame_ms_3: float | None = None
    peak_mb: float | None = None
    iou_mean: float | None = None
    iou_min: float | None = None
    note: str = ""


@dataclass
class BenchResult:
    machine: str
    weights: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"machine": self.machine, "weights": self.weights, "rows": [asdict(r) for r in self.rows],
                "notes": self.notes}


# what a figure's time is read from: "wall" (time.perf_counter) or "cpu" (this process's CPU time: with one
# thread, the work itself, nearly untouched by other jobs sharing the cores)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = _clock()
        fn()
        times.append(1000 * (_clock() - start))
    return statistics.median(times)


class PeakMemory:
    """The rise of this process's resident memory (Linux /proc/self/statm) while the block runs, sampled
    every 2 ms by a thread; freed heap memory is handed back to the system first (malloc_trim), so an
    earlier row's freed memory does not hide this row's. None where /proc is missing."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None

    @staticmethod
    def _rss() -> int | None:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self):
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.base = self._rss()
        self.highest = self.base
        self.running = self.base is not None
        self.thread = threading.Thread(target=self._sample, daemon=True)
        if self.running:
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.highest = max(self.highest, self._rss() or 0)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self.running:
            self.running = False
            self.thread.join()
            self.highest = max(self.highest, self._rss() or 0)
            self.peak_mb = (self.highest - self.base) / 2**20


def official_weights(name: str, checkpoint) -> bool:
    """Whether `checkpoint` (None: the cached official file) holds the released weights."""
    from maskml.hub import sha256_of
    from maskml.zoo import get_entry

    entry = get_entry(name)
    return checkpoint is None or (bool(entry.sha256) and sha256_of(Path(checkpoint)) == entry.sha256)


def clicks(image: np.ndarray) -> list[dict]:
    h, w = image.shape[:2]
    return [dict(points=[[w * fx, h * fy]], labels=[1], multimask=True) for fx, fy in CLICKS]


def best_masks(predictor, images: list[np.ndarray]) -> list[torch.Tensor]:
    masks = []
    for image in images:
        predictor.set_image(image)
        for prompt in clicks(image):
            out = predictor.predict(**prompt)
            masks.append(out.masks[out.best()])
    return masks


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def synthetic_clip(image: np.ndarray, frames: int) -> list[np.ndarray]:
    """`frames` frames of `image` at VIDEO_SIZE, each shifted a few pixels to the right of the last."""
    import torch.nn.functional as F

    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, VIDEO_SIZE, mode="bilinear", align_corners=False).round().clamp(0, 255).byte()[0]
    return [torch.roll(x, 4 * i, dims=2).permute(1, 2, 0).numpy() for i in range(frames)]


def object_masks(objects: int) -> torch.Tensor:
    """An id map at VIDEO_SIZE with `objects` rectangles side by side."""
    h, w = VIDEO_SIZE
    ids = torch.zeros(h, w, dtype=torch.uint8)
    for i in range(objects):
        x0 = w * (2 * i + 1) // (2 * objects + 1)
        ids[h // 3:2 * h // 3, x0:x0 + w // (2 * objects + 1)] = i + 1
    return ids


def frame_ms(family: str, model, objects: int, frames: list, runs: int, device: str = "cpu", autocast=None) -> float:
    """ms per tracked frame after the first: Cutie's VideoTracker or SAM 2's Sam2Tracker on `model`."""
    from maskml.predict.pipeline import tracker_for

    tracker = tracker_for(model)
    with (autocast or nullcontext)():
        tracker.step(frames[0], mask=object_masks(objects))
        clip = iter(frames[1:] * (runs + 2))
        return median_ms(lambda: (tracker.step(next(clip)), synchronize(device)), runs)


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


@contextmanager
def _scratch():
    with tempfile.TemporaryDirectory(prefix="maskml-bench-") as folder:
        yield Path(folder)


def image_row(row: Row, predictor, images: list[np.ndarray], reference: list[torch.Tensor] | None, runs: int,
              device: str = "cpu", context=nullcontext) -> list[torch.Tensor]:
    """Fill the image columns of `row` with `predictor`; returns its masks (the reference of the other rows)."""
    first = images[0]
    click = clicks(first)[0]
    with context():
        row.encoder_ms = median_ms(lambda: (predictor.set_image(first), synchronize(device)), runs)
        row.decoder_ms = median_ms(lambda: (predictor.predict(**click), synchronize(device)), max(runs, 5))
        masks = [m.cpu() for m in best_masks(predictor, images)]
    if reference is not None:
        ious = [mask_iou(a, b) for a, b in zip(masks, reference)]
        row.iou_mean, row.iou_min = sum(ious) / len(ious), min(ious)
    return masks


def operator_shares(model, predictor, image: np.ndarray) -> dict[str, list[tuple[str, float]]]:
    """Share of each ONNX Runtime graph's kernel time by operator type, from one profiled set_image and one
    click (onnxruntime's profiler on sessions of the same files)."""
    import json

    import onnxruntime

    from maskml.export.runtime import _session_options

    shares = {}
    with _scratch() as scratch:
        for attribute, graph in (("encoder", "encoder"), ("decoder", "decoder_lowres")):
            options = _session_options()
            options.enable_profiling = True
            options.profile_file_prefix = str(scratch / graph)
            plain = getattr(model, attribute)
            profiled = onnxruntime.InferenceSession(str(model.folder / model.manifest["graphs"][graph]["file"]),
                                                    options, providers=model.providers)
            setattr(model, attribute, profiled)
            try:
                predictor.set_image(image)
                predictor.predict(**clicks(image)[0])
            finally:
                setattr(model, attribute, plain)
            by_op: dict[str, float] = {}
            for event in json.loads(Path(profiled.end_profiling()).read_text()):
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    op = event["args"]["op_name"]
                    by_op[op] = by_op.get(op, 0.0) + event["dur"]
            total = sum(by_op.values()) or 1.0
            shares[graph] = [(op, t / total) for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:6]]
    return shares


def bench_model(name: str, checkpoint, images: list[np.ndarray], runs: int, device: str = "cpu",
                calibration=None, video_frames: int = 4, profile: bool = False) -> tuple[list[Row], list[str]]:
    import maskml
    from maskml.zoo import get_entry

    family = get_entry(name).family
    rows, notes = [], []
    clip = synthetic_clip(images[0], video_frames + 1) if family in VIDEO_FAMILIES else None

    def video_cells(row: Row, model, **kwargs) -> None:
        if clip is not None:
            row.frame_ms_1 = frame_ms(family, model, 1, clip, runs, **kwargs)
            row.frame_ms_3 = frame_ms(family, model, 3, clip, runs, **kwargs)

    reference = None
    torch_row = Row(name, PYTORCH)
    with PeakMemory() as memory:
        model = maskml.load_model(name, checkpoint=checkpoint, device=device, progress=False)
        if family in IMAGE_FAMILIES:
            reference = image_row(torch_row, maskml.ImagePredictor(model), images, None, runs, device)
        video_cells(torch_row, model, device=device)
        del model
    torch_row.peak_mb = memory.peak_mb
    rows.append(torch_row)

    if str(device).startswith("cuda"):
        rows += cuda_rows(name, checkpoint, family, images, reference, runs, device, video_cells)

    from maskml.export.exporter import export_model

    variants = [("ORT fp32", None), ("ORT int8", "int8")]
    if calibration and family in IMAGE_FAMILIES:
        variants.append(("ORT int8-static", "int8-static"))
    with _scratch() as scratch:
        for label, quantize in variants:
            folder = export_model(name, scratch / label.replace(" ", "_"), checkpoint, quantize=quantize,
                                  progress=False, calibration=calibration if quantize == "int8-static" else None)
            encoder = folder / ("encoder.onnx" if family in IMAGE_FAMILIES else "image_encoder.onnx")
            row = Row(name, label, encoder_mb=encoder.stat().st_size / 1e6)
            with PeakMemory() as memory:
                model = maskml.load_model(name, checkpoint=folder, backend="onnxruntime")
                predictor = maskml.ImagePredictor(model) if family in IMAGE_FAMILIES else None
                if predictor is not None:
                    image_row(row, predictor, images, reference, runs)
                video_cells(row, model)
            row.peak_mb = memory.peak_mb
            if profile and predictor is not None:
                for graph, shares in operator_shares(model, predictor, images[0]).items():
                    notes.append(f"{name} {label} {graph}.onnx time by operator: " +
                                 ", ".join(f"{op} {share:.0%}" for op, share in shares))
            del model, predictor
            if quantize and row.iou_min is not None and row.iou_min < 0.9:
                row.note = "mask IoU < 0.9: not to be the default"
            rows.append(row)
    return rows, notes


def cuda_rows(name, checkpoint, family, images, reference, runs, device, video_cells) -> list[Row]:
    """bf16 (autocast) and torch.compile (of the image encoder) rows; written for CUDA machines."""
    import maskml

    rows = []
    bf16 = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    for label in ("PyTorch bf16", "PyTorch compile"):
        row = Row(name, label)
        with PeakMemory() as memory:
            if family in IMAGE_FAMILIES:
                model = maskml.load_model(name, checkpoint=checkpoint, device=device, progress=False)
                if label == "PyTorch compile":
                    model.image_encoder = torch.compile(model.image_encoder)
                image_row(row, maskml.ImagePredictor(model), images, reference, runs, device,
                          bf16 if label == "PyTorch bf16" else nullcontext)
                del model
            if label == "PyTorch bf16":
                model = maskml.load_model(name, checkpoint=checkpoint, device=device, progress=False)
                video_cells(row, model, device=device, autocast=bf16)
                del model
        row.peak_mb = memory.peak_mb
        row.note = "GPU memory not counted"
        rows.append(row)
    return rows


def run_bench(models: list[str], checkpoints: dict[str, str], images: list[np.ndarray], runs: int = 3,
              device: str = "cpu", calibration=None, video_frames: int = 4, profile: bool = False,
              clock: str = "wall") -> BenchResult:
    from maskml.zoo import get_entry

    global _clock
    if clock not in CLOCKS:
        raise MaskmlError(f"--clock {clock}: choose {' or '.join(CLOCKS)}")
    if clock == "cpu" and (torch.get_num_threads() != 1 or str(device) != "cpu"):
        raise MaskmlError("--clock cpu measures one CPU thread's work: give --threads 1 (and --device cpu)")
    _clock = CLOCKS[clock]

    for name in models:
        get_entry(name)  # an unknown name fails before any work
    result = BenchResult(machine=f"{machine_line(device)}, times: {clock} clock", weights={})
    for name in models:
        checkpoint = checkpoints.get(name)
        result.weights[name] = "official" if official_weights(name, checkpoint) else \
            f"not the official weights ({Path(checkpoint).name}): times hold, IoU says little about the released model"
        rows, notes = bench_model(name, checkpoint, images, runs, device, calibration, video_frames, profile)
        result.rows += rows
        result.notes += notes
    return result


def machine_line(device: str = "cpu") -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import onnxruntime

        ort = f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        ort = ""
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if str(device).startswith("cuda") else ""
    load = "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"torch {torch.__version__}{ort}, {torch.get_num_threads()} threads, {cpu} ({os.cpu_count()} cores), "
            f"load average {load}{gpu}, Python {sys.version.split()[0]}")


COLUMNS = ("model", "backend", "encoder.onnx MB", "encoder ms", "decoder ms / prompt", "video frame ms, 1 object",
           "video frame ms, 3 objects", "peak RSS MB", "mask IoU vs PyTorch fp32 (mean / min)", "note")


def markdown(result: BenchResult) -> str:
    def cell(value, digits=0) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    torch_encoder = {r.model: r.encoder_ms for r in result.rows if r.backend == PYTORCH}
    lines = [f"maskml bench: {result.machine}"]
    lines += [f"weights of {name}: {weights}" for name, weights in result.weights.items()]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in result.rows:
        encoder = cell(r.encoder_ms)
        base = torch_encoder.get(r.model)
        if r.encoder_ms and base and r.backend != PYTORCH:
            encoder += f" ({base / r.encoder_ms:.2f}x)"
        iou = "-" if r.iou_mean is None else f"{r.iou_mean:.4f} / {r.iou_min:.4f}"
        lines.append("| " + " | ".join([r.model, r.backend, cell(r.encoder_mb, 1), encoder, cell(r.decoder_ms, 1),
                                        cell(r.frame_ms_1), cell(r.frame_ms_3), cell(r.peak_mb), iou,
                                        r.note]) + " |")
    lines += [""] + result.notes if result.notes else []
    return "\n".join(lines)


def read_bench_images(paths: list[str | Path]) -> list[np.ndarray]:
    """The images of --images: files, or folders of jpg / png files."""
    from maskml.io.images import read_image

    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                            and not p.name.startswith("."))
        else:
            files.append(path)
    if not files:
        raise MaskmlError(f"--images {' '.join(map(str, paths))} holds no image (jpg, png)")
    return [read_image(f) for f in files]

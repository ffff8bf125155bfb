"""A long generated video through the whole path (video file -> prompter -> tracker -> output files) keeps
resident memory flat. benchmarks/bench_pipeline.py --stream does the same at 480p over 10,000 frames."""
from __future__ import annotations

import ctypes

import numpy as np
import torch

import maskml
from conftest import FIXTURES, write_parity_checkpoint
from maskml.io.results import ResultWriter
from maskml.io.video import VideoWriter, open_video

FRAMES, H, W = 240, 96, 128


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_in_use_mb() -> float:
    """Bytes malloc has handed out and not got back (glibc). Resident memory alone would hide a leak:
    maskml keeps freed memory for reuse (maskml/runtime.py), and a leak first fills that."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


def moving_disc(i: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    frame = np.full((H, W, 3), 40, np.uint8)
    frame[(xx - 30 - (i % 60)) ** 2 + (yy - 48) ** 2 < 15 ** 2] = (230, 200, 40)
    return frame


def test_resident_memory_stays_flat(tmp_path, sam_checkpoints):
    video = tmp_path / "long.mp4"
    with VideoWriter(video, fps=25, size=(W, H)) as writer:
        for i in range(FRAMES):
            writer.write(moving_disc(i))
    cutie = write_parity_checkpoint(FIXTURES / "cutie" / "manifest_cutie_small.json", tmp_path / "cutie-small-mega.pth")
    pipe = maskml.Pipeline(maskml.VideoTracker(maskml.load_model("cutie_small", checkpoint=cutie)),
                           maskml.load_model("mobile_sam", checkpoint=sam_checkpoints["mobile_sam"]))
    source = open_video(video)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this measures memory, not speed; tiny frames gain nothing from more threads
    rss, heap = [], []
    try:
        with ResultWriter(tmp_path / "out", tmp_path / "probs", tmp_path / "overlay.mp4", object_ids=[1, 2],
                          size=source.size, fps=source.fps, source=source) as results:
            for index, name, frame in source:
                prompts = [maskml.Prompt(1, points=[(30, 48)])] if index == 0 else \
                    [maskml.Prompt(2, box=(0, 0, 40, 30))] if index == 100 else []  # an object added late
                results.write(index, name, frame, pipe.step(frame, prompts))
                if (index + 1) % 20 == 0:
                    rss.append(resident_mb())
                    heap.append(heap_in_use_mb())
    finally:
        torch.set_num_threads(threads)
    assert len(list((tmp_path / "out").iterdir())) == FRAMES and pipe.object_ids == [1, 2]
    settled = slice(len(rss) // 2, None)  # from frame 120 on: both objects tracked, every memory full
    trace = f"every 20 frames, resident {[round(r) for r in rss]} MB, heap in use {[round(h) for h in heap]} MB"
    assert max(rss[settled]) - rss[settled][0] < 12, trace
    assert max(heap[settled]) - heap[settled][0] < 4, trace

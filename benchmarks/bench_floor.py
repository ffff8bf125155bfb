"""How close maskml runs to this machine's arithmetic limit.

    python benchmarks/bench_floor.py                 # every workload
    python benchmarks/bench_floor.py --only cutie    # names containing "cutie"

For each workload the multiply-adds are counted on maskml's own modules (torch's FlopCounterMode:
matrix products, convolutions, and the attention products, which its CPU attention kernel leaves
uncounted), and the step is timed (median). The machine's peak is the best rate (fastest of ten runs) of three large
float32 probes: a oneDNN 3x3 convolution, an MKL matrix product and scaled_dot_product_attention.
"floor" = multiply-adds / peak: no float32 implementation of the same arithmetic runs faster here,
whatever it does about memory traffic and element-wise passes. A speed-up target against another
implementation needs that implementation's time divided by the target to stay above the floor.
"""
from __future__ import annotations

import argparse
import sys

from _common import machine_line, median_ms, square_test_image, times_ms


def _attention_macs(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """2 x multiply-adds (flops) of softmax(q k^T) v, from the shapes FlopCounterMode passes."""
    *batch, lq, e = query
    lk, ev = key[-2], value[-1]
    n = 1
    for d in batch:
        n *= d
    return 2 * n * lq * lk * (e + ev)


def count_gmac(fn) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_macs}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        fn()
    return counter.get_total_flops() / 2e9


def peak_gmac_per_s() -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    x = torch.randn(1, 256, 60, 108).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    q, k, v = torch.randn(1, 1, 4096, 256), torch.randn(1, 1, 8192, 256), torch.randn(1, 1, 8192, 256)
    probes = {"oneDNN 3x3 convolution": (lambda: F.conv2d(x, w, padding=1), 256 * 256 * 9 * 60 * 108),
              "MKL matrix product": (lambda: a @ b, 2048 ** 3),
              "attention (SDPA)": (lambda: F.scaled_dot_product_attention(q, k, v), 4096 * 8192 * 512)}
    # the fastest run: a peak is what the machine can do, not what it usually does
    return {name: macs / min(times_ms(fn, 10)) / 1e6 for name, (fn, macs) in probes.items()}


def sam_decoder():
    import numpy as np
    import maskml

    predictor = maskml.ImagePredictor(maskml.build_model("mobile_sam"))
    predictor.set_image(square_test_image())
    point, label = np.array([[512.0, 400.0]]), np.array([1])
    return "mobile_sam predict, 1 click", lambda: predictor.predict(points=point, labels=label), 25


def cutie_frame(name: str, objects: int):
    from bench_cutie import first_mask, load_frames

    import maskml

    frames = load_frames()
    tracker = maskml.VideoTracker(maskml.build_model(name))
    tracker.step(frames[0], first_mask(frames[0].shape[:2], objects))
    for i in range(1, 6):
        tracker.step(frames[i % len(frames)])
    frame = frames[6 % len(frames)]
    # mem_every=5 made frame 5 a memory frame and will make frame 10 one: the counted step (6), the
    # warm-up (7) and the two timed steps (8, 9) are ordinary frames
    return f"{name} frame, {objects} object{'s' * (objects > 1)}", lambda: tracker.step(frame), 2


def sam2_encoder():
    import torch
    import maskml

    model = maskml.build_model("sam2.1_hiera_t")
    x = torch.randn(1, 3, 1024, 1024)
    return "sam2.1_hiera_t image encoder (1024)", lambda: model.image_encoder(x), 3


def sam2_memory_attention():
    import torch
    import maskml

    model = maskml.build_model("sam2.1_hiera_t")
    x, pos = torch.randn(1, 4096, 256), torch.randn(1, 4096, 256)
    pointers = 16 * 4  # 16 object pointers of 256 channels, split into 4 tokens of 64
    memory, memory_pos = torch.randn(1, 7 * 4096 + pointers, 64), torch.randn(1, 7 * 4096 + pointers, 64)
    return ("sam2.1_hiera_t memory attention, full bank (7 frames + 16 pointers)",
            lambda: model.memory_attention(x, pos, memory, memory_pos, pointers), 3)


WORKLOADS = {"mobile_sam": sam_decoder,
             **{f"{name} {objects}": lambda name=name, objects=objects: cutie_frame(name, objects)
                for name in ("cutie_small", "cutie_base") for objects in (1, 3)},
             "sam2 encoder": sam2_encoder, "sam2 memory attention": sam2_memory_attention}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the workloads whose name contains this")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from maskml.runtime import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(0)
    chosen = [make for name, make in WORKLOADS.items() if args.only in name]
    if not chosen:
        sys.exit(f"bench_floor: no workload matches --only {args.only!r}; names: {', '.join(WORKLOADS)}")
    with torch.inference_mode():
        peaks = peak_gmac_per_s()
        peak = max(peaks.values())
        print(machine_line(args.threads))
        print("peak probes: " + ", ".join(f"{k} {v:.0f} GMAC/s" for k, v in peaks.items()))
        print("| workload | GMAC | maskml (ms) | maskml GMAC/s | floor at peak (ms) | maskml / floor |")
        print("|---|---|---|---|---|---|")
        for make in chosen:
            label, step, runs = make()
            gmac = count_gmac(step)
            ms = median_ms(step, runs)
            floor = 1000 * gmac / peak
            print(f"| {label} | {gmac:.2f} | {ms:.1f} | {gmac / ms * 1000:.0f} | {floor:.1f} | {ms / floor:.2f}x |",
                  flush=True)
            if ms < floor:
                print(f"({label} ran faster than the probes: this run underestimated the peak, which drifts with "
                      "the machine; rerun, or read the floors as too high)", file=sys.stderr)


if __name__ == "__main__":
    main()

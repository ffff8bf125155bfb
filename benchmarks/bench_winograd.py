"""3x3 convolutions: oneDNN's direct convolution (F.conv2d) against maskml's Winograd F(2x2, 3x3), per shape.

    python benchmarks/bench_winograd.py

The shapes are those of maskml's models at their default sizes (Cutie at 480p: stride 16 is 30 x 54; SAM's
neck at 64 x 64, which keeps oneDNN: ~4 ms of a 1.2 s MobileSAM encoder did not pay for ~60 MB of transient
buffers) plus some where Winograd is not used. Times: median of --runs calls, interleaved; errors:
max |output - float64 convolution|, for weights scaled as trained ones are (std 1 / sqrt(fan-in)).
"used" says whether maskml.models.winograd.applies picks Winograd for that shape.
"""
from __future__ import annotations

import argparse
import statistics

from _common import machine_line, times_ms

SHAPES = [  # batch, in, out, height, width, where
    (1, 256, 256, 30, 54, "Cutie stride 16: trunk, fusers, object transformer"),
    (3, 256, 256, 30, 54, "the same, 3 objects"),
    (1, 512, 768, 30, 54, "Cutie sensory update"),
    (3, 512, 768, 30, 54, "the same, 3 objects"),
    (1, 256, 256, 64, 64, "the largest map it takes (SAM's neck, which keeps oneDNN)"),
    (1, 256, 64, 30, 54, "Cutie key projection (not used: few outputs)"),
    (1, 128, 128, 60, 108, "ResNet stride 8 (not used: few channels)"),
    (1, 128, 128, 120, 216, "Cutie decoder stride 4 (not used: large map)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from maskml.models import winograd
    from maskml.runtime import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(0)
    print(machine_line(args.threads))
    print("| shape (N, C_in -> C_out, H x W) | where | oneDNN (ms) | Winograd (ms) | speed-up | oneDNN error "
          "| Winograd error | used |")
    print("|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for n, c, k, h, w, where in SHAPES:
            x = torch.randn(n, c, h, w)
            weight, bias = torch.randn(k, c, 3, 3) / (9 * c) ** 0.5, torch.randn(k) * 0.1
            transformed = winograd.transform_weight(weight)
            direct = lambda: F.conv2d(x, weight, bias, padding=1)  # noqa: E731
            fast = lambda: winograd.conv3x3(x, transformed, bias)  # noqa: E731
            ours, theirs = [], []
            for _ in range(3):  # interleaved: the machine's drift hits both alike
                theirs += times_ms(direct, args.runs // 3 + 1)
                ours += times_ms(fast, args.runs // 3 + 1)
            exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
            err_direct = float((direct().double() - exact).abs().max())
            err_fast = float((fast().double() - exact).abs().max())
            t_direct, t_fast = statistics.median(theirs), statistics.median(ours)
            used = winograd.applies(x, weight, (1, 1), (1, 1), (1, 1), 1)
            print(f"| {n}, {c} -> {k}, {h} x {w} | {where} | {t_direct:.1f} | {t_fast:.1f} | {t_direct / t_fast:.2f}x "
                  f"| {err_direct:.1e} | {err_fast:.1e} | {'yes' if used else 'no'} |", flush=True)


if __name__ == "__main__":
    main()

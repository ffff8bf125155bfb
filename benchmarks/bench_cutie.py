"""Speed and memory of Cutie video tracking on this machine.

    python benchmarks/bench_cutie.py                              # maskml: frames/s, 1 and 3 objects
    python benchmarks/bench_cutie.py --official-src /tmp/ref      # also the official code, side by side
    python benchmarks/bench_cutie.py --stream 1000                # resident memory over a long stream

Frames are examples/judo (854x480), repeated; objects are discs placed on the first frame. Both
implementations get the same random weights (timing does not depend on their values) and their
outputs are compared. --official-src is a folder holding a checkout of hkchengrex/Cutie (as
`hkchengrex+Cutie` or `Cutie`); it needs hydra-core and omegaconf. Its ResNets are built with
pretrained=False (the checkpoint overwrites those weights; the constructor would download them).
Each (model, implementation, objects) runs in its own process, with 2 threads.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _common import ROOT, find_checkout, machine_line, peak_rss_mb, run_worker

FRAMES = ROOT / "examples" / "judo"


def load_frames():
    import numpy as np
    from PIL import Image

    return [np.array(Image.open(p).convert("RGB")) for p in sorted(FRAMES.glob("*.jpg"))]


def first_mask(shape, objects: int):
    import numpy as np

    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for i in range(objects):
        cx, cy = w * (i + 1) / (objects + 1), h / 2
        mask[(xx - cx) ** 2 + (yy - cy) ** 2 < (h / 8) ** 2] = i + 1
    return mask


def official_processor(name: str, src: Path, state_dict):
    root = find_checkout(src, ("hkchengrex+Cutie", "Cutie"), "cutie")
    sys.path.insert(0, str(root))
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import cutie.model.utils.resnet as resnet
    for fn in ("resnet18", "resnet50"):
        original = getattr(resnet, fn)
        setattr(resnet, fn, lambda pretrained=True, _f=original, **kw: _f(pretrained=False, **kw))
    from cutie.inference.inference_core import InferenceCore
    from cutie.inference.utils.args_utils import get_dataset_cfg
    from cutie.model.cutie import CUTIE

    with initialize_config_dir(version_base="1.3.2", config_dir=str(root / "cutie" / "config")):
        cfg = compose(config_name="eval_config", overrides=[f"model={name.split('_')[1]}"])
    with open_dict(cfg):
        cfg["weights"] = "unused"
    get_dataset_cfg(cfg)
    network = CUTIE(cfg).eval()
    network.load_weights(dict(state_dict))
    processor = InferenceCore(network, cfg=cfg)
    processor.max_internal_size = 480
    return processor


def worker(name: str, impl: str, objects: int, frames_to_run: int, official_src: str | None, stream: bool):
    import torch

    import maskml

    torch.manual_seed(0)
    frames = load_frames()
    mask = first_mask(frames[0].shape[:2], objects)
    model = maskml.build_model(name)
    timings, rss = [], []
    with torch.inference_mode():
        if impl == "maskml":
            tracker = maskml.VideoTracker(model)
            step = lambda i, f, m: tracker.step(f, m).labels  # noqa: E731
        else:
            processor = official_processor(name, Path(official_src), model.state_dict())

            def step(i, f, m):
                image = torch.from_numpy(f).permute(2, 0, 1).float() / 255
                if m is None:
                    prob = processor.step(image)
                else:
                    prob = processor.step(image, torch.from_numpy(m), objects=list(range(1, objects + 1)))
                return processor.output_prob_to_mask(prob)
        label_sums = []  # a checksum of the first label maps, to compare implementations
        for i in range(frames_to_run):
            start = time.perf_counter()
            labels = step(i, frames[i % len(frames)], mask if i == 0 else None)
            timings.append(time.perf_counter() - start)
            if i < 8:
                label_sums.append(int(labels.sum()))
            if stream and (i + 1) % 100 == 0:
                rss.append(round(peak_rss_mb()))
    steady = timings[1:]
    result = {"model": name, "impl": impl, "objects": objects, "fps": 1 / statistics.median(steady),
              "peak_rss_mb": peak_rss_mb(),
              "labels_sum": label_sums}
    if stream:
        result["rss_every_100"] = rss
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cutie_small", "cutie_base"])
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 3])
    parser.add_argument("--frames", type=int, default=12, help="frames per timing run (median of all but the first)")
    parser.add_argument("--stream", type=int, default=0, help="also run cutie_small for this many frames, reporting "
                                                              "resident memory every 100 frames")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="run every configuration this many times, "
                                                              "interleaved, and keep the fastest (shared machines)")
    parser.add_argument("--official-src")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        name, impl, objects = args.worker
        print(json.dumps(worker(name, impl, int(objects), args.frames, args.official_src, bool(args.stream))))
        return

    print(f"{machine_line(args.threads)}; 854x480 frames (max_internal_size 480); frames/s = "
          f"1 / median step time over {args.frames - 1} frames after the first (mask) frame")
    best = {}
    impls = ["maskml"] + (["official"] if args.official_src else [])
    for _ in range(args.repeat):
        for name in args.models:
            for objects in args.objects:
                for impl in impls:
                    cmd = [sys.executable, __file__, "--worker", name, impl, str(objects), "--frames",
                           str(args.frames), "--threads", str(args.threads)]
                    cmd += ["--official-src", args.official_src] if args.official_src else []
                    row = run_worker(cmd, f"{name}/{impl}/{objects}")
                    key = (name, objects, impl)
                    if key not in best or row["fps"] > best[key]["fps"]:
                        best[key] = row
    rows = list(best.values())
    print("| model | objects | implementation | frames/s | peak RSS (MB) | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ref = next((o for o in rows if o["impl"] == "official" and o["model"] == r["model"]
                    and o["objects"] == r["objects"]), None)
        speedup = f"{r['fps'] / ref['fps']:.2f}x" if ref and r["impl"] == "maskml" else ""
        print(f"| {r['model']} | {r['objects']} | {r['impl']} | {r['fps']:.2f} | {r['peak_rss_mb']:.0f} | {speedup} |")
    for r in rows:
        ref = next((o for o in rows if o["impl"] == "official" and o["model"] == r["model"]
                    and o["objects"] == r["objects"]), None)
        if ref and r["impl"] == "maskml":
            same = r["labels_sum"] == ref["labels_sum"]
            print(f"{r['model']}, {r['objects']} objects: label maps of the first 8 frames "
                  f"{'identical' if same else 'differ'} (foreground pixel sums {r['labels_sum']})")
    if args.stream:
        cmd = [sys.executable, __file__, "--worker", "cutie_small", "maskml", "1", "--frames", str(args.stream),
               "--stream", "1", "--threads", str(args.threads)]
        r = run_worker(cmd, "cutie_small stream")
        print(f"\ncutie_small, 1 object, {args.stream} frames: peak resident memory (MB) after every 100 frames: "
              f"{r['rss_every_100']}")


if __name__ == "__main__":
    main()

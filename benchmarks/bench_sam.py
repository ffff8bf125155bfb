"""Speed of SAM / MobileSAM image segmentation: encoder (set_image) and per-prompt latency.

    python benchmarks/bench_sam.py                          # maskml only
    python benchmarks/bench_sam.py --official-src /tmp/ref  # also the official code, side by side

--official-src is a folder holding checkouts of facebookresearch/segment-anything and
ChaoningZhang/MobileSAM (as `facebookresearch+segment-anything`, `ChaoningZhang+MobileSAM` or
`segment-anything`, `MobileSAM`); they import torchvision (and timm for MobileSAM), so run that
variant in an environment that has them. Both implementations get the same random weights (timing
does not depend on their values) and the outputs are compared. Each (model, implementation) runs in
its own process so peak memory is its own. Medians over --runs runs after one warm-up.

maskml keeps freed CPU memory for reuse (maskml/runtime.py); the row "official+malloc" runs the
official code with the same allocator setting (through glibc's environment variables), so the
table separates that gain from the implementation's own.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from _common import KEEP_FREED_MEMORY_ENV, find_checkout, machine_line, median_ms, peak_rss_mb, run_worker, square_test_image

OFFICIAL_DIRS = {"sam": ("facebookresearch+segment-anything", "segment-anything"),
                 "mobile_sam": ("ChaoningZhang+MobileSAM", "MobileSAM")}
OFFICIAL_BUILDERS = {"mobile_sam": "build_sam_vit_t", "sam_vit_b": "build_sam_vit_b", "sam_vit_l": "build_sam_vit_l",
                     "sam_vit_h": "build_sam_vit_h"}


BATCH = 64  # the official automatic mask generator's default points_per_batch (maskml's is 16)


def grid_points(dtype):
    """BATCH single clicks (as the automatic generator decodes them) in the 1024 input frame: (BATCH, 1, 2)."""
    import torch

    side = torch.linspace(64, 960, 8, dtype=dtype)
    return torch.cartesian_prod(side, side).view(BATCH, 1, 2)


def official_model(name: str, src: Path):
    package = "mobile_sam" if name == "mobile_sam" else "segment_anything"
    root = find_checkout(src, OFFICIAL_DIRS["mobile_sam" if name == "mobile_sam" else "sam"], package)
    sys.path.insert(0, str(root))
    module = __import__(package)
    model = getattr(module, OFFICIAL_BUILDERS[name])()
    return module, model


def worker(name: str, impl: str, runs: int, official_src: str | None, compare: bool) -> dict:
    import numpy as np
    import torch

    import maskml

    torch.manual_seed(0)
    image = square_test_image()
    point = np.array([[512.0, 400.0]])
    label = np.array([1])
    ours = maskml.build_model(name)
    result = {"model": name, "impl": impl}
    with torch.inference_mode():
        if impl == "maskml":
            predictor = maskml.ImagePredictor(ours)
            result["set_image_ms"] = median_ms(lambda: predictor.set_image(image), runs)
            result["predict_ms"] = median_ms(lambda: predictor.predict(points=point, labels=label), 5 * runs)
            state = predictor._state
            coords = predictor.backend.to_input_frame(torch.from_numpy(point), state).float()[None]
            prompt = (coords, torch.ones(1, 1, dtype=torch.int32))
            result["decoder_ms"] = median_ms(lambda: predictor.backend.decode(state, prompt, None, None, False), 5 * runs)
            result["peak_rss_mb"] = peak_rss_mb()  # of one image and single prompts, before the batch below
            batch = (grid_points(coords.dtype), torch.ones(BATCH, 1, dtype=torch.int32))
            result["batch_ms"] = median_ms(lambda: predictor.backend.decode(state, batch, None, None, True), runs) / BATCH
        else:  # "official" or "official+malloc"
            module, official = official_model(name, Path(official_src))
            missing, unexpected = official.load_state_dict(ours.state_dict(), strict=False)
            assert all(k.startswith("image_encoder.") and ("head" in k) for k in missing), missing
            assert not unexpected, unexpected
            official.eval()  # rebuilds TinyViT's cached attention biases from the loaded ones
            predictor = module.SamPredictor(official)
            result["set_image_ms"] = median_ms(lambda: predictor.set_image(image), runs)
            result["predict_ms"] = median_ms(
                lambda: predictor.predict(point_coords=point, point_labels=label, multimask_output=False), 5 * runs)
            coords = torch.as_tensor(predictor.transform.apply_coords(point, predictor.original_size)).float()[None]
            labels_t = torch.ones(1, 1, dtype=torch.int)

            def decode():
                sparse, dense = official.prompt_encoder(points=(coords, labels_t), boxes=None, masks=None)
                official.mask_decoder(predictor.features, official.prompt_encoder.get_dense_pe(), sparse, dense, False)

            result["decoder_ms"] = median_ms(decode, 5 * runs)
            batch = (grid_points(coords.dtype), torch.ones(BATCH, 1, dtype=torch.int))

            def decode_batch():
                sparse, dense = official.prompt_encoder(points=batch, boxes=None, masks=None)
                official.mask_decoder(predictor.features, official.prompt_encoder.get_dense_pe(), sparse, dense, True)

            result["peak_rss_mb"] = peak_rss_mb()  # before the batch, and the comparison building maskml's predictor
            result["batch_ms"] = median_ms(decode_batch, runs) / BATCH
            if compare:
                ours_predictor = maskml.ImagePredictor(ours)
                ours_predictor.set_image(image)
                a = ours_predictor.get_image_embedding()
                result["embedding_max_abs_diff"] = float((a - predictor.features).abs().max())
                mine = ours_predictor.predict(points=point, labels=label).logits
                theirs = torch.as_tensor(predictor.predict(point, label, multimask_output=False, return_logits=True)[0])
                result["logits_max_abs_diff"] = float((mine - theirs).abs().max())
    result.setdefault("peak_rss_mb", peak_rss_mb())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobile_sam", "sam_vit_b"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official-src", help="folder with the official checkouts, to time them side by side")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(worker(*args.worker, args.runs, args.official_src, compare=True)))
        return

    print(f"{machine_line(args.threads)}; "
          f"1024x1024 image, median of {args.runs} runs (predict/decoder: {5 * args.runs})")
    rows = []
    impls = ["maskml"] + (["official", "official+malloc"] if args.official_src else [])
    for name in args.models:
        for impl in impls:
            cmd = [sys.executable, __file__, "--worker", name, impl, "--runs", str(args.runs),
                   "--threads", str(args.threads)] + (["--official-src", args.official_src] if args.official_src else [])
            env = dict(os.environ, **(KEEP_FREED_MEMORY_ENV if impl == "official+malloc" else {}))
            rows.append(run_worker(cmd, f"{name}/{impl}", env))
    header = ("| model | implementation | set_image (ms) | predict (ms) | decoder (ms) "
              f"| decoder, {BATCH} clicks (ms per click) | peak RSS (MB) | encoder speed-up vs official | vs official+malloc |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    official = {r["model"]: r for r in rows if r["impl"] == "official"}
    official_malloc = {r["model"]: r for r in rows if r["impl"] == "official+malloc"}
    for r in rows:
        speedups = []
        for ref in (official.get(r["model"]), official_malloc.get(r["model"])):
            speedups.append(f"{ref['set_image_ms'] / r['set_image_ms']:.2f}x" if ref and r["impl"] == "maskml" else "")
        print(f"| {r['model']} | {r['impl']} | {r['set_image_ms']:.0f} | {r['predict_ms']:.1f} | {r['decoder_ms']:.1f} "
              f"| {r['batch_ms']:.1f} | {r['peak_rss_mb']:.0f} | {speedups[0]} | {speedups[1]} |")
    for r in rows:
        if "embedding_max_abs_diff" in r and r["impl"] == "official":
            print(f"{r['model']}: maskml vs official, same weights: embedding max |diff| "
                  f"{r['embedding_max_abs_diff']:.2e}, logits max |diff| {r['logits_max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()

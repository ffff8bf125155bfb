"""Peak memory and time of the automatic mask generator ("segment everything") on an 1800 x 1200 image.

    python benchmarks/bench_automatic.py                              # this checkout
    python benchmarks/bench_automatic.py --baseline-src /tmp/before   # also an earlier checkout, side by side

MobileSAM gets the parity weights of the tests (tests/fixtures/sam/manifest_vit_t.json), as no
checkpoint can be downloaded here; time and memory do not depend on the weights' values, but how many
masks pass the filters does, so two option sets are run:
  default   the generator's defaults (32 x 32 points, pred_iou_thresh 0.88, ...)
  keep-all  every mask passes the IoU and stability filters (both thresholds 0): the most masks to carry
            to the final NMS
--baseline-src is another checkout of maskml (e.g. `git worktree add /tmp/before main`); the table
then says whether both gave identical records (a hash over every field of every record).
Each (checkout, options) pair runs in its own process, so its peak resident memory is its own.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine_line, peak_rss_mb, run_worker

OPTIONS = {"default": {}, "keep-all": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}}


def records_digest(records: list[dict]) -> str:
    """One hash over all records, segmentations as uncompressed RLE so any changed pixel shows."""
    import torch

    from maskml.io.rle import encode_rle

    digest = hashlib.sha256()
    for record in records:
        fields = dict(record, segmentation=encode_rle(torch.from_numpy(record["segmentation"]))[0])
        digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def worker(src: str, preset: str, threads: int) -> dict:
    sys.path.insert(0, src)  # before this checkout, which _common put first
    import numpy as np
    import torch
    from PIL import Image

    import maskml

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_parity_checkpoint

    torch.set_num_threads(threads)  # after conftest, which sets the tests' 2

    image = np.array(Image.open(ROOT / "examples" / "truck.jpg").convert("RGB"))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_parity_checkpoint(ROOT / "tests" / "fixtures" / "sam" / "manifest_vit_t.json",
                                             Path(tmp) / "mobile_sam.pt")
        model = maskml.load_model("mobile_sam", checkpoint=checkpoint)
    generator = maskml.AutomaticMaskGenerator(model, **OPTIONS[preset])
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    records = generator.generate(image)
    seconds = time.perf_counter() - start
    return {"maskml": str(Path(maskml.__file__).parents[1]), "options": preset, "image": list(image.shape[:2]),
            "masks": len(records), "seconds": round(seconds, 1), "peak_rss_mb": round(peak_rss_mb()),
            "peak_rss_before_generate_mb": round(rss_before), "digest": records_digest(records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", help="another maskml checkout to run side by side")
    parser.add_argument("--options", choices=list(OPTIONS), nargs="+", default=list(OPTIONS))
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--worker", nargs=2, metavar=("SRC", "OPTIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.threads)))
        return
    print(machine_line(args.threads))
    sources = [("this checkout", str(ROOT))]
    if args.baseline_src:
        sources.insert(0, ("baseline", str(Path(args.baseline_src).resolve())))
    print("| maskml | options | masks | time s | peak RSS MB (after loading the model) | records digest |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for preset in args.options:
        digests = set()
        for label, src in sources:
            r = run_worker([sys.executable, __file__, "--worker", src, preset, "--threads", str(args.threads)],
                           f"{label} ({preset})")
            digests.add(r["digest"])
            print(f"| {label} | {preset} | {r['masks']} | {r['seconds']} | {r['peak_rss_mb']} "
                  f"({r['peak_rss_before_generate_mb']}) | {r['digest']} |", flush=True)
        if len(sources) > 1:
            print(f"identical records ({preset}): {'yes' if len(digests) == 1 else 'NO'}")


if __name__ == "__main__":
    main()

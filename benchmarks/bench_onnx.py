"""`maskml bench` where the official weights are not in the cache: the tests' deterministic stand-in
weights (tests/weights.py) are written for each such model and given as its --checkpoint, so the table
can be taken on a machine without the released files (times hold; the IoU figures then say little
about the released models, and the table's header says so). Every other argument is maskml bench's.

    python benchmarks/bench_onnx.py --models mobile_sam,sam_vit_b,sam2.1_hiera_t --runs 3 --threads 2
    python benchmarks/bench_onnx.py --models mobile_sam --profile --calibration ../shared/data/images
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import ROOT

sys.path.insert(0, str(ROOT / "tests"))
FIXTURES = ROOT / "tests" / "fixtures"
STAND_IN_MANIFESTS = {  # model -> (key manifest of the parity fixtures, the official file's wrapping key)
    "mobile_sam": ("sam/manifest_vit_t.json", None), "sam_vit_b": ("sam/manifest_vit_b.json", None),
    "sam2.1_hiera_t": ("sam2/manifest_sam2.1_hiera_tiny.json", "model"),
    "cutie_small": ("cutie/manifest_cutie_small.json", None),
}


def main() -> int:
    from conftest import write_parity_checkpoint
    from maskml.cli import main as maskml_main
    from maskml.hub import cache_dir
    from maskml.zoo import get_entry

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--models", default="mobile_sam")
    parser.add_argument("--checkpoint", action="append", default=[])
    known, rest = parser.parse_known_args()
    models = [m.strip() for m in known.models.split(",") if m.strip()]
    given = {value.split("=", 1)[0] for value in known.checkpoint}
    with tempfile.TemporaryDirectory() as scratch:
        checkpoints = list(known.checkpoint)
        for name in models:
            if name in given or (cache_dir() / get_entry(name).filename).is_file():
                continue
            if name not in STAND_IN_MANIFESTS:
                raise SystemExit(f"{name}: no official file in the cache and no stand-in weights; give "
                                 f"--checkpoint {name}=PATH")
            manifest, key = STAND_IN_MANIFESTS[name]
            path = write_parity_checkpoint(FIXTURES / manifest, Path(scratch) / get_entry(name).filename, wrap_key=key)
            checkpoints.append(f"{name}={path}")
        return maskml_main(["bench", "--models", ",".join(models),
                            *[arg for value in checkpoints for arg in ("--checkpoint", value)], *rest])


if __name__ == "__main__":
    sys.exit(main())

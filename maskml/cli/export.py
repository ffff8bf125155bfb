"""`maskml export`: ONNX graphs of a model, for ONNX Runtime (`--backend onnxruntime`) or any deployment."""
from __future__ import annotations

import argparse

EPILOG = """examples:
  maskml export mobile_sam --out mobile_sam_onnx
  maskml export mobile_sam --out mobile_sam_int8 --quantize int8
  maskml export mobile_sam --out mobile_sam_qdq --quantize int8-static --calibration examples/
  maskml export sam2.1_hiera_t --checkpoint sam2.1_hiera_tiny.pt --out sam2_onnx --opset 17
  maskml export cutie_small --out cutie_onnx
then:
  maskml segment truck.jpg --model mobile_sam --checkpoint mobile_sam_onnx --backend onnxruntime --point 500,375 \\
      --out mask.png
  maskml track video.mp4 --model cutie_small --checkpoint cutie_onnx --backend onnxruntime --mask-dir first_masks/ \
      --out masks/

Cutie (cutie_small, cutie_base) is exported as its per-frame step: image_encoder, mask_encoder,
memory_readout (a memory of any length), object_transformer and mask_decoder graphs; its memories
stay in maskml's Python tracker, the same for both backends.
"""


def register(subparsers) -> None:
    from maskml.export import DEFAULT_OPSET, QUANTIZATIONS

    p = subparsers.add_parser("export", help="export a model's graphs to ONNX (for ONNX Runtime or deployment)",
                              description="Write the model's graphs (image models: encoder and prompt decoder; "
                                          "SAM 2 also its video graphs; Cutie: its per-frame step) and a manifest.json (model, maskml version, "
                                          "opset, input conventions, SHA-256 of every file) into a folder. Needs the "
                                          "[onnx] extra: pip install maskml[onnx].",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model name: sam_vit_b/l/h, mobile_sam, sam2*/sam2.1* (image and video), cutie_small, "
                                 "cutie_base")
    p.add_argument("--checkpoint", help="checkpoint file (default: the official file from the cache, downloaded once)")
    p.add_argument("--out", required=True, help="folder for the graphs: new, empty, or an earlier export of this model")
    p.add_argument("--quantize", choices=QUANTIZATIONS,
                   help="int8: the encoder's (Cutie: the object transformer's) matrix products with int8 weights (onnxruntime dynamic quantization, "
                        "the faster on CPUs); int8-static: QDQ quantization of the encoder's matrix products and "
                        "convolutions with activation ranges measured on --calibration images (for providers "
                        "that run QDQ graphs as int8, e.g. TensorRT)")
    p.add_argument("--calibration", metavar="DIR",
                   help="with --quantize int8-static: a folder of a few typical images (jpg, png)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.set_defaults(func=run)


def run(args) -> None:
    from maskml.export import MANIFEST
    from maskml.export.exporter import export_model
    from maskml.io.outputs import check_outputs

    check_outputs({"--checkpoint": args.checkpoint, "--calibration": args.calibration},
                  folders={"--out": args.out})  # before the model loads
    out = export_model(args.model, args.out, checkpoint=args.checkpoint, quantize=args.quantize, opset=args.opset,
                       calibration=args.calibration)
    print(f"{args.model} -> {out}/ ({', '.join(sorted(p.name for p in out.iterdir() if p.name != MANIFEST))}, "
          f"{MANIFEST})")

"""Deployment: `maskml export` writes ONNX graphs of a model (maskml.export.exporter); the ONNX Runtime
backend runs them behind maskml's predictors (maskml.export.runtime). Both need the [onnx] extra."""
from __future__ import annotations

import importlib

from maskml.errors import MaskmlError

MANIFEST = "manifest.json"
DEFAULT_OPSET = 17
OPSETS = range(14, 21)  # the graphs' operators need >= 14; the TorchScript exporter stops at 20
QUANTIZATIONS = ("int8", "int8-static")
FORMAT = "maskml-onnx"
# bumped whenever the graphs of an export change within one maskml version (2: decoder_lowres, Cutie)
FORMAT_VERSION = 2


def require_onnx(*modules: str) -> None:
    """Import check for the optional [onnx] extra, with the one command that fixes it."""
    for module in modules or ("onnx", "onnxruntime"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise MaskmlError(f"ONNX export and the onnxruntime backend need the {module} package: "
                              f"pip install maskml[onnx]") from None


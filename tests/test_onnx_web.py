"""The exported prompt decoder in onnxruntime-web (WebAssembly backend, run by Node as a browser page
would run it) against onnxruntime in Python on the same inputs: the graph a web app runs clicks with.
`make test` installs the pinned onnxruntime-web into build/onnxruntime-web (target onnx-web-deps)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import maskml
from maskml.export.exporter import export_decoder

ROOT = Path(__file__).resolve().parents[1]
ORT_WEB = ROOT / "build" / "onnxruntime-web"
RUNNER = ROOT / "tests" / "onnx_web" / "run_graph.cjs"


def run_in_onnxruntime_web(graph: Path, feeds: dict[str, np.ndarray], folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir()
    specs = {}
    for name, value in feeds.items():
        value.tofile(folder / f"{name}.bin")  # little-endian on every machine maskml runs on
        specs[name] = {"type": "int64" if value.dtype == np.int64 else "float32", "dims": list(value.shape)}
    (folder / "inputs.json").write_text(json.dumps(specs))
    node = subprocess.run(["node", str(RUNNER), str(ORT_WEB), str(graph), str(folder)], capture_output=True,
                          text=True, timeout=300)
    assert node.returncode == 0, node.stderr
    outputs = json.loads((folder / "outputs.json").read_text())
    return {name: np.fromfile(folder / f"out_{name}.bin", np.float32).reshape(spec["dims"])
            for name, spec in outputs.items()}


@pytest.mark.parametrize("labels", [[1.0, -1.0], [2.0, 3.0, 0.0]], ids=["click", "box and click"])
def test_decoder_runs_in_onnxruntime_web(labels, sam_checkpoints, tmp_path):
    """MobileSAM's decoder.onnx; SAM's (sam_vit_*) is the same graph with other weights."""
    import onnxruntime

    assert shutil.which("node") and (ORT_WEB / "node_modules" / "onnxruntime-web").is_dir(), \
        f"the browser test needs Node.js and onnxruntime-web in {ORT_WEB}: `make test` (target onnx-web-deps) " \
        f"installs it"
    model = maskml.load_model("mobile_sam", checkpoint=sam_checkpoints["mobile_sam"])
    export_decoder(model, "sam", tmp_path, opset=17)
    graph = tmp_path / "decoder.onnx"
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 1024, (1, len(labels), 2)).astype(np.float32)
    feeds = {"image_embeddings": rng.standard_normal((1, 256, 64, 64), np.float32),
             "point_coords": coords, "point_labels": np.array([labels], np.float32),
             "mask_input": rng.standard_normal((1, 1, 256, 256), np.float32),
             "has_mask_input": np.ones(1, np.float32), "orig_im_size": np.array([480, 640], np.int64)}
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    got = run_in_onnxruntime_web(graph, feeds, tmp_path / "web")
    assert set(got) == set(want) == {"masks", "iou_predictions", "low_res_masks"}
    assert got["masks"].shape == (1, 4, 480, 640)
    for name in want:
        error = np.abs(got[name] - want[name]).max()
        assert error <= 1e-3, f"{name}: onnxruntime-web differs by {error:.2e}"

"""ONNX export and the ONNX Runtime backend against maskml's PyTorch outputs, with the parity weights:
low-res logits within 1e-3 and masks IoU >= 0.998 through the same ImagePredictor, for mobile_sam and
sam2.1_hiera_t (encoder and decoder graphs) and sam_vit_b (decoder graph only: tracing and running its
360 MB encoder would take most of this file's time budget; its encoder is the ViT the SAM tests cover).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import maskml
from conftest import FIXTURES
from maskml.cli import main
from maskml.errors import MaskmlError
from maskml.export import MANIFEST
from maskml.export.exporter import export_decoder, export_model
from maskml.export.runtime import OnnxImageModel, _session

TRUCK = FIXTURES / "sam" / "truck_1200x800.png"
PROMPTS = {  # in pixels of the 1200 x 800 truck; "mask": the first low-res logits of the prompt (or of the
    # first prompt, for a mask alone) as mask input
    "1 point": dict(points=[[500.0, 375.0]], labels=[1]),
    "1 point + mask": dict(points=[[500.0, 375.0]], labels=[1], mask=True),
    "3 points, multimask": dict(points=[[500.0, 375.0], [300.0, 300.0], [900.0, 500.0]], labels=[1, 0, 1],
                                multimask=True),
    "box": dict(box=[75.0, 275.0, 1125.0, 750.0]),
    "box and point + mask": dict(box=[75.0, 275.0, 1125.0, 750.0], points=[[575.0, 550.0]], labels=[0], mask=True),
    "mask only": dict(mask=True),
    "2 boxes, multimask": dict(boxes=[[75.0, 275.0, 1125.0, 750.0], [400.0, 200.0, 700.0, 500.0]], multimask=True),
}


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def assert_same_predictions(torch_predictor, onnx_predictor):
    for case, prompt in PROMPTS.items():
        prompt = dict(prompt)
        if prompt.pop("mask", False):
            low_res = torch_predictor.predict(**(prompt or PROMPTS["1 point"])).low_res_logits
            prompt = dict(prompt, mask_input=low_res.reshape(-1, *low_res.shape[-3:])[0, :1])
        want = torch_predictor.predict(**prompt)
        got = onnx_predictor.predict(**prompt)
        assert got.low_res_logits.shape == want.low_res_logits.shape, case
        error = (got.low_res_logits - want.low_res_logits).abs().max().item()
        assert error <= 1e-3, f"{case}: low-res logits differ by {error:.2e}"
        torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=0, msg=case)
        iou = mask_iou(got.masks, want.masks)
        assert iou >= 0.998, f"{case}: mask IoU {iou:.5f}"


@pytest.fixture(scope="module")
def truck():
    from maskml.io.images import read_image

    return read_image(TRUCK)


@pytest.fixture(scope="module")
def sam2_export(sam2_onnx_export):
    return sam2_onnx_export


def predictors(name, checkpoint, folder, image):
    torch_predictor = maskml.ImagePredictor(maskml.load_model(name, checkpoint=checkpoint))
    onnx_predictor = maskml.ImagePredictor(maskml.load_model(name, checkpoint=folder, backend="onnxruntime"))
    torch_predictor.set_image(image)
    onnx_predictor.set_image(image)
    return torch_predictor, onnx_predictor


def test_mobile_sam_matches_pytorch(mobile_sam_export, sam_checkpoints, truck):
    torch_predictor, onnx_predictor = predictors("mobile_sam", sam_checkpoints["mobile_sam"], mobile_sam_export, truck)
    torch.testing.assert_close(onnx_predictor.get_image_embedding(), torch_predictor.get_image_embedding(),
                               atol=1e-4, rtol=0)
    assert_same_predictions(torch_predictor, onnx_predictor)


def test_sam2_image_mode_matches_pytorch(sam2_checkpoint, sam2_export, truck):
    torch_predictor, onnx_predictor = predictors("sam2.1_hiera_t", sam2_checkpoint, sam2_export, truck)
    assert_same_predictions(torch_predictor, onnx_predictor)


def test_sam_vit_b_decoder_matches_pytorch(sam_checkpoints, mobile_sam_export, tmp_path):
    """vit_b's decoder graph on one image embedding (a random one: the decoder is what is compared)."""
    model = maskml.load_model("sam_vit_b", checkpoint=sam_checkpoints["sam_vit_b"])
    export_decoder(model, "sam", tmp_path, opset=17, upscale=False)
    sizes = {"original_size": (800, 1200), "input_size": (683, 1024)}
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    torch_predictor = maskml.ImagePredictor(model)
    torch_predictor._state = {**torch_predictor.backend.image_state(embedding), **sizes}
    # an ONNX Runtime model (its encoder graph unused) with vit_b's decoder graph
    manifest = dict(json.loads((mobile_sam_export / MANIFEST).read_text()), model="sam_vit_b")
    onnx_model = OnnxImageModel(mobile_sam_export, manifest, ["CPUExecutionProvider"])
    onnx_model.decoder = _session(tmp_path / "decoder_lowres.onnx", ["CPUExecutionProvider"])
    onnx_predictor = maskml.ImagePredictor(onnx_model)
    onnx_predictor._state = {"embedding": embedding, **sizes}
    assert_same_predictions(torch_predictor, onnx_predictor)


def test_automatic_masks_on_onnxruntime(mobile_sam_export, sam_checkpoints, truck):
    records = {}
    for backend, checkpoint in (("torch", sam_checkpoints["mobile_sam"]), ("onnxruntime", mobile_sam_export)):
        model = maskml.load_model("mobile_sam", checkpoint=checkpoint, backend=backend)
        generator = maskml.AutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0.0,
                                                  stability_score_thresh=0.0)
        records[backend] = sorted(generator.generate(truck), key=lambda r: r["point_coords"])
    assert len(records["onnxruntime"]) == len(records["torch"]) > 0
    for got, want in zip(records["onnxruntime"], records["torch"]):
        assert got["point_coords"] == want["point_coords"]
        assert mask_iou(torch.from_numpy(got["segmentation"]), torch.from_numpy(want["segmentation"])) >= 0.998


def test_decoder_graph_gives_masks_at_the_original_size(mobile_sam_export, sam_checkpoints, truck):
    """The graph alone, as a deployment without maskml runs it: logits at the original size, all 4 tokens."""
    import onnxruntime

    predictor = maskml.ImagePredictor(maskml.load_model("mobile_sam", checkpoint=sam_checkpoints["mobile_sam"]))
    predictor.set_image(truck)
    want = predictor.predict(points=[[500.0, 375.0]], labels=[1], multimask=True)
    session = onnxruntime.InferenceSession(str(mobile_sam_export / "decoder.onnx"),
                                           providers=["CPUExecutionProvider"])
    scale = np.array([1024 / 1200, 683 / 800], np.float32)
    masks, scores, low_res = session.run(None, {
        "image_embeddings": predictor.get_image_embedding().numpy(),
        "point_coords": np.array([[[500.0, 375.0], [0.0, 0.0]]], np.float32) * scale,
        "point_labels": np.array([[1.0, -1.0]], np.float32), "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32), "orig_im_size": np.array([800, 1200], np.int64)})
    assert masks.shape == (1, 4, 800, 1200) and scores.shape == (1, 4) and low_res.shape == (1, 4, 256, 256)
    assert np.abs(masks[0, 1:] - want.logits.numpy()).max() <= 1e-3
    assert mask_iou(torch.from_numpy(masks[0, 1:] > 0), want.masks) >= 0.998


def test_manifest_lists_every_file_with_its_sha256(mobile_sam_export):
    import hashlib

    manifest = json.loads((mobile_sam_export / MANIFEST).read_text())
    assert manifest["model"] == "mobile_sam" and manifest["maskml_version"] == maskml.__version__
    assert manifest["opset"] == 17 and manifest["encoder_precision"] == "float32"
    assert set(manifest["graphs"]) == {"encoder", "decoder", "decoder_lowres"}
    assert "image" in manifest["graphs"]["encoder"]["inputs"]
    assert sorted(manifest["files"]) == sorted(p.name for p in mobile_sam_export.iterdir() if p.name != MANIFEST)
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((mobile_sam_export / name).read_bytes()).hexdigest() == digest


def test_int8_export_from_the_command_line(sam_checkpoints, mobile_sam_export, tmp_path, truck, capsys):
    import onnx

    out = tmp_path / "mobile_sam_int8"
    assert main(["export", "mobile_sam", "--checkpoint", str(sam_checkpoints["mobile_sam"]), "--out", str(out),
                 "--quantize", "int8"]) == 0
    assert str(out) in capsys.readouterr().out
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["encoder_precision"] == "int8"
    graph = onnx.load(str(out / "encoder.onnx")).graph
    weights = {tensor.name for tensor in graph.initializer}
    assert any(node.op_type == "MatMulInteger" for node in graph.node)
    assert not [node.name for node in graph.node if node.op_type == "MatMul" and weights & set(node.input)]
    assert (out / "encoder.onnx").stat().st_size < 0.6 * (mobile_sam_export / "encoder.onnx").stat().st_size
    assert not list(tmp_path.glob(".*"))  # no temporary folder or file left behind
    # a rerun may replace its own export
    assert main(["export", "mobile_sam", "--checkpoint", str(sam_checkpoints["mobile_sam"]), "--out", str(out),
                 "--quantize", "int8"]) == 0
    int8 = maskml.ImagePredictor(maskml.load_model("mobile_sam", checkpoint=out, backend="onnxruntime"))
    int8.set_image(truck)
    assert int8.predict(points=[[500.0, 375.0]]).masks.any()


def test_static_int8_export_is_calibrated_on_the_given_images(sam_checkpoints, mobile_sam_export, tmp_path, truck,
                                                                capsys):
    import onnx
    from PIL import Image

    out, images, empty = tmp_path / "qdq", tmp_path / "calibration", tmp_path / "empty"
    empty.mkdir()
    for flags, message in [([], "needs --calibration DIR"), (["--calibration", str(empty)], "not a folder of images")]:
        assert main(["export", "mobile_sam", "--checkpoint", str(sam_checkpoints["mobile_sam"]), "--out", str(out),
                     "--quantize", "int8-static", *flags]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    images.mkdir()
    Image.fromarray(truck).save(images / "truck.png")
    assert main(["export", "mobile_sam", "--checkpoint", str(sam_checkpoints["mobile_sam"]), "--out", str(out),
                 "--quantize", "int8-static", "--calibration", str(images)]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["encoder_precision"] == "int8-static" and manifest["encoder_calibration"] == ["truck.png"]
    ops = {node.op_type for node in onnx.load(str(out / "encoder.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format, for providers that fuse it into int8 kernels
    assert (out / "encoder.onnx").stat().st_size < 0.4 * (mobile_sam_export / "encoder.onnx").stat().st_size
    predictors_ = {folder: maskml.ImagePredictor(maskml.load_model("mobile_sam", checkpoint=folder,
                                                                   backend="onnxruntime"))
                   for folder in (out, mobile_sam_export)}
    masks = []
    for predictor in predictors_.values():
        predictor.set_image(truck)
        masks.append(predictor.predict(points=[[500.0, 375.0]]).masks)
    assert mask_iou(*masks) >= 0.9  # the bar for a quantized graph
    with pytest.raises(MaskmlError, match="--calibration applies to --quantize int8-static only"):
        export_model("mobile_sam", tmp_path / "x", sam_checkpoints["mobile_sam"], quantize="int8", calibration=images)


def test_segment_command_on_onnxruntime(mobile_sam_export, sam_checkpoints, tmp_path):
    from maskml.io.images import read_image

    masks = {}
    for backend, checkpoint in (("torch", sam_checkpoints["mobile_sam"]), ("onnxruntime", mobile_sam_export)):
        out = tmp_path / f"{backend}.png"
        assert main(["segment", str(TRUCK), "--model", "mobile_sam", "--checkpoint", str(checkpoint),
                     "--backend", backend, "--point", "500,375", "--out", str(out)]) == 0
        masks[backend] = torch.from_numpy(read_image(out)[..., 0] > 0)
    assert mask_iou(masks["torch"], masks["onnxruntime"]) >= 0.998


def test_out_folder_that_maskml_did_not_write_is_refused(sam_checkpoints, mobile_sam_export, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export", "mobile_sam", "--checkpoint", str(sam_checkpoints["mobile_sam"]), "--out", str(mine)]) == 2
    assert "not a maskml export" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(MaskmlError, match="holds the maskml export of mobile_sam, not sam_vit_b"):
        export_model("sam_vit_b", mobile_sam_export, sam_checkpoints["sam_vit_b"])


def copy_export(folder, dest):
    import shutil

    return shutil.copytree(folder, dest)


def test_folder_of_another_model_or_version_is_refused(mobile_sam_export, tmp_path):
    with pytest.raises(MaskmlError, match="holds the ONNX export of mobile_sam, not sam_vit_b"):
        maskml.load_model("sam_vit_b", checkpoint=mobile_sam_export, backend="onnxruntime")
    old = copy_export(mobile_sam_export, tmp_path / "old")
    manifest = json.loads((old / MANIFEST).read_text())
    (old / MANIFEST).write_text(json.dumps(dict(manifest, maskml_version="0.0.1")))
    with pytest.raises(MaskmlError, match="exported by maskml 0.0.1"):
        maskml.load_model("mobile_sam", checkpoint=old, backend="onnxruntime")
    # the same version, but an earlier set of graphs (e.g. before decoder_lowres.onnx)
    (old / MANIFEST).write_text(json.dumps({k: v for k, v in manifest.items() if k != "format_version"}))
    with pytest.raises(MaskmlError, match="exported by an earlier build of maskml"):
        maskml.load_model("mobile_sam", checkpoint=old, backend="onnxruntime")
    with pytest.raises(MaskmlError, match="not a maskml ONNX export"):
        maskml.load_model("mobile_sam", checkpoint=tmp_path, backend="onnxruntime")


def test_missing_or_corrupt_graph_is_one_clear_error(mobile_sam_export, tmp_path, capsys):
    broken = copy_export(mobile_sam_export, tmp_path / "broken")
    with open(broken / "decoder.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\0\0\0\0")
    assert main(["segment", str(TRUCK), "--model", "mobile_sam", "--checkpoint", str(broken), "--backend",
                 "onnxruntime", "--point", "500,375", "--out", str(tmp_path / "mask.png")]) == 2
    err = capsys.readouterr().err
    assert "decoder.onnx is corrupt (its SHA-256 differs" in err and len(err.strip().splitlines()) == 1
    (broken / "decoder.onnx").unlink()
    with pytest.raises(MaskmlError, match="decoder.onnx is missing"):
        maskml.load_model("mobile_sam", checkpoint=broken, backend="onnxruntime")
    assert not (tmp_path / "mask.png").exists()


def test_unavailable_provider_lists_the_available_ones(mobile_sam_export, tmp_path, capsys):
    assert main(["segment", str(TRUCK), "--model", "mobile_sam", "--checkpoint", str(mobile_sam_export), "--backend",
                 "onnxruntime", "--providers", "NoSuchExecutionProvider", "--point", "500,375", "--out",
                 str(tmp_path / "mask.png")]) == 2
    err = capsys.readouterr().err
    assert "NoSuchExecutionProvider is not available here; available: " in err and "CPUExecutionProvider" in err
    with pytest.raises(MaskmlError, match="--providers applies to --backend onnxruntime only"):
        from maskml.cli.backend import backend_options
        from types import SimpleNamespace

        backend_options(SimpleNamespace(backend="torch", providers="CPUExecutionProvider"))


def test_missing_onnx_extra_names_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an absent package looks like to import
    with pytest.raises(MaskmlError, match=r"pip install maskml\[onnx\]"):
        maskml.load_model("mobile_sam", checkpoint=".", backend="onnxruntime")


def test_video_session_of_an_image_model_on_onnxruntime_is_refused(mobile_sam_export):
    model = maskml.load_model("mobile_sam", checkpoint=mobile_sam_export, backend="onnxruntime")
    with pytest.raises(MaskmlError, match="VideoSession needs a SAM 2 model"):
        maskml.VideoSession(model, np.zeros((2, 64, 64, 3), np.uint8))


def test_export_outputs_are_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    checkpoint = tmp_path / "missing.pt"  # never read: the output checks come first
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    inside = checkpoint / "graphs"
    for out, message in [(".", "--out . is the current folder"),
                         (str(inside), f"--out {inside} lies inside the input --checkpoint")]:
        assert main(["export", "mobile_sam", "--checkpoint", str(checkpoint), "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"maskml export: error: {message}") and err.count("\n") == 1, err


def test_demo_on_onnxruntime(mobile_sam_export, sam_checkpoints, cutie_onnx_export, cutie_small_checkpoint, small_judo,
                             capsys):
    """`maskml demo --backend onnxruntime`: the window's clicks become masks on the ONNX Runtime prompter and
    are tracked by the ONNX Runtime tracker (built and driven headless, as tests/test_demo.py drives PyTorch's)."""
    from maskml.cli import build_parser
    from maskml.cli.demo import load_pipeline
    from maskml.demo import DemoSession
    from maskml.io.video import open_video

    labels = {}
    for backend, tracker, prompter in (("torch", cutie_small_checkpoint, sam_checkpoints["mobile_sam"]),
                                       ("onnxruntime", cutie_onnx_export, mobile_sam_export)):
        args = build_parser().parse_args(["demo", str(small_judo), "--checkpoint", str(tracker),
                                          "--prompter", "mobile_sam", "--prompter-checkpoint", str(prompter),
                                          "--backend", backend])
        pipeline = load_pipeline(args, {})
        assert getattr(pipeline.predictor.model, "backend", "torch") == backend
        assert getattr(pipeline.tracker.model, "backend", "torch") == backend
        session = DemoSession(pipeline, open_video(small_judo))
        session.on_mouse("left_down", 80, 48)
        session.on_mouse("left_up", 80, 48)
        labels[backend] = session.labels == 1
    assert labels["torch"].any() and mask_iou(labels["onnxruntime"], labels["torch"]) >= 0.998
    capsys.readouterr()  # the models' loading lines

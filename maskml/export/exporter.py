"""`maskml export`: a model's graphs and manifest.json in one folder, written under a temporary
name and renamed when complete.

Traced with the TorchScript exporter (torch.onnx.export(dynamo=False)): it records the dynamic
sizes (points per prompt, prompts, image size) as shape arithmetic in the graph, where the dynamo
exporter needs every data-dependent size (the original image size given as a tensor) declared as
an unbacked symbol and still specialises the upscaling; the TorchScript graphs are also the ones
onnxruntime-web runs (plain opset <= 17 operators).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch

import maskml
from maskml.errors import MaskmlError
from maskml.hub import sha256_of
from maskml.io.outputs import temporary_folder
from maskml.export import (DEFAULT_OPSET, FORMAT, FORMAT_VERSION, MANIFEST, OPSETS, QUANTIZATIONS,
                           require_onnx)
from maskml.export.graphs import ENCODER_INPUT, DecoderGraph, Sam2EncoderGraph, SamEncoderGraph
from maskml.zoo import get_entry, load_model

CALIBRATION_SUFFIXES = (".jpg", ".jpeg", ".png")
_PROTOBUF_LIMIT = 2_000_000_000  # bytes a single .onnx file may hold; larger graphs keep weights in a .data file

DECODER_CONVENTIONS = (
    "point_coords float32 (B, N, 2): x, y in the encoder's input frame (SAM: original pixels times the resize "
    "factor of each axis; SAM 2: original pixels / (w, h) * 1024); point_labels float32 (B, N): 1 object, "
    "0 background, 2 and 3 the top-left and bottom-right box corners, -1 padding (SAM: one padding point when "
    "there is no box; SAM 2: always one); mask_input float32 (B, 1, 256, 256) low-res logits of an earlier "
    "prediction, used when has_mask_input (1,) is 1; orig_im_size int64 (2,) = (h, w). Outputs of all 4 mask "
    "tokens: masks (B, 4, h, w) logits at the original size (mask = logits > 0), iou_predictions (B, 4), "
    "low_res_masks (B, 4, 256, 256); token 0 is the single-mask output, tokens 1-3 the multimask outputs")


def check_out_folder(out: Path, name: str) -> None:
    """An export may replace only an earlier export of the same model (every file in it maskml's)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MaskmlError(f"--out {out} is a file; give a folder for the exported graphs")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        ours = manifest["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise MaskmlError(f"--out {out} is not empty and is not a maskml export; give a new or empty folder "
                          f"(maskml never overwrites files it did not write)")
    if manifest.get("model") != name:
        raise MaskmlError(f"--out {out} holds the maskml export of {manifest.get('model')}, not {name}; give "
                          f"another folder")
    foreign = [e for e in entries if e != MANIFEST and e not in manifest.get("files", {})]
    if foreign:
        raise MaskmlError(f"--out {out} holds files that maskml did not write ({', '.join(foreign[:3])}); give "
                          f"another folder")


def _trace(module: torch.nn.Module, inputs: tuple, path: Path, input_names: list[str], output_names: list[str],
           dynamic_axes: dict, opset: int) -> None:
    import onnx

    scratch = path.parent / f".{path.stem}.trace"
    scratch.mkdir()
    traced = scratch / path.name
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
        torch.onnx.export(module, inputs, str(traced), dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)
    graph = onnx.load(str(traced))  # external weights of a > 2 GB graph come back into memory here
    weights = sum(t.ByteSize() for t in graph.graph.initializer)
    if weights > _PROTOBUF_LIMIT:  # one weights file next to the graph instead of one file per tensor
        onnx.save(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}.data")
    else:
        onnx.save(graph, str(path))
    shutil.rmtree(scratch)


def export_encoder(model, family: str, folder: Path, opset: int) -> dict:
    """encoder.onnx in `folder`; returns its manifest entry."""
    size = model.image_size
    if family == "sam":
        encoder = SamEncoderGraph(model)
        image = torch.rand(1, 3, size, size * 3 // 4) * 255  # a dynamic size: the resized image keeps its aspect
        axes = {"image": {2: "height", 3: "width"}}
    else:
        encoder = Sam2EncoderGraph(model)
        image = torch.rand(1, 3, size, size)
        axes = {}
    outputs = ["image_embeddings",
               *(["high_res_feats_0", "high_res_feats_1", "backbone_embeddings"] if family == "sam2" else [])]
    _trace(encoder, (image,), folder / "encoder.onnx", ["image"], outputs, axes, opset)
    return {"file": "encoder.onnx", "inputs": {"image": ENCODER_INPUT[family]}, "outputs": outputs}


def export_decoder(model, family: str, folder: Path, opset: int, upscale: bool = True) -> dict:
    """decoder.onnx in `folder` (upscale=False: decoder_lowres.onnx, without orig_im_size and masks);
    returns its manifest entry."""
    size = model.image_size
    embedding = torch.randn(1, 256, size // 16, size // 16)
    features = (embedding,) if family == "sam" else (
        embedding, torch.randn(1, 32, size // 4, size // 4), torch.randn(1, 64, size // 8, size // 8))
    feature_names = ["image_embeddings", *(["high_res_feats_0", "high_res_feats_1"] if family == "sam2" else [])]
    prompts, points = 2, 3  # not 1: a traced size of 1 could be taken for a broadcast
    inputs = (*features, torch.rand(prompts, points, 2) * size, torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 1.0]]),
              torch.randn(prompts, 1, 256, 256), torch.ones(1))
    names = [*feature_names, "point_coords", "point_labels", "mask_input", "has_mask_input"]
    outputs = ["iou_predictions", "low_res_masks"]
    prompt_axes = {0: "prompts", 1: "points"}
    axes = {"point_coords": prompt_axes, "point_labels": prompt_axes, "mask_input": {0: "prompts"},
            "iou_predictions": {0: "prompts"}, "low_res_masks": {0: "prompts"}}
    if upscale:
        inputs, names = (*inputs, torch.tensor([700, 1000], dtype=torch.int64)), [*names, "orig_im_size"]
        outputs, axes = ["masks", *outputs], {**axes, "masks": {0: "prompts", 2: "height", 3: "width"}}
    file = "decoder.onnx" if upscale else "decoder_lowres.onnx"
    _trace(DecoderGraph(model, family, upscale), inputs, folder / file, names, outputs, axes, opset)
    conventions = DECODER_CONVENTIONS if upscale else "decoder.onnx's, without orig_im_size and masks"
    return {"file": file, "inputs": names, "outputs": outputs, "conventions": conventions}


def export_image_graphs(model, family: str, folder: Path, opset: int, quantize: str | None,
                        calibration: list[Path] | None) -> tuple[dict, dict]:
    """encoder.onnx, decoder.onnx and decoder_lowres.onnx in `folder`: (their manifest entries, the
    manifest's image-model fields)."""
    graphs = {"encoder": export_encoder(model, family, folder, opset),
              "decoder": export_decoder(model, family, folder, opset),
              "decoder_lowres": export_decoder(model, family, folder, opset, upscale=False)}
    if quantize:
        _quantize(folder / "encoder.onnx", quantize, calibration_inputs(model, calibration) if calibration else None)
    decoder = model.mask_decoder if family == "sam" else model.sam_mask_decoder
    return graphs, {"image_size": model.image_size, "encoder_precision": quantize or "float32",
                    **({"encoder_calibration": [image.name for image in calibration]} if calibration else {}),
                    "single_mask_stability": decoder.single_mask_stability}


def _quantize(path: Path, quantize: str, calibration: list[torch.Tensor] | None) -> None:
    """int8: dynamic quantization (int8 MatMul weights, activations quantized on the fly: the faster one
    on CPUs). int8-static: QDQ quantization of MatMul and Conv, weights per channel, activation ranges
    from the calibration inputs (the format that QDQ-consuming providers such as TensorRT run as int8)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    if path.with_name(f"{path.name}.data").exists():
        raise MaskmlError(f"--quantize {quantize} of a graph over 2 GB ({path.name}) is not supported yet")
    float_path = path.with_name(f".{path.stem}.float32.onnx")
    path.rename(float_path)
    logging.disable(logging.WARNING)  # its advice to pre-process the graph first, printed on every call
    try:
        if quantize == "int8":
            quantize_dynamic(float_path, path, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        else:
            class Inputs(CalibrationDataReader):
                def __init__(self) -> None:
                    self.feeds = iter([{"image": image.numpy()} for image in calibration])

                def get_next(self):
                    return next(self.feeds, None)

            quantize_static(float_path, path, Inputs(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul", "Conv"], per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    float_path.unlink()


def calibration_images(folder: str | Path | None, quantize: str | None) -> list[Path] | None:
    """The images of --calibration, checked before the model loads."""
    if quantize != "int8-static":
        if folder is not None:
            raise MaskmlError("--calibration applies to --quantize int8-static only")
        return None
    if folder is None:
        raise MaskmlError("--quantize int8-static needs --calibration DIR: a folder of a few typical images "
                          "(jpg, png) to measure the activation ranges on")
    images = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in CALIBRATION_SUFFIXES
                    and not p.name.startswith(".")) if Path(folder).is_dir() else []
    if not images:
        raise MaskmlError(f"--calibration {folder} is not a folder of images (jpg, png); give a folder of a few "
                          f"typical images")
    return images


def calibration_inputs(model, images: list[Path]) -> list[torch.Tensor]:
    """The encoder inputs of the calibration images, resized as the predictor resizes them."""
    from maskml.io.images import read_image
    from maskml.predict.image import backend_for

    backend = backend_for(model)
    return [backend.resize(torch.from_numpy(read_image(image)))[0] for image in images]


def export_model(name: str, out: str | Path, checkpoint: str | Path | None = None, quantize: str | None = None,
                 opset: int = DEFAULT_OPSET, progress: bool = True, calibration: str | Path | None = None) -> Path:
    """Export `name` (weights from `checkpoint` or the cache) to the folder `out`; returns it. quantize:
    None, "int8" or "int8-static" (with `calibration`, a folder of images) for the encoder."""
    entry = get_entry(name)
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise MaskmlError(f"--quantize {quantize!r} is not offered; choose {' or '.join(QUANTIZATIONS)}")
    images = calibration_images(calibration, quantize)
    if images and entry.family == "cutie":
        raise MaskmlError("--quantize int8-static applies to the image models' encoders; Cutie takes --quantize int8")
    if opset not in OPSETS:
        raise MaskmlError(f"--opset {opset} is not supported; choose {OPSETS[0]} to {OPSETS[-1]} "
                          f"(default {DEFAULT_OPSET})")
    require_onnx("onnx", *(["onnxruntime"] if quantize else []))
    out = Path(out)
    check_out_folder(out, name)
    model = load_model(name, checkpoint=checkpoint, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = temporary_folder(out)
    try:
        if entry.family == "cutie":
            from maskml.export.cutie import export_cutie

            graphs, details = export_cutie(model, folder, opset, quantize)
        else:
            graphs, details = export_image_graphs(model, entry.family, folder, opset, quantize, images)
        if entry.family == "sam2":  # the video graphs next to the image graphs: one folder for both modes
            from maskml.export.sam2_video import export_video_graphs, video_manifest

            graphs.update(export_video_graphs(model, folder, opset, _trace))
            details["video"] = video_manifest(model)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "model": name, "family": entry.family,
            "maskml_version": maskml.__version__, "opset": opset, "torch_version": torch.__version__, **details,
            "graphs": graphs,
            "files": {p.name: sha256_of(p) for p in sorted(folder.iterdir())},
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _replace_folder(folder, out)
    finally:
        if folder.exists():
            shutil.rmtree(folder)  # an unfinished export: only files written above
    return out


def _replace_folder(new: Path, out: Path) -> None:
    """Rename the finished folder to `out`; an earlier export of the same model there (checked by
    check_out_folder) is moved aside first and removed only once the new one is in place."""
    if out.exists() and any(out.iterdir()):
        old = temporary_folder(out)
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old)
    else:
        os.replace(new, out)  # an empty folder is replaced as a whole

"""MobileSAM's TinyViT encoder: state-dict layout, parity with the official embedding, and no
stale inference caches (folded BatchNorm, gathered attention biases) after loading new weights.

Weights are the deterministic parity weights (tests/weights.py), written in the official
mobile_sam.pt layout and loaded the way users load them: maskml.load_model(name, checkpoint=path).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import maskml
from maskml.models.sam.sam import build_sam
from weights import fill_state_dict

SAM = Path(__file__).parent / "fixtures" / "sam"
CLASSIFIER = ("image_encoder.norm_head.", "image_encoder.head.")  # in the file, unused by SAM
EMBEDDING_TOL = 1e-4  # fixture README, Tier A


def manifest() -> dict[str, list[int]]:
    return json.loads((SAM / "manifest_vit_t.json").read_text())["keys"]


def official_input() -> torch.Tensor:
    """The official preprocessing of the truck image: PIL bilinear resize of the longest side to
    1024, normalise, zero-pad right/bottom after normalising -> (1, 3, 1024, 1024)."""
    image = np.array(Image.open(SAM / "truck_1200x800.png").convert("RGB"))
    resized = np.array(Image.fromarray(image).resize((1024, 683), Image.BILINEAR))
    x = torch.from_numpy(resized).permute(2, 0, 1).float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    x = (x - mean) / std
    return torch.nn.functional.pad(x, (0, 1024 - x.shape[2], 0, 1024 - x.shape[1]))[None]


def load(tmp_path: Path, seed: int):
    path = tmp_path / f"mobile_sam_seed{seed}.pt"
    torch.save(fill_state_dict(manifest(), seed=seed), path)
    return maskml.load_model("mobile_sam", checkpoint=path)


def test_state_dict_matches_the_official_file():
    expected = [(k, shape) for k, shape in manifest().items() if not k.startswith(CLASSIFIER)]
    model = build_sam("tiny_vit")
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == expected
    assert model.image_encoder.img_size == 1024
    buffers = dict(model.named_buffers())
    index = "image_encoder.layers.1.blocks.0.attn.attention_bias_idxs"
    assert index in buffers and index not in model.state_dict()  # rebuilt at construction, not loaded


def test_embedding_matches_official(tmp_path):
    expected = np.load(SAM / "expected_vit_t_embedding.npz")
    model = load(tmp_path, seed=0)
    with torch.inference_mode():
        embedding = model.image_encoder(official_input())
    assert embedding.shape == (1, 256, 64, 64)
    e = embedding[0].numpy()
    np.testing.assert_allclose(e[::4, ::4, ::4], expected["embedding_sub"], rtol=0, atol=EMBEDDING_TOL)
    full = e.astype(np.float64)
    summary = [full.mean(), full.std(), np.abs(full).mean(), np.abs(full).max()]
    np.testing.assert_allclose(summary, expected["embedding_stats"], rtol=0, atol=EMBEDDING_TOL)


def test_new_weights_replace_cached_inference_tensors(tmp_path):
    """Caches filled with one set of weights must not survive loading another."""
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    model = load(tmp_path, seed=0)
    with torch.inference_mode():
        before = model.image_encoder(x)  # fills the caches
    second = {k: v for k, v in fill_state_dict(manifest(), seed=1).items() if not k.startswith(CLASSIFIER)}
    model.load_state_dict(second)
    fresh = load(tmp_path, seed=1)
    with torch.inference_mode():
        after = model.image_encoder(x)
        expected = fresh.image_encoder(x)
    assert (after - before).abs().max() > 0.1
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)

    # the loaded attention biases are the ones used (the official model's cached copy went stale)
    with torch.no_grad():
        model.image_encoder.layers[2].blocks[0].attn.attention_biases.mul_(3)
    with torch.inference_mode():
        edited = model.image_encoder(x)
    assert (edited - after).abs().max() > 1e-3
    with torch.inference_mode():  # train()/eval() drop every cache: all rebuilt from the weights
        torch.testing.assert_close(edited, model.image_encoder.train().eval()(x), rtol=0, atol=0)

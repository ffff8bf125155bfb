"""SAM 2 / 2.1 image encoder (Hiera + FPN neck): state-dict layout of all eight released files,
parity with the official features on the truck image, the windowed attention against a direct
statement of the official padding rule, and the inference caches.

Weights are the deterministic parity weights (tests/weights.py) of the official file layout.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from maskml.models.sam2 import HIERA_SIZES, build_image_encoder
from maskml.models.sam2.hiera import MultiScaleBlock
from weights import fill_state_dict

SAM2 = Path(__file__).parent / "fixtures" / "sam2"
PREFIX = "image_encoder."
FEATURE_TOL = 1e-3  # fixture README, recommended tolerances: *_sub max-abs
STATS_TOL = 1e-4  # *_stats abs
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def manifest(model: str) -> dict[str, list[int]]:
    return json.loads((SAM2 / f"manifest_{model}.json").read_text())["keys"]


def encoder_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}


def truck_input() -> torch.Tensor:
    """The official image predictor's preprocessing (fixture README): uint8 RGB -> [0, 1] ->
    bilinear antialiased resize to 1024x1024 -> ImageNet normalisation."""
    case = json.loads((SAM2 / "cases.json").read_text())["inputs"]["image"]
    image = np.array(Image.open(SAM2 / case["path"]).convert("RGB"))
    assert hashlib.sha256(image.tobytes()).hexdigest() == case["decoded_rgb_uint8_sha256"]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(1024, 1024), mode="bilinear", align_corners=False, antialias=True)
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def channel_stats(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) -> (C, 3) [mean, population std, mean |x|] in float64, as the fixtures store them."""
    x = x.double().flatten(1)
    return torch.stack([x.mean(1), x.std(1, correction=0), x.abs().mean(1)], dim=1).numpy()


@pytest.mark.parametrize("version", ["sam2", "sam2.1"])
@pytest.mark.parametrize("size", HIERA_SIZES)
def test_state_dict_matches_the_official_file(version, size):
    expected = [(k[len(PREFIX):], shape) for k, shape in manifest(f"{version}_hiera_{size}").items()
                if k.startswith(PREFIX)]
    with torch.device("meta"):  # shapes only: nothing allocated
        encoder = build_image_encoder(size)
    assert [(k, list(v.shape)) for k, v in encoder.state_dict().items()] == expected


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="base_plus"):
        build_image_encoder("huge")


@pytest.fixture(scope="module")
def tiny():
    """sam2.1_hiera_tiny's encoder with the parity weights, and the whole filled state dict."""
    state = fill_state_dict(manifest("sam2.1_hiera_tiny"))
    encoder = build_image_encoder("tiny").eval()
    encoder.load_state_dict(encoder_weights(state), strict=True)
    return encoder, state


def test_features_match_official(tiny):
    encoder, state = tiny
    with torch.inference_mode():
        fpn, pos = encoder(truck_input())
        assert [tuple(f.shape) for f in fpn] == [(1, 256, 256, 256), (1, 256, 128, 128), (1, 256, 64, 64)]
        assert [tuple(p.shape) for p in pos] == [tuple(f.shape) for f in fpn]
        # the predictor's image_embed and high_res_feats, computed as in the official set_image
        image_embed = fpn[2] + state["no_mem_embed"].view(1, -1, 1, 1)
        feat0 = F.conv2d(fpn[0], state["sam_mask_decoder.conv_s0.weight"], state["sam_mask_decoder.conv_s0.bias"])
        feat1 = F.conv2d(fpn[1], state["sam_mask_decoder.conv_s1.weight"], state["sam_mask_decoder.conv_s1.bias"])
    expected = np.load(SAM2 / "expected_image_truck_features.npz")
    for name, full, step in [("image_embed", image_embed, 4), ("high_res_feat0", feat0, 16),
                             ("high_res_feat1", feat1, 8)]:
        assert list(full.shape) == expected[f"{name}_shape"].tolist()
        sub = full[0][::step, ::step, ::step] if name == "image_embed" else full[0][:, ::step, ::step]
        np.testing.assert_allclose(sub.numpy(), expected[f"{name}_sub"], rtol=0, atol=FEATURE_TOL, err_msg=name)
        np.testing.assert_allclose(channel_stats(full[0]), expected[f"{name}_stats"], rtol=0, atol=STATS_TOL,
                                   err_msg=name)


def reference_block(block: MultiScaleBlock, x: torch.Tensor) -> torch.Tensor:
    """The official rule, stated directly: zero-pad the NORMALISED input up to whole windows, project
    every token (padding too), pool queries inside each window, attend per window, crop."""
    y = block.norm1(x)
    b, h, w, _ = y.shape
    shortcut = x if block.proj is None else block.proj(y)
    if block.q_pool:
        shortcut = F.max_pool2d(shortcut.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    wh, ww = (block.window_size,) * 2 if block.window_size else (h, w)  # global: one window, no padding
    ph, pw = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
    y = F.pad(y, (0, 0, 0, pw - w, 0, ph - h))
    attn, heads = block.attn, block.attn.num_heads
    windows = y.view(b, ph // wh, wh, pw // ww, ww, -1).transpose(2, 3).reshape(-1, wh, ww, y.shape[-1])
    q, k, v = attn.qkv(windows).unflatten(-1, (3, heads, -1)).unbind(3)  # (nW, wh, ww, heads, d)
    if block.q_pool:
        q = F.max_pool2d(q.flatten(3).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1).unflatten(-1, (heads, -1))
    qh, qw = q.shape[1:3]
    q, k, v = (t.flatten(1, 2).transpose(1, 2) for t in (q, k, v))  # (nW, heads, tokens, d)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, ph // wh, pw // ww, qh, qw, -1)
    out = out.transpose(2, 3).reshape(b, ph // wh * qh, pw // ww * qw, -1)[:, : shortcut.shape[1], : shortcut.shape[2]]
    x = shortcut + attn.proj(out)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("size,window,q_pool", [
    (12, 8, False), (16, 8, False), (12, 8, True), (16, 4, True), (10, 0, False), (12, 0, True), (9, 4, False),
])
def test_windowed_attention_follows_the_padding_rule(size, window, q_pool):
    """Padded keys/values must be those of zero input tokens (the qkv bias), whole windows need no padding."""
    torch.manual_seed(0)
    dim, dim_out = 8, (16 if q_pool else 8)
    block = MultiScaleBlock(dim, dim_out, num_heads=2, window_size=window, q_pool=q_pool).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5)
        x = torch.randn(2, size, size + 2 * (not q_pool), dim)
        got, expected = block(x), reference_block(block, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)  # the autograd path (no in-place shortcuts) gives the same and differentiates
    with_grad = block(x)
    torch.testing.assert_close(with_grad.detach(), got, rtol=1e-6, atol=1e-6)
    with_grad.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_position_embedding_cache_follows_the_weights(tiny):
    _, state = tiny
    encoder = build_image_encoder("tiny").eval()
    encoder.load_state_dict(encoder_weights(state))
    trunk = encoder.trunk
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = trunk(x)[-1]
        cached = trunk._cache[1]
        assert cached.shape == (1, 64, 64, 96)
        assert trunk(x)[-1].equal(first) and trunk._cache[1] is cached  # reused, not recomputed
        trunk(torch.randn(1, 3, 128, 128))  # another input size replaces the entry
        assert trunk._cache[1].shape == (1, 32, 32, 96)

        other = encoder_weights(fill_state_dict(manifest("sam2.1_hiera_tiny"), seed=1))
        encoder.load_state_dict({**encoder_weights(state), "trunk.pos_embed": other["trunk.pos_embed"]})
        assert trunk._cache is None
        loaded = trunk(x)[-1]
        assert (loaded - first).abs().max() > 1e-3
        trunk.pos_embed_window.mul_(2)  # an in-place edit is seen too
        edited = trunk(x)[-1]
        assert (edited - loaded).abs().max() > 1e-3
        trunk.train()
        assert trunk._cache is None
        torch.testing.assert_close(trunk(x)[-1], edited, rtol=0, atol=0)  # training mode: computed each call
        assert trunk._cache is None


def test_sine_position_encoding(tiny):
    encoder, _ = tiny
    pe = encoder.neck.position_encoding
    feats = torch.zeros(2, 256, 4, 6)
    out = pe(feats)
    assert out.shape == (2, 256, 4, 6) and pe(feats).data_ptr() == out.data_ptr()  # cached per size
    y = torch.arange(1, 5, dtype=torch.float32) / (4 + 1e-6) * 2 * math.pi
    x = torch.arange(1, 7, dtype=torch.float32) / (6 + 1e-6) * 2 * math.pi
    freq = 10000 ** (2 * (torch.arange(128) // 2) / 128)
    torch.testing.assert_close(out[1, 0], y.sin()[:, None].expand(4, 6))  # rows first, sin in even channels
    torch.testing.assert_close(out[0, 5], (y / freq[5]).cos()[:, None].expand(4, 6))  # cos in odd ones
    torch.testing.assert_close(out[0, 128 + 2], (x / freq[2]).sin()[None].expand(4, 6))  # then columns
    assert pe(torch.zeros(1, 256, 4, 6, dtype=torch.float64)).dtype == torch.float64

"""Winograd F(2x2, 3x3) convolutions: the same function as F.conv2d, used where it applies."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import maskml
from maskml.models import winograd
from maskml.models.common import Conv2d

conv3x3 = winograd.conv3x3  # the real function, wrapped below to count its calls

def reference(x, weight, bias):
    """The convolution in float64: the exact answer both float32 computations are judged against."""
    return F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)


@pytest.mark.parametrize("n, c, k, h, w, channels_last, with_bias", [
    (1, 128, 256, 8, 12, False, True),
    (3, 256, 128, 7, 9, False, True),  # odd sizes: the last tile row and column are cropped
    (2, 128, 128, 5, 6, True, False),
    (1, 192, 160, 1, 1, True, True),
])
def test_conv3x3_is_the_convolution(n, c, k, h, w, channels_last, with_bias):
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(k, c, 3, 3) / (3 * c ** 0.5), torch.randn(k) if with_bias else None
    direct = F.conv2d(x, weight, bias, padding=1)
    out = winograd.conv3x3(x, winograd.transform_weight(weight), bias)
    exact = reference(x, weight, bias)
    assert out.shape == direct.shape
    # rounding no worse than the direct convolution's (with a floor for tiny maps where that is ~0)
    assert (out.double() - exact).abs().max() <= max(2 * (direct.double() - exact).abs().max(), 1e-5)
    # the memory format F.conv2d gives, so the layers after it see the same layout
    for fmt in (torch.contiguous_format, torch.channels_last):
        assert out.is_contiguous(memory_format=fmt) == direct.is_contiguous(memory_format=fmt)


def test_applies_only_where_it_pays_and_is_exact():
    x, weight = torch.randn(1, 256, 30, 54), torch.randn(256, 256, 3, 3)
    args = ((1, 1), (1, 1), (1, 1), 1)
    with torch.no_grad():
        assert winograd.applies(x, weight, *args)
        assert not winograd.applies(x, weight, (2, 2), (1, 1), (1, 1), 1)  # strided
        assert not winograd.applies(x, weight[:, :, :1, :1], (1, 1), (0, 0), (1, 1), 1)  # 1x1
        assert not winograd.applies(x[:, :64], weight[:, :64], *args)  # too few input channels
        assert not winograd.applies(x.double(), weight.double(), *args)
        big = torch.randn(1, 256, 120, 216)
        assert not winograd.applies(big, weight, *args)  # a large map: oneDNN is as fast
    assert not winograd.applies(x, weight, *args)  # autograd records a graph: leave it to F.conv2d
    conv = Conv2d(256, 256, 3, padding=1).eval()
    with torch.no_grad():
        graph = str(torch.export.export(conv, (x,)).graph)  # a captured graph keeps the convolution itself
    assert "conv2d" in graph and "bmm" not in graph


def test_conv2d_module_is_an_nn_conv2d(monkeypatch):
    torch.manual_seed(0)
    conv = Conv2d(256, 128, 3, padding=1)
    plain = nn.Conv2d(256, 128, 3, padding=1)
    assert conv.state_dict().keys() == plain.state_dict().keys() and isinstance(conv, nn.Conv2d)
    x = torch.randn(2, 256, 10, 10)
    calls = []
    monkeypatch.setattr(winograd, "conv3x3", lambda *a: calls.append(1) or conv3x3(*a))
    with torch.inference_mode():
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-5, rtol=0)
        assert calls
        # new weights (as from a checkpoint) replace the cached transformed ones
        plain.weight.data.normal_(std=0.02)
        conv.load_state_dict(plain.state_dict())
        torch.testing.assert_close(conv(x), plain(x), atol=1e-4, rtol=0)
    out = conv(x)  # training-style call: F.conv2d, gradients flow
    out.sum().backward()
    assert conv.weight.grad is not None



def test_cutie_uses_it_and_tracks_the_same(monkeypatch):
    """Cutie's stride-16 convolutions (the ResNet trunk's with BatchNorm folded in, the fusers', the object
    transformer's, the sensory update's) run as Winograd, and the tracked probabilities do not change."""
    torch.manual_seed(0)
    model = maskml.build_model("cutie_small")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (96, 160, 3), dtype=np.uint8) for _ in range(3)]
    mask = np.zeros((96, 160), np.uint8)
    mask[20:60, 30:90] = 1
    calls = []
    monkeypatch.setattr(winograd, "conv3x3", lambda *a: calls.append(a[1].shape) or conv3x3(*a))

    def track(enabled: bool):
        monkeypatch.setattr(winograd, "ENABLED", enabled)
        tracker = maskml.VideoTracker(model)
        return [tracker.step(f, mask if i == 0 else None).probs for i, f in enumerate(frames)]

    direct = track(False)
    assert not calls
    fast = track(True)
    shapes = {tuple(s) for s in calls}
    assert (16, 256, 256) in shapes  # trunk, fusers and object transformer (256 -> 256)
    assert (16, 512, 768) in shapes  # sensory update (value + sensory -> 3 gates)
    for a, b in zip(direct, fast):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_weights_made_in_inference_mode_are_cached_too():
    """A model built inside torch.inference_mode (its weights then have no version counter) still reuses
    its derived weights (BatchNorm folded in, Winograd transforms) instead of recomputing them each call."""
    from maskml.models.cutie.resnet import ResNetTrunk

    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        trunk = ResNetTrunk("resnet18").eval()
        conv = Conv2d(256, 256, 3, padding=1).eval()
        trunk.stem(x)
        folded = trunk._cache[1]
        trunk.stem(x)
        assert trunk._cache[1] is folded
        conv(torch.randn(1, 256, 8, 8))
        transformed = conv._cache[1]
        conv(torch.randn(1, 256, 8, 8))
        assert conv._cache[1] is transformed
        conv.load_state_dict(Conv2d(256, 256, 3, padding=1).state_dict())  # new weights still replace them
        assert conv._cache is None

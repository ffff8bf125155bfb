"""LayerNorm2d gives the same result on NCHW and channels-last memory (two code paths)."""
import torch

from maskml.models.common import LayerNorm2d


def test_layer_norm_2d_memory_formats_agree():
    torch.manual_seed(0)
    norm = LayerNorm2d(64)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 64, 9, 11) * 3 + 1
    reference = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-6)
    reference = reference * norm.weight[:, None, None] + norm.bias[:, None, None]
    torch.testing.assert_close(norm(x), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm(x.to(memory_format=torch.channels_last)), reference, rtol=1e-5, atol=1e-5)

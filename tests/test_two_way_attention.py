"""The decoder's folded cross-attentions (prompt-side projections) equal plain multi-head attention."""
import pytest
import torch

from maskml.models.sam.transformer import Attention


@pytest.fixture
def attention():
    torch.manual_seed(0)
    attn = Attention(256, 8, downsample_rate=2)
    for p in attn.parameters():  # non-zero biases, so dropping the key bias is tested too
        torch.nn.init.normal_(p, std=0.2)
    return attn


@pytest.mark.parametrize("image_batch", [1, 3])
@pytest.mark.parametrize("tokens", [7, 20])  # 8 heads x 20 tokens >= 128 channels: the unfolded path
def test_few_queries_equals_attention(attention, image_batch, tokens):
    q = torch.randn(3, tokens, 256)
    image = torch.randn(image_batch, 300, 256)
    values = torch.randn(image_batch, 300, 256)
    expected = attention(q, image, values)
    torch.testing.assert_close(attention.few_queries(q, image, values), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("image_batch", [1, 3])
@pytest.mark.parametrize("tokens", [7, 20])
def test_few_keys_equals_attention(attention, image_batch, tokens):
    image = torch.randn(image_batch, 300, 256)
    k = torch.randn(3, tokens, 256)
    v = torch.randn(3, tokens, 256)
    expected = attention(image, k, v)
    torch.testing.assert_close(attention.few_keys(image, k, v), expected, rtol=1e-4, atol=1e-4)
    q_heads = attention.project_q(image)  # projected once per image, as TwoWayTransformer.image_cache does
    torch.testing.assert_close(attention.few_keys(None, k, v, q_heads=q_heads), expected, rtol=1e-4, atol=1e-4)


def test_folded_attention_trains(attention):
    q, image = torch.randn(2, 7, 256), torch.randn(1, 300, 256)
    attention.few_queries(q, image, image).sum().backward()
    folded = {n: p.grad.clone() for n, p in attention.named_parameters() if p.grad is not None}
    attention.zero_grad()
    attention(q, image, image).sum().backward()
    for name, p in attention.named_parameters():
        if name == "k_proj.bias":  # drops out of the softmax: zero gradient both ways
            continue
        torch.testing.assert_close(folded[name], p.grad, rtol=1e-3, atol=1e-3, msg=name)

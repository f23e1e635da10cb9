"""The PyTorch reference of chunk linear attention: equal to the engine's attention, and chunkable."""
import pytest
import torch

from sana_serve.engine.model.attention import LinearSelfAttention, RotaryEmbedding3D
from sana_serve.kernels.linear_attention import chunk_linear_attention, chunk_linear_attention_reference


def rope_tables(head_dim, frame_offset, frames, height, width):
    return RotaryEmbedding3D(head_dim)(frame_offset, frames, height, width, "cpu")


@pytest.mark.parametrize("with_past", [False, True])
def test_reference_equals_engine_linear_self_attention(with_past):
    torch.manual_seed(0)
    B, dim, heads, head_dim, frames, height, width = 2, 48, 3, 16, 2, 3, 4
    N = frames * height * width
    attn = LinearSelfAttention(dim, heads, head_dim, bias=True)
    with torch.no_grad():  # non-trivial norm weights, so the test covers what feeds the kernel
        attn.norm_q.weight.uniform_(0.5, 1.5)
        attn.norm_k.weight.uniform_(0.5, 1.5)
    attn.to_out[0] = torch.nn.Identity()  # compare the attention itself, before the output projection
    x = torch.randn(B, N, dim)
    cos, sin = rope_tables(head_dim, 5, frames, height, width)
    past = (torch.randn(B, heads, head_dim, head_dim), torch.rand(B, heads, head_dim) * N) if with_past else None

    with torch.no_grad():
        expected, (vk_expected, ks_expected) = attn(x, (cos, sin), past)
        q = attn.norm_q(attn.to_q(x)).unflatten(-1, (heads, head_dim))
        k = attn.norm_k(attn.to_k(x)).unflatten(-1, (heads, head_dim))
        v = attn.to_v(x).unflatten(-1, (heads, head_dim))
        out, vk_c, ks_c = chunk_linear_attention(q, k, v, cos, sin, *(past or (None, None)))

    assert out.shape == (B, N, heads, head_dim) and out.dtype == torch.float32
    assert torch.equal(out.flatten(2), expected)  # the same ops in the same order: bit-identical
    assert torch.equal(vk_c, vk_expected)
    assert torch.equal(ks_c, ks_expected)


def test_carried_state_makes_chunks_equal_to_attending_over_everything():
    """A chunk attending to the state of earlier chunks sees exactly what it would see if all tokens
    so far were one sequence (the last chunk's rows of full bidirectional attention)."""
    torch.manual_seed(1)
    B, H, D = 1, 2, 12
    sizes = [7, 5, 9]
    N = sum(sizes)
    q, k, v = (torch.randn(B, N, H, D) for _ in range(3))
    angles = torch.rand(N, D // 2) * 3
    cos, sin = angles.cos(), angles.sin()
    full, vk_full, ks_full = chunk_linear_attention_reference(q, k, v, cos, sin)

    vk = ks = None
    start = 0
    for n in sizes:
        sl = slice(start, start + n)
        out, vk_c, ks_c = chunk_linear_attention_reference(q[:, sl], k[:, sl], v[:, sl], cos[sl], sin[sl], vk, ks)
        vk, ks = (vk_c, ks_c) if vk is None else (vk + vk_c, ks + ks_c)
        start += n
    torch.testing.assert_close(out, full[:, -sizes[-1]:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vk, vk_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ks, ks_full, rtol=1e-5, atol=1e-5)


def test_cpu_auto_backend_is_torch_and_bad_inputs_are_rejected():
    q = k = v = torch.randn(1, 4, 2, 8)
    cos, sin = torch.ones(4, 4), torch.zeros(4, 4)
    a = chunk_linear_attention(q, k, v, cos, sin)
    b = chunk_linear_attention_reference(q, k, v, cos, sin)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="backend"):
        chunk_linear_attention(q, k, v, cos, sin, backend="cuda")
    with pytest.raises(ValueError, match="cos/sin"):
        chunk_linear_attention(q, k, v, cos[:, :3], sin[:, :3])
    with pytest.raises(ValueError, match="even"):
        chunk_linear_attention(*(torch.randn(1, 4, 2, 7),) * 3, torch.ones(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="both"):
        chunk_linear_attention(q, k, v, cos, sin, vk=torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="vk state"):
        chunk_linear_attention(q, k, v, cos, sin, torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 8))

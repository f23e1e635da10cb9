"""Triton kernels equal their PyTorch references, run by Triton's CPU interpreter.

Not collected by a plain `pytest` run (no test_ prefix): Triton picks interpreter or compiler
once, when it is first imported, and in a whole-suite session something imports it before any
test module could set TRITON_INTERPRET. `test_triton_kernels.py` therefore runs this file in a
fresh interpreter with TRITON_INTERPRET=1; to run it directly:

    TRITON_INTERPRET=1 python -m pytest -q tests/kernels/triton_interpreter_checks.py
"""
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 in the environment (see the module docstring)", allow_module_level=True)
pytest.importorskip("triton")

from sana_serve.kernels._triton import is_interpreted  # noqa: E402
from sana_serve.kernels.linear_attention import (  # noqa: E402
    _state_kernel,
    chunk_linear_attention,
    chunk_linear_attention_reference,
    chunk_linear_attention_triton,
)
from sana_serve.kernels.nvfp4 import nvfp4_linear_reference, quantize_nvfp4  # noqa: E402
from sana_serve.kernels.nvfp4_gemm import nvfp4_linear, nvfp4_linear_triton  # noqa: E402

RTOL = 1e-5


def test_kernels_run_in_the_interpreter():
    assert is_interpreted(_state_kernel)


def assert_rel_close(actual, expected, rtol=RTOL):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = expected.abs().max().clamp(min=1e-30)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= rtol, f"max relative error {err:.3g} > {rtol:g}"


def attention_inputs(B, N, H, D, seed, state=True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, N, H, D, generator=g) for _ in range(3))
    angles = torch.rand(N, D // 2, generator=g) * 20
    vk = torch.randn(B, H, D, D, generator=g) * 4 if state else None
    ks = torch.rand(B, H, D, generator=g) * 50 if state else None
    return q, k, v, angles.cos(), angles.sin(), vk, ks


@pytest.mark.parametrize(
    "B, N, H, D, split_tokens, block_n",
    [
        (1, 16, 1, 16, None, 32),  # one tile, single split
        (2, 37, 3, 12, 16, 16),  # N, D/2 not powers of two; 3 state splits, partial last tile
        (1, 100, 2, 20, 32, 32),  # 4 splits, tail of 4 tokens
        (1, 45, 2, 112, None, 32),  # the released model's head dim (padded to 128 in registers)
    ],
)
@pytest.mark.parametrize("state", [True, False])
def test_chunk_linear_attention_matches_reference(B, N, H, D, split_tokens, block_n, state):
    inputs = attention_inputs(B, N, H, D, seed=B * 1000 + N * 10 + D, state=state)
    got = chunk_linear_attention_triton(*inputs, split_tokens=split_tokens, block_n=block_n)
    want = chunk_linear_attention_reference(*inputs)
    for actual, expected in zip(got, want):
        assert_rel_close(actual, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("state", [True, False])
def test_chunk_linear_attention_reads_16_bit_inputs_as_they_are(dtype, state):
    """bf16/fp16 q, k, v go into the kernel without an upcast pass; it computes in fp32, so it
    equals the reference (which upcasts first) on the same 16-bit values. The released head dim,
    autotuned tiles (the interpreter's one config)."""
    q, k, v, cos, sin, vk, ks = attention_inputs(1, 75, 3, 112, seed=21, state=state)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    got = chunk_linear_attention_triton(q, k, v, cos, sin, vk, ks)
    want = chunk_linear_attention_reference(q, k, v, cos, sin, vk, ks)
    for actual, expected in zip(got, want):
        assert_rel_close(actual, expected)


def test_chunk_linear_attention_state_slices_need_not_be_whole_tiles():
    """split_tokens that is not a multiple of the token tile: each slice masks its own end."""
    inputs = attention_inputs(1, 70, 2, 16, seed=5)
    want = chunk_linear_attention_reference(*inputs)
    for split in (20, 7, 70):
        got = chunk_linear_attention_triton(*inputs, split_tokens=split, block_n=16)
        for actual, expected in zip(got, want):
            assert_rel_close(actual, expected)


def test_chunk_linear_attention_strided_inputs_and_backend_flag():
    """q, k, v as views into one packed projection (non-contiguous), chosen via backend='triton'."""
    g = torch.Generator().manual_seed(3)
    B, N, H, D = 2, 24, 2, 16
    qkv = torch.randn(B, N, 3, H, D, generator=g)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    _, _, _, cos, sin, vk, ks = attention_inputs(B, N, H, D, seed=4)
    got = chunk_linear_attention(q, k, v, cos, sin, vk, ks, backend="triton")
    want = chunk_linear_attention(q, k, v, cos, sin, vk, ks, backend="torch")
    for actual, expected in zip(got, want):
        assert_rel_close(actual, expected)


@pytest.mark.parametrize(
    "M, K, N, lead",
    [
        (8, 64, 32, ()),  # exact tiles
        (5, 20, 7, ()),  # K not a multiple of 16 (padded block), tiny M, N
        (33, 100, 70, ()),  # nothing a multiple of its block
        (6, 48, 40, (2,)),  # 3-D activations
    ],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_nvfp4_gemm_matches_reference(M, K, N, lead, with_bias):
    g = torch.Generator().manual_seed(M * 100 + K + N)
    w = torch.randn(N, K, generator=g) * torch.exp(torch.randn(N, 1, generator=g))
    x = torch.randn(*lead, M, K, generator=g)
    bias = torch.randn(N, generator=g) if with_bias else None
    q = quantize_nvfp4(w)
    got = nvfp4_linear_triton(x, q, bias)
    assert_rel_close(got, nvfp4_linear_reference(x, q, bias))


def test_nvfp4_gemm_small_tiles_and_backend_flag():
    g = torch.Generator().manual_seed(9)
    w, x, bias = torch.randn(50, 96, generator=g), torch.randn(21, 96, generator=g), torch.randn(50, generator=g)
    q = quantize_nvfp4(w)
    expected = nvfp4_linear_reference(x, q, bias)
    assert_rel_close(nvfp4_linear_triton(x, q, bias, block_m=16, block_n=16, block_k=32), expected)
    assert_rel_close(nvfp4_linear(x, q, bias, backend="triton"), expected)


def test_nvfp4_gemm_16_bit_activations():
    """16-bit activations: 16-bit dots, fp32 accumulation. fp16 only: Triton 3.x's interpreter
    computes `tl.dot` on bf16 operands wrongly (errors ~1e10 on a plain 16x16 bf16 dot), so the
    bf16 path of this kernel (the CUDA default) is checked only on a GPU (bench/gpu_check.py)."""
    dtype = torch.float16
    g = torch.Generator().manual_seed(10)
    w, x, bias = torch.randn(40, 96, generator=g), torch.randn(3, 17, 96, generator=g).to(dtype), torch.randn(40, generator=g)
    q = quantize_nvfp4(w)
    got = nvfp4_linear_triton(x, q, bias)
    expected = nvfp4_linear_reference(x, q, bias)  # fp32 math, rounded to x's dtype at the end
    assert got.dtype == dtype
    # the kernel rounds the decoded weights to fp16 before the dot (11 bits)
    assert_rel_close(got.float(), expected.float(), rtol=2e-3)

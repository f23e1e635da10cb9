"""NVFP4 format: bit-exact against NVIDIA ModelOpt, round-trip bounds, layout and size."""
import warnings
import zlib

import pytest
import torch

from sana_serve.kernels.nvfp4 import (
    E2M1_VALUES,
    NVFP4Weight,
    dequantize_nvfp4,
    nvfp4_linear_reference,
    quantize_nvfp4,
    unpack_nvfp4_codes,
)
from sana_serve.kernels.nvfp4_gemm import fp4_tensor_cores_available, nvfp4_linear, swizzle_block_scales


@pytest.fixture(scope="module")
def NVFP4QTensor():
    pytest.importorskip("modelopt")  # `pip install nvidia-modelopt` (the dev extra); ~10 s to import
    with warnings.catch_warnings():  # its import warns about untested transformers versions
        warnings.simplefilter("ignore")
        from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    return NVFP4QTensor


def random_weight(shape, seed, kind="normal", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    if kind == "heavy":  # magnitudes over ~8 decades: exercises fp8 subnormal / clamped block scales
        w = w * torch.exp(3 * torch.randn(shape, generator=g))
    elif kind == "sparse":  # whole zero blocks, and blocks that are almost zero
        w = w * (torch.rand(shape, generator=g) < 0.3)
        w[::3] *= 1e-6
        w[0, 0] = 1.0  # never all zero (ModelOpt returns NaN scales then; see test_all_zero_weight...)
    return w.to(dtype)


def exact_ties_weight(rows, cols, seed):
    """Values that land exactly on E2M1 rounding boundaries after scaling.

    w[0, 0] = 6 * 448 makes the global scale exactly 1; every other block holds ±6·2^m, so its block
    scale is exactly 2^m and each value divided by it is one of the listed ties or grid points.
    """
    g = torch.Generator().manual_seed(seed)
    pattern = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0,
                            -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, -6.0])
    perm = torch.stack([torch.randperm(16, generator=g) for _ in range(rows * cols // 16)])
    w = pattern[perm].view(rows, cols) * 2.0 ** torch.randint(-4, 4, (rows, 1), generator=g)
    w[0, :16] = 0.0
    w[0, 0] = 6 * 448
    return w


def assert_same_as_modelopt(NVFP4QTensor, w):
    ref, ref_scales, ref_global = NVFP4QTensor.quantize(w.clone(), 16)
    q = quantize_nvfp4(w, 16)
    assert q.packed.dtype == torch.uint8 and q.scales.dtype == torch.float8_e4m3fn
    assert q.global_scale.dtype == torch.float32 and q.global_scale.ndim == 0
    assert torch.equal(q.packed, ref._quantized_data)
    assert torch.equal(q.scales.view(torch.uint8), ref_scales.view(torch.uint8))  # bitwise
    assert torch.equal(q.global_scale, ref_global)
    return q, (ref, ref_scales, ref_global)


@pytest.mark.parametrize("shape", [(64, 256), (48, 80), (7, 20), (3, 1), (16, 1000), (1, 17), (112, 2240)])
@pytest.mark.parametrize("kind", ["normal", "heavy", "sparse"])
def test_quantize_is_bit_exact_with_modelopt(NVFP4QTensor, shape, kind):
    seed = zlib.crc32(repr((shape, kind)).encode())  # fresh data per case, same every run
    assert_same_as_modelopt(NVFP4QTensor, random_weight(shape, seed, kind))


@pytest.mark.parametrize("shape", [(32, 64), (20, 48)])
def test_exact_ties_round_like_modelopt(NVFP4QTensor, shape):
    w = exact_ties_weight(*shape, seed=shape[0])
    q, _ = assert_same_as_modelopt(NVFP4QTensor, w)
    assert q.global_scale.item() == 1.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_match_modelopt(NVFP4QTensor, dtype):
    assert_same_as_modelopt(NVFP4QTensor, random_weight((32, 96), 7, dtype=dtype))


def test_dequantize_is_bit_exact_with_modelopt(NVFP4QTensor):
    w = random_weight((40, 128), 11, "heavy")
    q, (ref, scales, global_scale) = assert_same_as_modelopt(NVFP4QTensor, w)
    expected = ref.dequantize(dtype=torch.float32, scale=scales, double_scale=global_scale, block_sizes={-1: 16})
    assert torch.equal(dequantize_nvfp4(q), expected)


def test_padded_in_features_match_modelopt_and_crop_on_dequantize(NVFP4QTensor):
    """in % 16 != 0: ModelOpt zero-pads to a whole block (its own dequantize then fails on the
    padded tensor); we store the same padded bytes and crop back to the real shape."""
    w = random_weight((24, 37), 5)
    q, _ = assert_same_as_modelopt(NVFP4QTensor, w)
    assert q.packed.shape == (24, 24) and q.scales.shape == (24, 3) and q.shape == (24, 37)
    assert torch.all(unpack_nvfp4_codes(q.packed)[:, 37:] == 0)
    padded = torch.nn.functional.pad(w, (0, 11))
    ref, scales, global_scale = NVFP4QTensor.quantize(padded.clone(), 16)
    expected = ref.dequantize(dtype=torch.float32, scale=scales, double_scale=global_scale, block_sizes={-1: 16})
    deq = dequantize_nvfp4(q)
    assert deq.shape == (24, 37)
    assert torch.equal(deq, expected[:, :37])


def test_known_codes_round_half_to_even():
    """Without ModelOpt: with global scale 1 and block scale 1 the codes are the E2M1 RNE grid."""
    w = torch.zeros(2, 16)
    w[0, 0] = 6 * 448  # global scale = 1; row 1's block amax 6 -> block scale 1
    w[1] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -0.1, 0.0, 0.3, 2.9, 4.9, 5.1, -6.0, -0.75])
    q = quantize_nvfp4(w)
    assert q.global_scale.item() == 1.0 and q.scales[1, 0].float().item() == 1.0
    codes = unpack_nvfp4_codes(q.packed)[1].tolist()
    values = [E2M1_VALUES[c] for c in codes]
    assert values == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 0.0, 0.0, 0.5, 3.0, 4.0, 6.0, -6.0, -1.0]
    assert codes[8] == 8  # -0.1 rounds to zero but keeps its sign bit, like ModelOpt
    assert codes[0] == 0 and codes[14] == 15


def test_round_trip_error_bounds():
    w = random_weight((96, 320), 3, "heavy")
    q = quantize_nvfp4(w)
    deq = dequantize_nvfp4(q)
    blocks, deq_blocks = w.view(96, -1, 16), deq.view(96, -1, 16)
    step = (q.scales.float() * q.global_scale).unsqueeze(-1)  # one unit of the E2M1 grid in this block
    amax = blocks.abs().amax(-1, keepdim=True)
    # nearest grid point: at most half of the widest gap (4 -> 6) away, plus any clipping above 6 units
    bound = (step * 1.0 + (amax - 6 * step).clamp(min=0)) * (1 + 1e-6)
    assert torch.all((deq_blocks - blocks).abs() <= bound)
    assert torch.all(torch.sign(deq)[deq != 0] == torch.sign(w)[deq != 0])

    gaussian = random_weight((256, 512), 4)
    g_deq = dequantize_nvfp4(quantize_nvfp4(gaussian))
    rel = ((g_deq - gaussian).norm() / gaussian.norm()).item()
    assert 0.05 < rel < 0.12  # E2M1 with a per-16 scale on Gaussian weights: ~0.095

    # values already on the grid (times their block scale) come back exactly
    exact = exact_ties_weight(16, 64, seed=9)
    on_grid = dequantize_nvfp4(quantize_nvfp4(exact))
    again = dequantize_nvfp4(quantize_nvfp4(on_grid))
    assert torch.equal(again, on_grid)


def test_resident_bytes_are_about_4_5_bits_per_weight():
    w = random_weight((256, 1024), 8)
    q = quantize_nvfp4(w)
    assert q.packed.shape == (256, 512) and q.scales.shape == (256, 64)
    assert q.nbytes == 256 * 512 + 256 * 64 + 4
    assert abs(q.bits_per_weight - 4.5) < 0.01
    assert q.nbytes <= 0.32 * w.numel() * 2  # vs bf16


def test_all_zero_weight_dequantizes_to_zeros():
    q = quantize_nvfp4(torch.zeros(4, 32))  # ModelOpt gives NaN scales here (0/0)
    assert q.global_scale.item() == 0.0
    assert torch.all(q.scales.float() == 1.0) and torch.all(q.packed == 0)
    assert torch.equal(dequantize_nvfp4(q), torch.zeros(4, 32))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        quantize_nvfp4(torch.randn(16))
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_nvfp4(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="even"):
        quantize_nvfp4(torch.randn(4, 16), block=7)
    with pytest.raises(ValueError, match="floating"):
        quantize_nvfp4(torch.ones(4, 16, dtype=torch.int32))


def test_linear_reference_is_a_linear_with_the_dequantized_weight():
    w, x, b = random_weight((24, 40), 1), random_weight((3, 5, 40), 2), random_weight((24,), 3)
    q = quantize_nvfp4(w)
    y = nvfp4_linear_reference(x, q, b)
    assert y.shape == (3, 5, 24)
    torch.testing.assert_close(y, x @ dequantize_nvfp4(q).T + b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="features"):
        nvfp4_linear_reference(torch.randn(2, 41), q)


def test_cpu_auto_backend_is_the_reference_and_fp4_is_guarded():
    q = quantize_nvfp4(random_weight((32, 64), 4))
    x = random_weight((4, 64), 5)
    assert torch.equal(nvfp4_linear(x, q), nvfp4_linear_reference(x, q))
    assert not fp4_tensor_cores_available("cpu")
    with pytest.raises(RuntimeError, match="Blackwell"):
        nvfp4_linear(x, q, backend="fp4")


def test_swizzled_scales_follow_the_cublas_128x4_layout():
    g = torch.Generator().manual_seed(0)
    for rows, cols in [(128, 4), (130, 7), (1, 1), (300, 12)]:
        scales = torch.randint(1, 255, (rows, cols), generator=g, dtype=torch.uint8)
        flat = swizzle_block_scales(scales.view(torch.float8_e4m3fn)).view(torch.uint8)
        col_tiles = -(-cols // 4)
        assert flat.numel() == 128 * -(-rows // 128) * 4 * col_tiles
        for i in range(rows):  # cuBLAS docs, "1D block scaling factors layout"
            for j in range(cols):
                offset = 512 * ((i // 128) * col_tiles + j // 4) + (i % 128 % 32) * 16 + (i % 128 // 32) * 4 + j % 4
                assert flat[offset] == scales[i, j]
        try:  # PyTorch's own helper, when its testing module is importable
            from torch.testing._internal.common_quantized import to_blocked
        except Exception:
            continue
        assert torch.equal(flat, to_blocked(scales))


@pytest.mark.skipif(not fp4_tensor_cores_available(), reason="needs a Blackwell GPU (sm_100/sm_120); untested here")
def test_fp4_tensor_cores_match_w4a4_emulation():
    from sana_serve.kernels.nvfp4_gemm import nvfp4_linear_fp4

    torch.manual_seed(0)
    w, x, b = torch.randn(256, 512), torch.randn(64, 512), torch.randn(256)
    q = quantize_nvfp4(w).to("cuda")
    y = nvfp4_linear_fp4(x.cuda(), q, b.cuda()).float().cpu()
    emulated = dequantize_nvfp4(quantize_nvfp4(x)) @ dequantize_nvfp4(q.to("cpu")).T + b
    torch.testing.assert_close(y, emulated, rtol=2e-2, atol=2e-2 * emulated.abs().max().item())


def test_non_contiguous_weight_and_device_moves():
    w = random_weight((32, 16), 6).T  # a transposed view
    q = quantize_nvfp4(w)
    assert torch.equal(q.packed, quantize_nvfp4(w.contiguous()).packed)
    moved = q.to("cpu")
    assert isinstance(moved, NVFP4Weight) and moved.shape == q.shape and moved.block_size == 16

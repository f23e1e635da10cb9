"""NVFP4 linear layers on GPU: a Triton weight-only GEMM, and Blackwell's FP4 tensor cores.

- `nvfp4_linear_triton`: y = x @ dequant(W).T + b with W kept packed in memory. Each program
  loads bytes of packed weights and their e4m3 block scales, decodes them in registers with
  integer/bit operations (no lookup tables, no fp8 hardware needed, so it runs on any GPU and
  in the interpreter), and accumulates in fp32. Each byte holds an even and an odd column, so x
  is loaded as its even and odd columns and the two products summed: no nibble interleaving.
  The decoded weights are bit-identical to `dequantize_nvfp4`; only summation order differs
  from the reference.
- `nvfp4_linear_fp4`: W4A4 on Blackwell (sm_100 / sm_120) through `torch._scaled_mm` with
  float4_e2m1fn_x2 operands and swizzled float8_e4m3fn block scales; activations are quantized
  to NVFP4 on the fly (per-tensor global scale from their amax). UNTESTED: this project has no
  GPU; it is written from PyTorch's own `_scaled_mm` checks and tests and is guarded by a
  capability check. It differs numerically from the weight-only paths (activations are 4-bit).
- `nvfp4_linear`: picks one. backend "auto": FP4 tensor cores on Blackwell, Triton on other
  CUDA devices, the PyTorch reference on CPU, each falling back to the next (logged once) if it
  fails; "fp4" | "triton" | "torch" force one.
"""
from __future__ import annotations

import torch

from sana_serve.kernels._triton import (KernelFallback, autotune, cdiv, check_triton_device, jit, jitted, tl, triton,
                                        triton_available)
from sana_serve.kernels.nvfp4 import NVFP4Weight, nvfp4_linear_reference, quantize_nvfp4

__all__ = [
    "nvfp4_linear",
    "nvfp4_linear_reference",
    "nvfp4_linear_triton",
    "nvfp4_linear_fp4",
    "fp4_tensor_cores_available",
    "swizzle_block_scales",
]


def _gemm_configs():
    # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): small-M tiles for the text side and small batches,
    # large ones for the video tokens (thousands of rows per request)
    shapes = [(16, 64, 64, 4, 3), (32, 64, 64, 4, 3), (64, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 3),
              (128, 128, 64, 8, 3), (128, 128, 128, 8, 2), (64, 256, 64, 8, 3), (128, 256, 64, 8, 3)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=st)
            for m, n, k, w, st in shapes]


def _interpreter_config():
    return triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4)


@autotune(_gemm_configs, key=["M", "N", "K", "X_FP32"], interpreter_config=_interpreter_config)
@jit
def _nvfp4_gemm_kernel(
    x_ptr, packed_ptr, scales_ptr, gscale_ptr, bias_ptr, out_ptr,
    M, N, K, stride_packed, stride_scales,
    sxm, sxk, som, son,
    GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, X_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, BLOCK_K // 2)  # byte index inside one K step: columns 2j and 2j+1
    mask_m = offs_m < M
    mask_n = offs_n < N
    global_scale = tl.load(gscale_ptr)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        col = k0 + 2 * offs_j  # even column of each byte
        mask_col = col < K
        mask_w = mask_n[:, None] & mask_col[None, :]
        byte = tl.load(packed_ptr + offs_n[:, None] * stride_packed + (k0 // 2 + offs_j)[None, :],
                       mask=mask_w, other=0).to(tl.int32)
        sbits = tl.load(scales_ptr + offs_n[:, None] * stride_scales + (col // GROUP)[None, :],
                        mask=mask_w, other=0).to(tl.int32)
        # float8_e4m3fn block scale (always positive): exponent bias 7, subnormals m * 2**-9
        s_exp = (sbits >> 3) & 15
        s_man = sbits & 7
        s_normal = (((s_exp + 120) << 23) | (s_man << 20)).to(tl.float32, bitcast=True)
        scale = tl.where(s_exp == 0, s_man.to(tl.float32) * 0.001953125, s_normal)
        block_scale = scale * global_scale  # same product as dequantize_nvfp4
        # E2M1 codes: sign << 3 | exp << 1 | man; value = (1 + man/2) * 2**(exp-1), or man/2 if exp == 0
        lo = byte & 15
        hi = (byte >> 4) & 15
        lo_exp = (lo >> 1) & 3
        hi_exp = (hi >> 1) & 3
        lo_man = lo & 1
        hi_man = hi & 1
        lo_val = tl.where(lo_exp == 0, lo_man.to(tl.float32) * 0.5,
                          (((lo_exp + 126) << 23) | (lo_man << 22)).to(tl.float32, bitcast=True))
        hi_val = tl.where(hi_exp == 0, hi_man.to(tl.float32) * 0.5,
                          (((hi_exp + 126) << 23) | (hi_man << 22)).to(tl.float32, bitcast=True))
        w_even = tl.where((lo >> 3) == 1, -lo_val, lo_val) * block_scale  # (BLOCK_N, BLOCK_K/2)
        w_odd = tl.where((hi >> 3) == 1, -hi_val, hi_val) * block_scale

        x_cols = x_ptr + offs_m[:, None] * sxm + col[None, :] * sxk
        x_even = tl.load(x_cols, mask=mask_m[:, None] & mask_col[None, :], other=0.0)
        x_odd = tl.load(x_cols + sxk, mask=mask_m[:, None] & ((col + 1) < K)[None, :], other=0.0)
        if X_FP32:
            acc += tl.dot(x_even, tl.trans(w_even), input_precision="ieee")
            acc += tl.dot(x_odd, tl.trans(w_odd), input_precision="ieee")
        else:  # bf16 / fp16 activations: weights in the same type, fp32 accumulation
            acc += tl.dot(x_even, tl.trans(w_even.to(x_even.dtype)))
            acc += tl.dot(x_odd, tl.trans(w_odd.to(x_odd.dtype)))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None] * som + offs_n[None, :] * son
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _check_linear(x: torch.Tensor, q: NVFP4Weight, bias: torch.Tensor | None) -> None:
    if x.shape[-1] != q.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features, the weight expects {q.shape[1]}")
    if bias is not None and bias.shape != (q.shape[0],):
        raise ValueError(f"bias must be ({q.shape[0]},), got {tuple(bias.shape)}")


def nvfp4_linear_triton(x: torch.Tensor, q: NVFP4Weight, bias: torch.Tensor | None = None, *,
                        block_m: int | None = None, block_n: int = 64, block_k: int = 64, num_warps: int = 4) -> torch.Tensor:
    """Weight-only NVFP4 GEMM in Triton: x (..., in) fp32/bf16/fp16 -> (..., out) in x's dtype.

    block_m None: tiles autotuned per (M, N, K) (one fixed config under the interpreter); given,
    block_m/block_n/block_k/num_warps fix them (tests)."""
    _check_linear(x, q, bias)
    check_triton_device(_nvfp4_gemm_kernel, x, q.packed)
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"x must be fp32, bf16 or fp16, got {x.dtype}")
    if block_m is None:
        kernel, tiles = _nvfp4_gemm_kernel, {}
        grid = lambda meta: (cdiv(M, meta["BLOCK_M"]), cdiv(N, meta["BLOCK_N"]))  # noqa: E731
    else:
        if any(b & (b - 1) for b in (block_m, block_n, block_k)) or min(block_m, block_n) < 16 or block_k < 32:
            raise ValueError("block sizes must be powers of two, block_m and block_n >= 16, block_k >= 32")
        kernel = jitted(_nvfp4_gemm_kernel)
        tiles = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": num_warps}
        grid = lambda meta: (cdiv(M, block_m), cdiv(N, block_n))  # noqa: E731
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    M, K = x2.shape
    N = q.shape[0]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0:
        return out.view(*lead, N)
    packed, scales = q.packed.contiguous(), q.scales.contiguous().view(torch.uint8)
    gscale = q.global_scale.reshape(1).to(device=x.device, dtype=torch.float32)
    bias_arg = bias.contiguous() if bias is not None else gscale  # a dummy pointer when there is no bias
    kernel[grid](
        x2, packed, scales, gscale, bias_arg, out,
        M, N, K, packed.stride(0), scales.stride(0),
        x2.stride(0), x2.stride(1), out.stride(0), out.stride(1),
        GROUP=q.block_size, HAS_BIAS=bias is not None, X_FP32=x.dtype == torch.float32, **tiles,
    )
    return out.view(*lead, N)


# --------------------------------------------------------------------------------------------
# Blackwell FP4 tensor cores (UNTESTED here: no GPU in this project)


def swizzle_block_scales(scales: torch.Tensor) -> torch.Tensor:
    """[rows, cols] block scales -> the flat 128x4-tiled layout cuBLAS wants for block-scaled GEMMs.

    Rows are padded to 128 and columns to 4 (with zeros); each 128x4 tile is stored as 32x16 where
    row r, column c of the tile lands at (r % 32) * 16 + (r // 32) * 4 + c ("32_4_4" swizzle, the
    cuBLAS block-scaling-factor layout; same as PyTorch's `to_blocked` test helper). Tiles are laid
    out row-block major. Works for any 1-byte dtype (done on a uint8 view).
    """
    dtype = scales.dtype
    rows, cols = scales.shape
    row_blocks, col_blocks = cdiv(rows, 128), cdiv(cols, 4)
    raw = scales.view(torch.uint8)
    padded = torch.zeros(row_blocks * 128, col_blocks * 4, dtype=torch.uint8, device=scales.device)
    padded[:rows, :cols] = raw
    tiles = padded.view(row_blocks, 128, col_blocks, 4).permute(0, 2, 1, 3)  # (rb, cb, 128, 4)
    swizzled = tiles.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(-1, 32, 16)  # r = r_hi*32 + r_lo -> [r_lo, r_hi*4 + c]
    return swizzled.flatten().view(dtype)


def fp4_tensor_cores_available(device: torch.device | str | None = None) -> bool:
    """Blackwell (sm_100 data centre, sm_120 RTX 50xx) with a torch that has float4_e2m1fn_x2."""
    if not torch.cuda.is_available() or not hasattr(torch, "float4_e2m1fn_x2"):
        return False
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        return False
    major, _minor = torch.cuda.get_device_capability(device)
    return major in (10, 12)


def _fp4_shapes_ok(q: NVFP4Weight) -> bool:
    # cuBLAS block-scaled FP4: K (unpacked) a multiple of 32, N a multiple of 16, block size 16
    return q.block_size == 16 and q.padded_in_features % 32 == 0 and q.shape[0] % 16 == 0


def nvfp4_linear_fp4(x: torch.Tensor, q: NVFP4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """W4A4 NVFP4 GEMM on Blackwell tensor cores. UNTESTED (no GPU here); guarded by the caller.

    x is quantized per call to NVFP4 (dynamic per-tensor global scale), both operands' block
    scales are swizzled, and `torch._scaled_mm` computes Σ (a·sa)(b·sb); the two global scales
    are applied to the output afterwards (cuBLAS has no per-tensor scale for this recipe), then
    the bias, as torchao's NVFP4 path does.
    """
    _check_linear(x, q, bias)
    if not fp4_tensor_cores_available(x.device):
        raise RuntimeError("FP4 tensor cores need a Blackwell GPU (sm_100/sm_120) and torch with float4_e2m1fn_x2")
    if not _fp4_shapes_ok(q):
        raise ValueError(f"FP4 GEMM needs padded in-features % 32 == 0 and out-features % 16 == 0, got {q.shape}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    # pads in-features to q's padded width (both are multiples of 16); no finiteness check, so no
    # host synchronisation per call (a NaN input gives NaN outputs, as in the other paths)
    xq = quantize_nvfp4(x2, 16, check_finite=False)
    if xq.padded_in_features != q.padded_in_features:
        raise AssertionError("activation and weight padding disagree")
    a = xq.packed.view(torch.float4_e2m1fn_x2)  # (M, K/2), row-major
    b = q.packed.view(torch.float4_e2m1fn_x2).t()  # (K/2, N), column-major
    # bf16 output as in PyTorch's and torchao's NVFP4 tests (the block-scaled cuBLAS path is
    # exercised there with bf16); the per-tensor scales are applied afterwards in fp32.
    y = torch._scaled_mm(
        a, b,
        swizzle_block_scales(xq.scales), swizzle_block_scales(q.scales),
        out_dtype=torch.bfloat16,
    )
    y = y.float() * (xq.global_scale * q.global_scale)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).view(*lead, q.shape[0])


FP4_FALLBACK = KernelFallback("NVFP4 FP4 tensor-core GEMM", "the Triton weight-only GEMM")
TRITON_FALLBACK = KernelFallback("NVFP4 weight-only GEMM", "the PyTorch reference")


def nvfp4_linear(x: torch.Tensor, q: NVFP4Weight, bias: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """y = x @ W.T + b for an NVFP4 weight. backend: "auto" | "fp4" | "triton" | "torch".

    "auto" picks FP4 tensor cores on Blackwell, Triton on other CUDA devices, and the PyTorch
    reference on CPU; a GPU kernel that fails (compile, launch, or anything it raises) is logged
    once and the next one down is used from then on. A forced backend lets errors through.
    """
    if backend == "auto":
        _check_linear(x, q, bias)  # the caller's mistakes are errors, not fallbacks
        if x.is_cuda and not FP4_FALLBACK.failed and _fp4_shapes_ok(q) and fp4_tensor_cores_available(x.device):
            try:
                return nvfp4_linear_fp4(x, q, bias)
            except Exception as err:  # noqa: BLE001 - untested path: fall back rather than take the server down
                FP4_FALLBACK.record(err)
        if x.is_cuda and triton_available() and not TRITON_FALLBACK.failed:
            try:
                return nvfp4_linear_triton(x, q, bias)
            except Exception as err:  # noqa: BLE001 - Triton raises many types when it cannot build or launch
                TRITON_FALLBACK.record(err)
        return nvfp4_linear_reference(x, q, bias)
    if backend == "torch":
        return nvfp4_linear_reference(x, q, bias)
    if backend == "triton":
        return nvfp4_linear_triton(x, q, bias)
    if backend == "fp4":
        return nvfp4_linear_fp4(x, q, bias)
    raise ValueError(f"backend must be 'auto', 'fp4', 'triton' or 'torch', got {backend!r}")

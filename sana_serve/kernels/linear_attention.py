"""Chunked ReLU linear attention with a carried state: PyTorch reference and Triton kernel.

For one chunk of N tokens (bidirectional inside the chunk, causal across chunks through the
state of earlier chunks), per batch b and head h, with φ = ReLU and rot = interleaved RoPE:

    vk_c[e, d]  = Σ_n v[n, e] · rot(φk)[n, d]          (the chunk's contribution, (d_v, d_k))
    k_sum_c[d]  = Σ_n φk[n, d]
    out[n, e]   = Σ_d rot(φq)[n, d] · (vk + vk_c)[e, d] / (Σ_d φq[n, d] · (k_sum + k_sum_c)[d] + 1e-15)

RoPE is in the numerator only (the denominator uses the unrotated φq and k_sum). This is exactly
`engine.model.attention.LinearSelfAttention` after its q/k RMSNorm; inputs are that norm's output
(before the ReLU). The reference below repeats the engine's ops one for one (kernels must not
import the engine; tests check the two agree).

Triton design: two passes, each reading its inputs once.
  1. state pass, grid (B*H, S): program (bh, s) reads a slice of `split_tokens` tokens of k and
     v and writes its partial vk (D×D) and k_sum to a buffer [S, B, H, ...]; torch then sums the S
     partials (a deterministic reduction, no atomics) and adds the carried state.
  2. output pass, grid (N/BLOCK_N, B*H): each program reads one tile of q and the (small, L2-
     resident) total state and writes its output tile.
So q, k and v are each read exactly once. A single program per (b, h) doing both phases would
also read everything once, but gives only B*H programs (20 for the 2B model at batch 1), far too
few to fill a GPU; splitting the token axis keeps hundreds to thousands of programs in flight.
Interleaved RoPE pairs never need shuffling: even and odd features are loaded as separate
(·, D/2) tiles, the state is split into its even and odd d_k columns, and the matmuls are summed.
Head dims that are not a power of two (112 in the released model) are padded with masks.
Inputs are read in their own dtype and computed in fp32; tiles are autotuned (see below).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sana_serve.kernels._triton import (KernelFallback, autotune, cdiv, check_triton_device, jit, jitted, next_pow2,
                                        tl, triton, triton_available)

__all__ = [
    "apply_rope_interleaved",
    "chunk_linear_attention_reference",
    "chunk_linear_attention_triton",
    "chunk_linear_attention",
]

DENOMINATOR_EPS = 1e-15


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) by per-token angles. x: (B, N, H, D); cos/sin: (N, D/2).

    The same ops as the engine's `apply_rope`.
    """
    pairs = x.unflatten(-1, (-1, 2))
    x1, x2 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None], sin[:, None]
    rotated = (torch.addcmul(x1 * cos, x2, sin, value=-1), torch.addcmul(x1 * sin, x2, cos))
    return torch.stack(rotated, dim=-1).flatten(-2)


def _check_inputs(q, k, v, cos, sin, vk, k_sum):
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one (B, N, H, D) shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, N, H, D = q.shape
    if D % 2:
        raise ValueError(f"head dim must be even for interleaved RoPE, got {D}")
    if cos.shape != (N, D // 2) or sin.shape != (N, D // 2):
        raise ValueError(f"cos/sin must be (N, D/2) = ({N}, {D // 2}), got {tuple(cos.shape)}, {tuple(sin.shape)}")
    if vk is not None and vk.shape != (B, H, D, D):
        raise ValueError(f"vk state must be (B, H, D, D) = ({B}, {H}, {D}, {D}), got {tuple(vk.shape)}")
    if k_sum is not None and k_sum.shape != (B, H, D):
        raise ValueError(f"k_sum state must be (B, H, D) = ({B}, {H}, {D}), got {tuple(k_sum.shape)}")
    if (vk is None) != (k_sum is None):
        raise ValueError("pass both vk and k_sum (the carried state) or neither")


def chunk_linear_attention_reference(q, k, v, cos, sin, vk=None, k_sum=None):
    """PyTorch reference. q, k, v (B, N, H, D) before ReLU; state vk (B, H, D, D), k_sum (B, H, D) or None.

    Returns (out (B, N, H, D) fp32, vk_c (B, H, D, D), k_sum_c (B, H, D)): the output and the
    chunk's own contribution to the state (the caller folds it in).
    """
    _check_inputs(q, k, v, cos, sin, vk, k_sum)
    q, k, v = F.relu(q).float(), F.relu(k).float(), v.float()
    q_rot, k_rot = apply_rope_interleaved(q, cos, sin), apply_rope_interleaved(k, cos, sin)

    vk_c = torch.einsum("bnhe,bnhd->bhed", v, k_rot)  # (B, H, d_v, d_k)
    k_sum_c = k.sum(dim=1)  # (B, H, d_k)
    vk_all, k_sum_all = (vk_c, k_sum_c) if vk is None else (vk_c + vk, k_sum_c + k_sum)

    num = torch.einsum("bnhd,bhed->bnhe", q_rot, vk_all)
    den = torch.einsum("bnhd,bhd->bnh", q, k_sum_all).unsqueeze(-1) + DENOMINATOR_EPS
    return num / den, vk_c, k_sum_c


# --------------------------------------------------------------------------------------------
# Triton kernels
#
# Inputs come in the model's dtype (fp32, bf16 or fp16) and are upcast in registers: no extra pass
# over q, k, v. ReLU, RoPE, the state and every accumulator are fp32. The dots' input precision:
# "ieee" for fp32 inputs (an fp32 model asks for fp32 results), "tf32" for 16-bit inputs on a GPU
# (their RoPE-rotated operands are fp32 values; tf32 keeps 10 mantissa bits, more than the 7 or 10
# the inputs carried, and runs on tensor cores). Tile sizes are autotuned per (N, D) on a GPU; the
# interpreter runs one fixed config (benchmarking needs a GPU).


def _state_configs():
    return [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=st)
            for n in (32, 64, 128) for w in (4, 8) for st in (2, 3)]


def _output_configs():
    return [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=2) for n in (16, 32, 64, 128) for w in (4, 8)]


def _interpreter_config():
    return triton.Config({"BLOCK_N": 64}, num_warps=4)


@autotune(_state_configs, key=["N", "D"], interpreter_config=_interpreter_config)
@jit
def _state_kernel(
    k_ptr, v_ptr, cos_ptr, sin_ptr, vk_part_ptr, ks_part_ptr,
    N, H, BH, D, P, split_tokens,
    skb, skn, skh, svb, svn, svh,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr,
):
    """Partial state of one token slice: vk_part[s, b, h] = Σ v ⊗ rot(φk), ks_part[s, b, h] = Σ φk."""
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_p = tl.arange(0, BLOCK_P)  # rotated pair index: features 2p (even) and 2p+1 (odd)
    offs_d = tl.arange(0, BLOCK_D)  # value feature (d_v)
    mask_p = offs_p < P
    mask_d = offs_d < D
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh

    acc_even = tl.zeros((BLOCK_D, BLOCK_P), dtype=tl.float32)  # vk[:, 0::2]
    acc_odd = tl.zeros((BLOCK_D, BLOCK_P), dtype=tl.float32)  # vk[:, 1::2]
    ks_even = tl.zeros((BLOCK_P,), dtype=tl.float32)
    ks_odd = tl.zeros((BLOCK_P,), dtype=tl.float32)
    start = pid_s * split_tokens
    end = tl.minimum(start + split_tokens, N)  # the slice need not be a multiple of the tile
    for i in range(0, split_tokens, BLOCK_N):
        offs_n = start + i + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        mask_np = mask_n[:, None] & mask_p[None, :]
        k_rows = k_base + offs_n[:, None] * skn + 2 * offs_p[None, :]
        k_even = tl.maximum(tl.load(k_rows, mask=mask_np, other=0.0).to(tl.float32), 0.0)
        k_odd = tl.maximum(tl.load(k_rows + 1, mask=mask_np, other=0.0).to(tl.float32), 0.0)
        c = tl.load(cos_ptr + offs_n[:, None] * P + offs_p[None, :], mask=mask_np, other=0.0)
        s = tl.load(sin_ptr + offs_n[:, None] * P + offs_p[None, :], mask=mask_np, other=0.0)
        kr_even = k_even * c - k_odd * s
        kr_odd = k_even * s + k_odd * c
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :],
                    other=0.0).to(tl.float32)
        vt = tl.trans(v)  # (BLOCK_D, BLOCK_N)
        acc_even += tl.dot(vt, kr_even, input_precision=PRECISION)
        acc_odd += tl.dot(vt, kr_odd, input_precision=PRECISION)
        ks_even += tl.sum(k_even, axis=0)
        ks_odd += tl.sum(k_odd, axis=0)

    part = pid_s * BH + pid_bh
    vk_out = vk_part_ptr + part * D * D + offs_d[:, None] * D + 2 * offs_p[None, :]
    mask_dp = mask_d[:, None] & mask_p[None, :]
    tl.store(vk_out, acc_even, mask=mask_dp)
    tl.store(vk_out + 1, acc_odd, mask=mask_dp)
    ks_out = ks_part_ptr + part * D + 2 * offs_p
    tl.store(ks_out, ks_even, mask=mask_p)
    tl.store(ks_out + 1, ks_odd, mask=mask_p)


@autotune(_output_configs, key=["N", "D"], interpreter_config=_interpreter_config)
@jit
def _output_kernel(
    q_ptr, cos_ptr, sin_ptr, vk_ptr, ks_ptr, out_ptr,
    N, H, D, P,
    sqb, sqn, sqh, sob, son, soh,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr,
):
    """out[n, e] = rot(φq[n]) · vk_total[e] / (φq[n] · k_sum_total + eps) for one tile of tokens."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    mask_p = offs_p < P
    mask_d = offs_d < D

    # total state, loaded transposed: vkT_even[p, e] = vk[e, 2p]
    vk_base = vk_ptr + pid_bh * D * D + offs_d[None, :] * D + 2 * offs_p[:, None]
    mask_pd = mask_p[:, None] & mask_d[None, :]
    vkT_even = tl.load(vk_base, mask=mask_pd, other=0.0)
    vkT_odd = tl.load(vk_base + 1, mask=mask_pd, other=0.0)
    ks_even = tl.load(ks_ptr + pid_bh * D + 2 * offs_p, mask=mask_p, other=0.0)
    ks_odd = tl.load(ks_ptr + pid_bh * D + 2 * offs_p + 1, mask=mask_p, other=0.0)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    mask_np = mask_n[:, None] & mask_p[None, :]
    q_rows = q_ptr + b * sqb + h * sqh + offs_n[:, None] * sqn + 2 * offs_p[None, :]
    q_even = tl.maximum(tl.load(q_rows, mask=mask_np, other=0.0).to(tl.float32), 0.0)
    q_odd = tl.maximum(tl.load(q_rows + 1, mask=mask_np, other=0.0).to(tl.float32), 0.0)
    c = tl.load(cos_ptr + offs_n[:, None] * P + offs_p[None, :], mask=mask_np, other=0.0)
    s = tl.load(sin_ptr + offs_n[:, None] * P + offs_p[None, :], mask=mask_np, other=0.0)
    qr_even = q_even * c - q_odd * s
    qr_odd = q_even * s + q_odd * c

    num = tl.dot(qr_even, vkT_even, input_precision=PRECISION)
    num += tl.dot(qr_odd, vkT_odd, input_precision=PRECISION)
    den = tl.sum(q_even * ks_even[None, :], axis=1) + tl.sum(q_odd * ks_odd[None, :], axis=1) + 1e-15
    out = num / den[:, None]
    out_rows = out_ptr + b * sob + h * soh + offs_n[:, None] * son + offs_d[None, :]
    tl.store(out_rows, out, mask=mask_n[:, None] & mask_d[None, :])


INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
STATE_TILE = 128  # the largest autotuned BLOCK_N: state slices are whole multiples of it


def _unit_feature_stride(x: torch.Tensor) -> torch.Tensor:
    """x in its own dtype (upcast happens in the kernel), unit stride on the feature axis (other
    strides are passed to the kernel, so views into a packed projection need no copy)."""
    if x.dtype not in INPUT_DTYPES:
        raise ValueError(f"q, k, v must be fp32, bf16 or fp16, got {x.dtype}")
    return x if x.stride(-1) == 1 else x.contiguous()


def _default_split_tokens(N: int, BH: int, device: torch.device) -> int:
    """Tokens per state-pass program: enough programs to fill the GPU, at least one tile each."""
    tiles = cdiv(N, STATE_TILE)
    if device.type == "cuda":
        target_programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:  # the interpreter: few, large programs are fastest
        target_programs = 1
    splits = max(1, min(tiles, cdiv(target_programs, BH)))
    return cdiv(tiles, splits) * STATE_TILE


def _default_precision(dtype: torch.dtype, device: torch.device) -> str:
    return "tf32" if device.type == "cuda" and dtype != torch.float32 else "ieee"


def chunk_linear_attention_triton(q, k, v, cos, sin, vk=None, k_sum=None, *, split_tokens: int | None = None,
                                  block_n: int | None = None, precision: str | None = None, num_warps: int = 4):
    """Triton version of `chunk_linear_attention_reference` (same arguments and results).

    q, k, v: fp32, bf16 or fp16 (read as they are, computed in fp32). split_tokens: tokens per
    program of the state pass (default: enough programs to fill the GPU). block_n: None autotunes
    the token tiles of both passes (one fixed config under the interpreter); a power of two fixes
    them (with num_warps), for tests. precision: tl.dot input precision, default "ieee" for fp32
    inputs and "tf32" for 16-bit inputs on CUDA (see above).
    """
    _check_inputs(q, k, v, cos, sin, vk, k_sum)
    check_triton_device(_state_kernel, q, k, v, cos, sin)
    B, N, H, D = q.shape
    P, BH = D // 2, B * H
    device = q.device
    if precision is None:
        precision = _default_precision(q.dtype, device)
    q, k, v = _unit_feature_stride(q), _unit_feature_stride(k), _unit_feature_stride(v)
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    BLOCK_D, BLOCK_P = next_pow2(D), next_pow2(P)
    if split_tokens is None:
        split_tokens = _default_split_tokens(N, BH, device)
    if split_tokens <= 0:
        raise ValueError(f"split_tokens must be positive, got {split_tokens}")
    splits = max(1, cdiv(N, split_tokens))
    if block_n is None:  # autotuned
        state_kernel, output_kernel, state_tiles, output_tiles = _state_kernel, _output_kernel, {}, {}
    else:
        block_n = next_pow2(block_n)
        state_kernel, output_kernel = jitted(_state_kernel), jitted(_output_kernel)
        state_tiles = {"BLOCK_N": block_n, "num_warps": num_warps}
        output_tiles = {"BLOCK_N": max(16, min(64, next_pow2(N))), "num_warps": num_warps}

    vk_part = torch.empty(splits, B, H, D, D, dtype=torch.float32, device=device)
    ks_part = torch.empty(splits, B, H, D, dtype=torch.float32, device=device)
    if N > 0:
        state_kernel[(BH, splits)](
            k, v, cos, sin, vk_part, ks_part,
            N, H, BH, D, P, split_tokens,
            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
            BLOCK_D=BLOCK_D, BLOCK_P=BLOCK_P, PRECISION=precision, **state_tiles,
        )
    else:
        vk_part.zero_()
        ks_part.zero_()
    vk_c = vk_part[0] if splits == 1 else vk_part.sum(0)
    k_sum_c = ks_part[0] if splits == 1 else ks_part.sum(0)
    if vk is None:
        vk_all, k_sum_all = vk_c, k_sum_c
    else:
        vk_all = (vk_c + vk.to(device=device, dtype=torch.float32)).contiguous()
        k_sum_all = (k_sum_c + k_sum.to(device=device, dtype=torch.float32)).contiguous()

    out = torch.empty(B, N, H, D, dtype=torch.float32, device=device)
    if N > 0:
        grid = (lambda meta: (cdiv(N, meta["BLOCK_N"]), BH)) if block_n is None else (cdiv(N, output_tiles["BLOCK_N"]), BH)
        output_kernel[grid](
            q, cos, sin, vk_all, k_sum_all, out,
            N, H, D, P,
            q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
            BLOCK_D=BLOCK_D, BLOCK_P=BLOCK_P, PRECISION=precision, **output_tiles,
        )
    return out, vk_c, k_sum_c


TRITON_FALLBACK = KernelFallback("linear attention", "the PyTorch path")


def chunk_linear_attention(q, k, v, cos, sin, vk=None, k_sum=None, backend: str = "auto"):
    """Chunk linear attention with carried state; see the module docstring for the math.

    backend: "auto" (Triton for CUDA tensors when triton is installed, PyTorch otherwise; if the
    Triton kernel fails to compile or launch, it says so once and uses PyTorch from then on),
    "triton" (CUDA, or CPU under TRITON_INTERPRET=1; errors propagate), or "torch".
    Returns (out (B, N, H, D) fp32, vk_c (B, H, D, D), k_sum_c (B, H, D)).
    """
    if backend == "auto":
        if not (q.is_cuda and triton_available()) or TRITON_FALLBACK.failed:
            return chunk_linear_attention_reference(q, k, v, cos, sin, vk, k_sum)
        _check_inputs(q, k, v, cos, sin, vk, k_sum)  # the caller's mistakes are errors, not fallbacks
        try:
            return chunk_linear_attention_triton(q, k, v, cos, sin, vk, k_sum)
        except Exception as err:  # noqa: BLE001 - compile/launch failures: Triton raises many types
            TRITON_FALLBACK.record(err)
            return chunk_linear_attention_reference(q, k, v, cos, sin, vk, k_sum)
    if backend == "torch":
        return chunk_linear_attention_reference(q, k, v, cos, sin, vk, k_sum)
    if backend == "triton":
        return chunk_linear_attention_triton(q, k, v, cos, sin, vk, k_sum)
    raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")

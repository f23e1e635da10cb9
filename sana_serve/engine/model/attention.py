"""Attention pieces of SANA-Video: ReLU linear self-attention with 3-D RoPE, softmax cross-attention.

Parameter names mirror diffusers' `Attention` (to_q, to_k, to_v, to_out.0, norm_q, norm_k) so
that diffusers checkpoints load with strict=True.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sana_serve.engine.model.rows import per_request


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (diffusers' RMSNorm semantics, optional affine)."""

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = True, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if (elementwise_affine and bias) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is None:
            return x.to(dtype)
        x = x.to(self.weight.dtype) * self.weight
        return x + self.bias if self.bias is not None else x


class RotaryEmbedding3D(nn.Module):
    """Wan-style 3-D RoPE: head_dim split into (t, h, w) parts, each a 1-D rotary embedding.

    Computed on the fly for any absolute frame position (no table), so an endless stream never
    runs off the end of a table; positions and frequencies are fp64 like diffusers' tables, so
    the cos/sin values are bit-compatible with them. The tables are built on the model's device:
    only the frequencies (a few dozen numbers per axis) are uploaded, once per device; a new chunk
    position costs a few small device ops and no host round trip.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        self.h_dim = self.w_dim = 2 * (head_dim // 6)
        self.t_dim = head_dim - self.h_dim - self.w_dim
        self.theta = theta
        self._cache: dict = {}
        self._freqs: dict = {}  # (dim, device) -> fp64 frequencies on that device

    def _axis(self, dim: int, start: int, count: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dim, str(device))
        freqs = self._freqs.get(key)
        if freqs is None:  # computed on the host as before (the same fp64 values on every device), uploaded once
            host = 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim))
            freqs = self._freqs[key] = host.to(device)
        positions = torch.arange(start, start + count, dtype=torch.float64, device=device)  # exact integers
        angles = torch.outer(positions, freqs)  # (n, dim/2): one angle per pair
        return angles.cos().float(), angles.sin().float()

    # Eager even under torch.compile: the offset changes every chunk, and tracing it would
    # specialise (and recompile) the graph on each new position.
    @torch.compiler.disable
    def forward(self, frame_offset: int | Sequence[int], frames: int, height: int, width: int,
                device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (frames*height*width, head_dim/2), one value per rotated pair, on `device`.

        A sequence of offsets (one per batch row, for batched requests at different positions)
        gives per-row tables (B, frames*height*width, head_dim/2) unless they are all equal.
        """
        if not isinstance(frame_offset, int):
            offsets = [int(o) for o in frame_offset]
            if len(set(offsets)) == 1:
                return self(offsets[0], frames, height, width, device)
            tables = [self(o, frames, height, width, device) for o in offsets]
            return torch.stack([c for c, _ in tables]), torch.stack([s for _, s in tables])
        key = (frame_offset, frames, height, width, str(device))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        ct, st = self._axis(self.t_dim, frame_offset, frames, device)
        ch, sh = self._axis(self.h_dim, 0, height, device)
        cw, sw = self._axis(self.w_dim, 0, width, device)

        def grid(t, h, w):
            return torch.cat([
                t[:, None, None].expand(frames, height, width, -1),
                h[None, :, None].expand(frames, height, width, -1),
                w[None, None, :].expand(frames, height, width, -1),
            ], dim=-1).reshape(frames * height * width, -1)

        out = (grid(ct, ch, cw), grid(st, sh, sw))
        if len(self._cache) > 64:  # positions change every chunk; keep the cache small
            self._cache.clear()
        self._cache[key] = out
        return out


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) by per-token angles.

    x: (B, N, H, D); cos/sin: (N, D/2), or (B, N, D/2) for per-row positions.
    """
    pairs = x.unflatten(-1, (-1, 2))
    x1, x2 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    rotated = (torch.addcmul(x1 * cos, x2, sin, value=-1), torch.addcmul(x1 * sin, x2, cos))
    return torch.stack(rotated, dim=-1).flatten(-2)


class LinearSelfAttention(nn.Module):
    """ReLU linear attention: out = RoPE(φq)·Σ RoPE(φk)ᵀv / (φq·Σ φk), φ = ReLU after RMSNorm.

    In block-causal mode the sums also include the carried state (the past chunks), and the
    chunk's own contribution is returned so the caller can fold it into the state.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool, out_bias: bool = True, eps: float = 1e-5):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.norm_q = RMSNorm(inner, eps=eps)
        self.norm_k = RMSNorm(inner, eps=eps)
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(dim, inner, bias=bias)
        self.to_v = nn.Linear(dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=out_bias), nn.Dropout(0.0)])
        # "torch" (the code below) or "triton" (kernels.linear_attention: the same math in two
        # passes that read q, k, v once); engine.load.set_kernels picks it per device. With
        # `kernels_fallback` (kernels="auto"), a Triton compile/launch failure is logged once and
        # this process uses the PyTorch code from then on; forced "triton" lets the error through.
        self.kernels = "torch"
        self.kernels_fallback = False

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                past: tuple[torch.Tensor, torch.Tensor] | None = None, request_rows: Sequence[int] | None = None):
        """x: (B, N, C). past: (vk, k_sum) of earlier chunks or None. request_rows: the projections
        and the attention core (token sums, state products) run per request (`per_request`).

        Returns (output, (vk_chunk, k_sum_chunk)): the chunk's own contribution to the state.
        """
        rows = request_rows
        dtype = x.dtype
        q, k, v = per_request(rows, lambda t: (self.to_q(t), self.to_k(t), self.to_v(t)), x)
        q = self.norm_q(q).unflatten(-1, (self.heads, self.head_dim))
        k = self.norm_k(k).unflatten(-1, (self.heads, self.head_dim))
        v = v.unflatten(-1, (self.heads, self.head_dim))
        out = None
        if self.kernels == "triton":
            from sana_serve.kernels.linear_attention import TRITON_FALLBACK

            if not (self.kernels_fallback and TRITON_FALLBACK.failed):
                try:
                    out, (vk, k_sum) = self._core_triton(q, k, v, rope, past, rows)
                except Exception as err:  # noqa: BLE001 - Triton raises many types when it cannot build or launch
                    if not self.kernels_fallback:
                        raise
                    TRITON_FALLBACK.record(err)
        if out is None:
            q, k, v = F.relu(q).float(), F.relu(k).float(), v.float()
            cos, sin = rope
            q_rot, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            out, vk, k_sum = per_request(rows, self._core, q, q_rot, k, k_rot, v, past)
        return per_request(rows, self.to_out[0], out.flatten(2).to(dtype)), (vk, k_sum)

    @staticmethod
    def _core(q, q_rot, k, k_rot, v, past):
        """The sums over tokens and products with the state (B, N, H, D) -> out, vk, k_sum."""
        vk = torch.einsum("bnhe,bnhd->bhed", v, k_rot)  # (B, H, d_v, d_k)
        k_sum = k.sum(dim=1)  # (B, H, d_k)
        vk_all, k_sum_all = (vk, k_sum) if past is None else (vk + past[0], k_sum + past[1])
        num = torch.einsum("bnhd,bhed->bnhe", q_rot, vk_all)
        den = torch.einsum("bnhd,bhd->bnh", q, k_sum_all).unsqueeze(-1) + 1e-15
        return num / den, vk, k_sum

    @staticmethod
    def _core_triton(q, k, v, rope, past, rows):
        """The Triton kernel (ReLU and RoPE inside). Its token-sum split depends on batch x heads,
        so with request_rows it is launched per request, each with that request's own table."""
        from sana_serve.kernels.linear_attention import chunk_linear_attention_triton

        cos, sin = rope
        if rows is None and cos.ndim == 3:  # per-row positions without request_rows: one launch per row
            rows = [1] * q.shape[0]
        if rows is None:  # one position table for the whole batch
            out, vk, k_sum = chunk_linear_attention_triton(q, k, v, cos, sin, *(past or (None, None)))
            return out, (vk, k_sum)

        def one(q, k, v, cos, sin, past):
            # a request's rows share one position: its own (N, D/2) table, as when it runs alone
            cos, sin = (cos, sin) if cos.ndim == 2 else (cos[0], sin[0])
            return chunk_linear_attention_triton(q, k, v, cos, sin, *(past or (None, None)))

        table = (cos, sin) if cos.ndim == 3 else ([cos] * len(rows), [sin] * len(rows))
        out, vk, k_sum = per_request(rows, one, q, k, v, *table, past)
        return out, (vk, k_sum)


class CrossAttention(nn.Module):
    """Softmax attention from video tokens to text tokens (RMSNorm on q and k across heads).

    The text side (k, v) is the same for every step and chunk of a request, so it is computed
    once by `project_text` and reused: the per-step work is only the query side.
    """

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, out_bias: bool = True, eps: float = 1e-5):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.norm_q = RMSNorm(inner, eps=eps)
        self.norm_k = RMSNorm(inner, eps=eps)
        self.to_q = nn.Linear(dim, inner, bias=True)
        self.to_k = nn.Linear(context_dim, inner, bias=True)
        self.to_v = nn.Linear(context_dim, inner, bias=True)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=out_bias), nn.Dropout(0.0)])

    def project_text(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (B, L, C) -> k, v as (B, heads, L, head_dim), contiguous: one request's and a
        batch's (torch.cat) then have the same strides, so a compiled block is not recompiled for
        a new stride (it guards on them)."""
        k = self.norm_k(self.to_k(context)).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        v = self.to_v(context).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        return k.contiguous(), v.contiguous()

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], bias: torch.Tensor | None,
                request_rows: Sequence[int] | None = None) -> torch.Tensor:
        """x (B, N, C); bias (B, 1, 1, L) additive mask or None. request_rows: the GEMMs and the
        attention kernel run per request (`per_request`)."""
        rows = request_rows
        q = self.norm_q(per_request(rows, self.to_q, x)).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        out = per_request(rows, lambda q_, k_, v_, b_: F.scaled_dot_product_attention(q_, k_, v_, attn_mask=b_),
                          q, kv[0], kv[1], bias)
        return per_request(rows, self.to_out[0], out.transpose(1, 2).flatten(2).to(x.dtype))


def mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, L) keep=1/drop=0 mask -> additive bias (B, 1, 1, L), -10000 where dropped (as diffusers)."""
    if mask is None:
        return None
    if mask.ndim != 2:
        raise ValueError(f"encoder_attention_mask must be (batch, tokens), got shape {tuple(mask.shape)}")
    return ((1 - mask.to(dtype)) * -10000.0)[:, None, None, :]


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cos first (diffusers' Timesteps(flip_sin_to_cos=True, shift=0))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

"""SANA-Video transformer, written here; block-causal (LongSANA) streaming on the same modules.

`SanaVideoTransformer` takes the constructor keywords of diffusers' `SanaVideoTransformer3DModel`,
loads its state dict with strict=True and, called like it, returns the same tensor.

The streaming entry point is `forward_chunk`: one chunk of latent frames attends
bidirectionally to itself and causally to the past through a `StreamState`. Temporal RoPE uses
absolute frame positions (`state.next_frame`), and the temporal conv of the Mix-FFN sees the
last frame of the previous chunk on its left and zeros on its right (causal across chunks).
A full-sequence call is the same computation with an empty state, so one code path serves both.

Batch invariance: `forward_chunk(..., request_rows=[2, 2, 1])` says the batch holds several
requests (here three, with 2, 2 and 1 rows) and makes each request's output rows bit-identical
to what the same call would give that request alone. See `rows.per_request` for which ops run
per request and why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sana_serve.engine.model.attention import (
    CrossAttention, LinearSelfAttention, RMSNorm, RotaryEmbedding3D, mask_to_bias, timestep_embedding,
)
from sana_serve.engine.model.rows import per_request
from sana_serve.engine.model.state import StreamState

class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(256, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(timestep_embedding(t).to(dtype))))


class _EmbHolder(nn.Module):
    """Exists only so parameter names read `time_embed.emb.timestep_embedder.*` as in diffusers."""

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(dim)


class AdaLNSingle(nn.Module):
    """t -> (6·dim modulation shared by all blocks, dim embedding for the output norm)."""

    def __init__(self, dim: int, guidance_embeds: bool = False):
        super().__init__()
        self.guidance_embeds = guidance_embeds
        if guidance_embeds:  # diffusers' SanaCombinedTimestepGuidanceEmbeddings layout
            self.timestep_embedder = TimestepEmbedder(dim)
            self.guidance_embedder = TimestepEmbedder(dim)
        else:
            self.emb = _EmbHolder(dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype, guidance: torch.Tensor | None = None):
        if self.guidance_embeds:
            if guidance is None:
                raise ValueError("this model was built with guidance_embeds=True: pass `guidance`")
            emb = self.timestep_embedder(t, dtype) + self.guidance_embedder(guidance, dtype)
        else:
            emb = self.emb.timestep_embedder(t, dtype)
        return self.linear(F.silu(emb)), emb


class CaptionProjection(nn.Module):
    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


def _pointwise(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv as a GEMM on channels-last tokens. Quantization replaces these convs by linear
    layers holding the same [out, in] weight (engine.quantize), which are simply called."""
    if isinstance(layer, nn.Conv2d):
        return F.linear(x, layer.weight.flatten(1), layer.bias)
    return layer(x)


def _wrap_pad(x: torch.Tensor) -> torch.Tensor:
    """Circular 1-pixel padding of (N, H, W, C) images. F.pad(mode="circular") on the NCHW view does
    the same ~4x slower (forward + backward, measured at the training shapes)."""
    x = torch.cat([x[:, -1:], x, x[:, :1]], 1)
    return torch.cat([x[:, :, -1:], x, x[:, :, :1]], 2)


class GLUMBTempConv(nn.Module):
    """Mix-FFN: 1x1 conv, SiLU, 3x3 depthwise, GLU, 1x1 conv, then a (3,1) temporal conv + residual.

    The 1x1 convs run as plain GEMMs on channels-last tokens (same weights, no NCHW round trip);
    only the depthwise conv needs an image layout. `spatial_padding="circular"` pads that conv
    with the opposite edge instead of zeros: for a world that wraps around (the Shapes torus) an
    edge token then sees the object's other half; diffusers has only zeros.
    """

    def __init__(self, dim: int, mlp_ratio: float, spatial_padding: str = "zeros"):
        super().__init__()
        if spatial_padding not in ("zeros", "circular"):
            raise ValueError(f"spatial_padding must be 'zeros' or 'circular', got {spatial_padding!r}")
        hidden = int(mlp_ratio * dim)
        self.circular = spatial_padding == "circular"
        self.conv_inverted = nn.Conv2d(dim, hidden * 2, 1, 1, 0)
        self.conv_depth = nn.Conv2d(hidden * 2, hidden * 2, 3, 1, 1, groups=hidden * 2)
        self.conv_point = nn.Conv2d(hidden, dim, 1, 1, 0, bias=False)
        self.conv_temp = nn.Conv2d(dim, dim, kernel_size=(3, 1), stride=1, padding=(1, 0), bias=False)

    def forward(self, x: torch.Tensor, frames: int, height: int, width: int,
                tail: torch.Tensor | None, request_rows: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, F*H*W, C). tail: (B, 1, H*W, C) last temporal-conv input frame of the past, or None.
        request_rows: the GEMMs and the depthwise conv run per request (`per_request`).

        Returns (output, new tail).
        """
        b, _, c = x.shape
        rows = request_rows
        image_rows = None if rows is None else [r * frames for r in rows]  # (B*F, H, W, C) images
        h = F.silu(per_request(rows, lambda t: _pointwise(self.conv_inverted, t), x))
        h = h.view(b * frames, height, width, -1)
        if self.circular:
            h = _wrap_pad(h)
        h = h.permute(0, 3, 1, 2)  # channels-last NCHW view
        h = per_request(image_rows, lambda t: F.conv2d(t, self.conv_depth.weight, self.conv_depth.bias,
                                                       padding=0 if self.circular else 1, groups=t.shape[1]), h)
        h = h.permute(0, 2, 3, 1)
        h, gate = h.chunk(2, dim=-1)
        h = per_request(image_rows, lambda t: _pointwise(self.conv_point, t), h * F.silu(gate))  # (B*F, H, W, C)
        h = h.reshape(b, frames, height * width, c)

        # Temporal conv, kernel 3: out[f] = h[f] + W0·h[f-1] + W1·h[f] + W2·h[f+1]. One GEMM gives
        # all three taps for every frame; the shifted taps are then added in place, which avoids
        # materialising shifted copies of h. The left neighbour of the first frame is the past
        # chunk's last frame (`tail`; zeros at the very start); the last frame has no right
        # neighbour: no look-ahead into the next chunk.
        w = self.conv_temp.weight[..., 0].permute(2, 0, 1).reshape(3 * c, c)  # [W0; W1; W2]
        taps = per_request(rows, lambda t: F.linear(t, w), h)  # (B, F, HW, 3C)
        out = h + taps[..., c:2 * c]
        out[:, 1:] += taps[:, :-1, :, :c]
        out[:, :-1] += taps[:, 1:, :, 2 * c:]
        if tail is not None:
            out[:, :1] += per_request(rows, lambda t: F.linear(t, w[:c]), tail)
        return out.reshape(b, -1, c), h[:, -1:]


class SanaVideoBlock(nn.Module):
    def __init__(self, dim, heads, head_dim, cross_heads, cross_head_dim, cross_dim,
                 attention_bias, norm_elementwise_affine, norm_eps, mlp_ratio, spatial_padding="zeros"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=norm_eps)
        self.attn1 = LinearSelfAttention(dim, heads, head_dim, bias=attention_bias)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.attn2 = CrossAttention(dim, cross_dim, cross_heads, cross_head_dim)
        self.ff = GLUMBTempConv(dim, mlp_ratio, spatial_padding)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x, mod, text_kv, text_bias, rope, frames, height, width, past, tail, request_rows=None):
        """x: (B, N, C) tokens; mod: (B, F_or_1, 6, C) timestep modulation per frame.

        request_rows: see `per_request`; the GEMMs, convs and attention cores inside the
        attentions and the Mix-FFN run per request, everything else batched."""
        b, n, c = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table + mod).unbind(dim=2)  # each (B, F_or_1, C)
        per_frame = mod.shape[1]

        def modulate(t, shift, scale):  # broadcast the per-frame modulation over that frame's tokens
            t = t.view(b, per_frame, -1, c)
            return (t * (1 + scale[:, :, None]) + shift[:, :, None]).view(b, n, c)

        def gated(t, gate):
            return (t.view(b, per_frame, -1, c) * gate[:, :, None]).view(b, n, c)

        rows = request_rows
        attn, contribution = self.attn1(modulate(self.norm1(x), shift_msa, scale_msa), rope, past, rows)
        x = x + gated(attn, gate_msa)
        x = x + self.attn2(x, text_kv, text_bias, rows)
        ff, new_tail = self.ff(modulate(self.norm2(x), shift_mlp, scale_mlp), frames, height, width, tail, rows)
        x = x + gated(ff, gate_mlp)
        return x, contribution, new_tail


@dataclass
class TextContext:
    """A prompt batch, projected once per request: per-layer cross-attention k/v and the mask bias."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    bias: torch.Tensor | None

    @staticmethod
    def cat(contexts: list["TextContext"]) -> "TextContext":
        """Several requests' prompts as one batch (all padded to the same length)."""
        kv = [(torch.cat([c.kv[i][0] for c in contexts]), torch.cat([c.kv[i][1] for c in contexts]))
              for i in range(len(contexts[0].kv))]
        biases = [c.bias for c in contexts]
        return TextContext(kv, None if biases[0] is None else torch.cat(biases))


class SanaVideoTransformer(nn.Module):
    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int | None = 16,
        num_attention_heads: int = 20,
        attention_head_dim: int = 112,
        num_layers: int = 20,
        num_cross_attention_heads: int | None = 20,
        cross_attention_head_dim: int | None = 112,
        cross_attention_dim: int | None = 2240,
        caption_channels: int = 2304,
        mlp_ratio: float = 2.5,
        dropout: float = 0.0,
        attention_bias: bool = False,
        sample_size: int = 30,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        interpolation_scale: int | None = None,
        guidance_embeds: bool = False,
        guidance_embeds_scale: float = 0.1,
        qk_norm: str | None = "rms_norm_across_heads",
        rope_max_seq_len: int = 1024,
        spatial_padding: str = "zeros",
    ):
        super().__init__()
        if qk_norm != "rms_norm_across_heads":
            raise ValueError(f"only qk_norm='rms_norm_across_heads' is supported, got {qk_norm!r}")
        if cross_attention_dim is None:
            raise ValueError("SANA-Video needs cross-attention: cross_attention_dim must be set")
        if dropout:
            raise ValueError("this is an inference/training engine without dropout; dropout must be 0")
        out_channels = out_channels or in_channels
        inner = num_attention_heads * attention_head_dim
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim, num_layers=num_layers,
            num_cross_attention_heads=num_cross_attention_heads, cross_attention_head_dim=cross_attention_head_dim,
            cross_attention_dim=cross_attention_dim, caption_channels=caption_channels, mlp_ratio=mlp_ratio,
            dropout=dropout, attention_bias=attention_bias, sample_size=sample_size, patch_size=list(patch_size),
            norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps,
            interpolation_scale=interpolation_scale, guidance_embeds=guidance_embeds,
            guidance_embeds_scale=guidance_embeds_scale, qk_norm=qk_norm, rope_max_seq_len=rope_max_seq_len,
        )
        if spatial_padding != "zeros":  # our extension: a diffusers config.json stays diffusers'
            self.config["spatial_padding"] = spatial_padding
        self.patch_size = tuple(patch_size)
        self.out_channels = out_channels
        self.inner_dim = inner
        self.heads, self.head_dim = num_attention_heads, attention_head_dim

        self.rope = RotaryEmbedding3D(attention_head_dim)
        self.patch_embedding = nn.Conv3d(in_channels, inner, kernel_size=self.patch_size, stride=self.patch_size)
        self.time_embed = AdaLNSingle(inner, guidance_embeds)
        self.caption_projection = CaptionProjection(caption_channels, inner)
        self.caption_norm = RMSNorm(inner, eps=1e-5, elementwise_affine=True)
        self.transformer_blocks = nn.ModuleList([
            SanaVideoBlock(inner, num_attention_heads, attention_head_dim, num_cross_attention_heads,
                           cross_attention_head_dim, cross_attention_dim, attention_bias,
                           norm_elementwise_affine, norm_eps, mlp_ratio, spatial_padding)
            for _ in range(num_layers)
        ])
        self.scale_shift_table = nn.Parameter(torch.randn(2, inner) / inner**0.5)
        self.norm_out = nn.LayerNorm(inner, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(inner, math.prod(self.patch_size) * out_channels)

    # ---- text -----------------------------------------------------------------------------
    def encode_text(self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None) -> TextContext:
        """Project the text encoder's states once; reused for every step and chunk of a request."""
        dtype = self.proj_out.weight.dtype
        context = self.caption_norm(self.caption_projection(encoder_hidden_states.to(dtype)))
        kv = [blk.attn2.project_text(context) for blk in self.transformer_blocks]
        return TextContext(kv, mask_to_bias(encoder_attention_mask, dtype))

    def new_state(self, batch_size: int, window_chunks: int | None = None) -> StreamState:
        return StreamState(len(self.transformer_blocks), batch_size, self.heads, self.head_dim,
                           window_chunks=window_chunks, device=self.proj_out.weight.device)

    @torch.compiler.disable  # reading state.next_frame inside a compiled graph would guard on it: a recompile per chunk
    def _rope_at(self, state, frames: int, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables at the state's absolute frame position (one per row for a StateBatch)."""
        offset = 0
        if state is not None:
            nf, p_t = state.next_frame, self.patch_size[0]
            offset = nf // p_t if isinstance(nf, int) else [n // p_t for n in nf]
        return self.rope(offset, frames, height, width, device)

    STATE_KINDS = 3  # a block's past: none; linear-attention sums without a conv tail; both
    _cudagraph_blocks = False  # compile_blocks("reduce-overhead"): blocks replay CUDA graphs

    def compile_blocks(self, mode: str | None = "default", backend="inductor", max_requests: int = 8) -> int:
        """torch.compile the transformer blocks (mode None: undo, back to eager). Returns the bound
        on compilations it allows for.

        Regional compilation: the blocks are one class, so all of them share one compiled graph per
        input signature; RoPE tables, the stream state's bookkeeping and the embeddings stay eager
        (the state's frame offset would otherwise be a new constant every chunk). dynamic=True: the
        batch's rows and the chunk's tokens are symbolic sizes, so new shapes never recompile. What
        still does is structure: the kind of past a block gets (STATE_KINDS) and how many requests
        share the forward (1 .. max_requests; per-request slicing is unrolled). That bound is set
        as dynamo's recompile limit, so a server's mix of requests never reaches the point where
        dynamo silently falls back to eager (tests/engine/test_compile.py counts compilations).
        """
        import torch._dynamo

        bound = self.STATE_KINDS * max_requests
        self._cudagraph_blocks = mode == "reduce-overhead"
        for blk in self.transformer_blocks:
            if mode is None:
                blk._compiled_call_impl = None  # what nn.Module.compile sets; None runs forward eagerly
            else:
                blk.compile(backend=backend, mode=mode, dynamic=True)
        if mode is not None:
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, bound)
        return bound

    # ---- forward --------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
                return_dict: bool = False) -> torch.Tensor:
        """Full-sequence forward with diffusers' signature: bidirectional over all frames."""
        text = self.encode_text(encoder_hidden_states, encoder_attention_mask)
        return self.forward_chunk(hidden_states, timestep, text, state=None, guidance=guidance)

    def forward_chunk(self, latents: torch.Tensor, timestep: torch.Tensor, text: TextContext,
                      state: StreamState | None = None, update_state: bool = False,
                      guidance: torch.Tensor | None = None,
                      request_rows: Sequence[int] | None = None) -> torch.Tensor:
        """Denoiser output for one chunk of latent frames.

        latents (B, C, F, H, W); timestep (B,) or (B, F) (per-frame noise levels, for
        diffusion-forcing training); state: the past (None = nothing before this chunk).
        With update_state, this chunk's contribution is folded into `state` (call it on the
        clean chunk at t=0 once the chunk is final).
        request_rows: how many rows of the batch each request holds (batch order). Given, each
        request's rows come out bit-identical to a call with that request alone (`per_request`);
        None: one kernel call over the whole batch (rows may then differ in the last bits).
        """
        if update_state and state is None:
            raise ValueError("update_state=True needs a state")
        b, _, frames, height, width = latents.shape
        p_t, p_h, p_w = self.patch_size
        if frames % p_t or height % p_h or width % p_w:
            raise ValueError(f"latent shape {(frames, height, width)} is not divisible by patch size {self.patch_size}")
        f, hh, ww = frames // p_t, height // p_h, width // p_w
        dtype = self.proj_out.weight.dtype

        rows = None if request_rows is None or len(request_rows) == 1 else list(request_rows)
        if rows is not None and sum(rows) != b:
            raise ValueError(f"request_rows {rows} do not add up to the batch of {b} rows")
        rope = self._rope_at(state, f, hh, ww, latents.device)
        x = per_request(rows, self.patch_embedding, latents.to(dtype)).flatten(2).transpose(1, 2)  # (B, N, C)

        if timestep.ndim == 0:
            timestep = timestep.expand(b)
        per_frame = timestep.shape[1] if timestep.ndim == 2 else 1
        if timestep.ndim == 2 and per_frame != f:
            raise ValueError(f"per-frame timestep has {per_frame} entries for {f} frames")
        g = None if guidance is None else guidance.reshape(b, 1).expand(b, per_frame).flatten()
        time_rows = None if rows is None else [r * per_frame for r in rows]
        mod, emb = per_request(time_rows, lambda t_, g_: self.time_embed(t_, dtype, g_),
                               timestep.reshape(b, per_frame).flatten(), g)
        mod = mod.view(b, per_frame, 6, -1)
        emb = emb.view(b, per_frame, -1)

        contributions = []
        for i, blk in enumerate(self.transformer_blocks):
            past = tail = None
            if state is not None:
                st = state.layers[i]
                past, tail = (st.vk, st.k_sum), st.conv_tail
            if self._cudagraph_blocks:  # UNTESTED (no GPU here): each block call is one graph replay
                torch.compiler.cudagraph_mark_step_begin()
            x, (vk, k_sum), new_tail = blk(x, mod, text.kv[i], text.bias, rope, f, hh, ww, past, tail, rows)
            if self._cudagraph_blocks:  # a replay's outputs live in static buffers the next replay
                # overwrites (all blocks share the graph): copy them out before feeding them back in
                x, vk, k_sum = x.clone(), vk.clone(), k_sum.clone()
                new_tail = None if new_tail is None else new_tail.clone()
            contributions.append((vk, k_sum, new_tail))
        if update_state:
            # Past layers read the state before this chunk: folding in after the loop is the same
            # math, and keeps the state bookkeeping out of a torch.compile'd graph.
            state.add_chunk(contributions, frames)

        shift, scale = (self.scale_shift_table[None, None] + emb[:, :, None]).unbind(dim=2)
        x = self.norm_out(x).view(b, per_frame, -1, self.inner_dim)
        x = (x * (1 + scale[:, :, None]) + shift[:, :, None]).view(b, -1, self.inner_dim)
        x = per_request(rows, self.proj_out, x)

        x = x.reshape(b, f, hh, ww, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        # The sampler's arithmetic stays fp32 whatever precision the weights run in.
        return x.reshape(b, self.out_channels, frames, height, width).float()

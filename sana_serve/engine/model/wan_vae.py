"""The Wan2.1 video VAE (diffusers' `AutoencoderKLWan`), written for the engine's streaming decode.

This is the VAE of NVIDIA's released SANA-Video 2B/480p checkpoints: 16 latent channels, 4x in
time, 8x in space, every temporal op causal. A video of `1 + 4k` frames has `1 + k` latent frames:
the first frame is coded on its own (an image), every later latent frame codes 4 frames.

Parameter names are exactly diffusers' (`encoder.down_blocks.3.conv1.weight`, ...), so the
`vae/` folder of a diffusers checkpoint loads with `strict=True`; the architecture follows
`diffusers/models/autoencoders/autoencoder_kl_wan.py` (Wan2.1 only: `is_residual=False`,
no `patch_size`; the Wan2.2 VAE is refused with a clear error).

Streaming. diffusers decodes one latent frame at a time, keeping per causal conv the last two
frames of its input (a "feature cache"). We keep the same cache, as a dict from conv module to
tensor (the engine's `Cache` convention of `vae.py`, so `StreamingVAEDecoder`, `decode_streams`
and the rollout's snapshot/restore work unchanged), and decode any chunk one latent frame per pass:
the result equals decoding the whole video at once, and memory does not grow with video length.
The first latent frame is special: the temporal upsamplers skip it (it becomes one frame, not
four) and their history starts at zero after it. `_decode` therefore treats the first latent
frame of a fresh cache on its own, so a first chunk of several latent frames is fine and gives
`1 + 4(t-1)` frames; every later chunk of t latent frames gives `4t` frames. The encoder is the
mirror image: the first call takes `1 + 4k` frames, later calls `4k`.

Latent normalisation is the checkpoint's: `decode` takes normalised latents and de-normalises them
with `latents_mean` / `latents_std` from config.json exactly as `SanaVideoPipeline` does
(`latents / (1 / std) + mean`), and `encode` returns `(mean - latents_mean) * (1 / latents_std)`
as the Wan image-to-video pipelines do. Decoded video is clamped to [-1, 1] like diffusers'.
The released VAE runs in fp32 (what diffusers' examples do); bf16 works too.

Sizes (the released config, fp32): 126.9M parameters (0.51 GB). The streaming decode cache is
two frames per causal conv at its level's resolution: 148 MiB per video at 128x128, which scales
with the pixel count to 3.5 GiB per video at 480x832, the same from the first chunk to the last
(diffusers' feature cache holds the same tensors). Parity on CPU with diffusers 0.42, tiny random
weights: encode and decode bit-identical in fp32 and bf16 (tests/engine/test_wan_vae.py).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sana_serve.engine.model.vae import DiffusersVAEFiles, Cache, StreamingVAEDecoder, StreamingVAEEncoder

CLASS_NAME = "AutoencoderKLWan"  # the `_class_name` in a diffusers vae/config.json

# Every config key AutoencoderKLWan accepts, with its default (diffusers 0.42). Unknown keys are an
# error: a config we do not understand must not load as something else.
DEFAULTS = {
    "base_dim": 96,
    "decoder_base_dim": None,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160],
    "is_residual": False,
    "in_channels": 3,
    "out_channels": 3,
    "patch_size": None,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 8,
}


# --------------------------------------------------------------------------------------
# Layers (channel-first, (B, C, T, H, W), as in diffusers)
# --------------------------------------------------------------------------------------


class WanCausalConv3d(nn.Conv3d):
    """A Conv3d padded only on the past side in time (`2 * padding_t` frames), "same" in space.

    With a `cache` dict the conv prepends the last `2 * padding_t` frames of its input history
    (zeros at the start of a video, exactly the padding of a full pass) and stores the new last
    frames for the next chunk: diffusers' feature cache, keyed by this module.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        self.time_pad = 2 * pt
        self.space_pad = (ph, pw)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if self.time_pad:
            past = cache.get(self) if cache is not None else None
            if past is None:
                past = x.new_zeros(x.shape[0], x.shape[1], self.time_pad, *x.shape[3:])
            x = torch.cat([past, x], dim=2)
            if cache is not None:
                cache[self] = x[:, :, -self.time_pad:].clone()  # clone: a view would pin the whole chunk
        # Spatial zero padding inside the conv: no padded copy of a (large) activation.
        return F.conv3d(x, self.weight, self.bias, self.stride, (0, *self.space_pad))


class WanRMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and a learned `gamma`: per pixel and frame (causal)."""

    def __init__(self, dim: int, images: bool = True):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = x.dtype in (torch.float16, torch.bfloat16)
        normalized = F.normalize(x.float() if low else x, dim=1).to(x.dtype)
        return normalized * self.scale * self.gamma + 0.0  # + 0.0: diffusers' absent bias, same rounding


class NearestUpsample2x(nn.Module):
    """2x nearest ("nearest-exact") upsampling in space, computed in fp32 like diffusers' WanUpsample."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=(2.0, 2.0), mode="nearest-exact").type_as(x)


def _per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of (B, C, T, H, W)."""
    b, c, t, h, w = x.shape
    y = module(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.view(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


class WanResample(nn.Module):
    """Spatial 2x up/down sampling, with a causal temporal 2x conv in the "3d" modes.

    Temporal up-sampling (`time_conv` to 2C channels, interleaved into 2 frames) skips the very
    first latent frame of a video, which stays one frame; its causal history then starts at zero.
    Temporal down-sampling (a stride-2 conv over [previous frame, chunk]) likewise lets the first
    frame through alone. Both need a cache (the first-frame rule lives in it): without one, a
    "3d" resample is purely spatial, like diffusers' without a feature cache.
    """

    def __init__(self, dim: int, mode: str, upsample_out_dim: int | None = None):
        super().__init__()
        self.mode = mode
        out = dim // 2 if upsample_out_dim is None else upsample_out_dim
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(NearestUpsample2x(), nn.Conv2d(dim, out, 3, padding=1))
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")
        if mode == "upsample3d":
            self.time_conv = WanCausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = WanCausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=0)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if self.mode == "upsample3d" and cache is not None:
            if self.time_conv not in cache:  # the first latent frame: no temporal upsampling
                cache[self.time_conv] = x.new_zeros(*x.shape[:2], 2, *x.shape[3:])
            else:
                b, c, t, h, w = x.shape
                x = self.time_conv(x, cache).reshape(b, 2, c, t, h, w)
                x = torch.stack((x[:, 0], x[:, 1]), 3).reshape(b, c, t * 2, h, w)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d" and cache is not None:
            last = cache.get(self.time_conv)
            cache[self.time_conv] = x[:, :, -1:].clone()
            if last is not None:  # later chunks: stride-2 over [last frame of the previous chunk, chunk]
                x = self.time_conv(torch.cat([last, x], 2))
        return x


class WanResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm1 = WanRMSNorm(in_dim, images=False)
        self.conv1 = WanCausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = WanRMSNorm(out_dim, images=False)
        self.conv2 = WanCausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = WanCausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        h = self.conv_shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)), cache)
        x = self.conv2(F.silu(self.norm2(x)), cache)  # dropout: 0 at inference
        return x + h


class WanAttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (never across frames)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = WanRMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        identity = x
        b, c, t, h, w = x.shape
        x = self.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        qkv = self.to_qkv(x).reshape(b * t, 1, c * 3, -1).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)
        x = F.scaled_dot_product_attention(q, k, v)
        x = self.proj(x.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w))
        return x.view(b, t, c, h, w).permute(0, 2, 1, 3, 4) + identity


class WanMidBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.attentions = nn.ModuleList([WanAttentionBlock(dim)])
        self.resnets = nn.ModuleList([WanResidualBlock(dim, dim), WanResidualBlock(dim, dim)])

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = self.resnets[0](x, cache)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x), cache)
        return x


class WanUpBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, upsample_mode: str | None):
        super().__init__()
        self.resnets = nn.ModuleList(
            [WanResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_res_blocks + 1)])
        self.upsamplers = nn.ModuleList([WanResample(out_dim, upsample_mode)]) if upsample_mode else None

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, cache)
        return x


class WanEncoder3d(nn.Module):
    def __init__(self, in_channels: int, dim: int, z_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
                 temperal_downsample: Sequence[bool]):
        super().__init__()
        dims = [dim * u for u in [1, *dim_mult]]
        self.conv_in = WanCausalConv3d(in_channels, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(WanResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(WanResample(out_dim, "downsample3d" if temperal_downsample[i] else "downsample2d"))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = WanMidBlock(dims[-1])
        self.norm_out = WanRMSNorm(dims[-1], images=False)
        self.conv_out = WanCausalConv3d(dims[-1], z_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for layer in self.down_blocks:
            x = layer(x, cache)
        x = self.mid_block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class WanDecoder3d(nn.Module):
    def __init__(self, dim: int, z_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
                 temperal_upsample: Sequence[bool], out_channels: int):
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1], *dim_mult[::-1]]]
        self.conv_in = WanCausalConv3d(z_dim, dims[0], 3, padding=1)
        self.mid_block = WanMidBlock(dims[0])
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # Wan2.1: each resample halves the channels it hands on
            mode = None
            if i != len(dim_mult) - 1:
                mode = "upsample3d" if temperal_upsample[i] else "upsample2d"
            blocks.append(WanUpBlock(in_dim, out_dim, num_res_blocks, mode))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = WanRMSNorm(dims[-1], images=False)
        self.conv_out = WanCausalConv3d(dims[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x, cache), cache)
        for block in self.up_blocks:
            x = block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


# --------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------


def wan_config(config: dict) -> dict:
    """A diffusers AutoencoderKLWan config.json (metadata keys `_*` allowed) -> full, checked keywords.

    Raises ValueError, naming the problem, for what this implementation does not cover: unknown
    keys, the Wan2.2 VAE (`is_residual`, `patch_size`), or statistics of the wrong length.
    """
    given = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"AutoencoderKLWan config has keys this VAE does not know: {', '.join(unknown)}")
    cfg = {**DEFAULTS, **given}
    if cfg["is_residual"] or cfg["patch_size"] not in (None, 1):
        raise ValueError("this is a Wan2.2-style VAE (is_residual / patch_size); only the Wan2.1 VAE is supported")
    if cfg["attn_scales"]:  # Wan2.1 has none; diffusers 0.42 cannot run an encoder with them either
        raise ValueError(f"attn_scales={cfg['attn_scales']}: encoder attention blocks are not supported (Wan2.1 has none)")
    levels = len(cfg["dim_mult"])
    if levels < 1 or len(cfg["temperal_downsample"]) != levels - 1:
        raise ValueError(f"temperal_downsample needs {levels - 1} flags for dim_mult {cfg['dim_mult']}, "
                         f"got {cfg['temperal_downsample']}")
    z = cfg["z_dim"]
    if len(cfg["latents_mean"]) != z or len(cfg["latents_std"]) != z:
        raise ValueError(f"latents_mean and latents_std need z_dim={z} values each, got "
                         f"{len(cfg['latents_mean'])} and {len(cfg['latents_std'])}")
    if any(float(s) == 0 for s in cfg["latents_std"]):
        raise ValueError("latents_std values must be non-zero")
    spatial, temporal = 2 ** (levels - 1), 2 ** sum(bool(d) for d in cfg["temperal_downsample"])
    for key, value in (("scale_factor_spatial", spatial), ("scale_factor_temporal", temporal)):
        if cfg[key] is not None and cfg[key] != value:
            raise ValueError(f"{key}={cfg[key]} does not match the architecture, which compresses {value}x")
    return cfg


class WanVAE(DiffusersVAEFiles, nn.Module):
    """Wan2.1 VAE: video (B, 3, 1+4k, H, W) in [-1, 1] <-> normalised latents (B, 16, 1+k, H/8, W/8).

    The engine's VAE interface (as `CausalVideoVAE`): `encode`, `decode`, `stream_decoder()`,
    `stream_encoder()`, `latent_channels`, `temporal_compression`, `spatial_compression`, plus
    `num_frames(t)` / `num_latent_frames(frames)` for the 1 + 4k rule. Keywords and state-dict
    keys are those of diffusers' `AutoencoderKLWan`.
    """

    diffusers_class = CLASS_NAME

    def __init__(self, **config):
        super().__init__()
        cfg = wan_config(config)
        self.config = cfg
        self.latent_channels = cfg["z_dim"]
        self.in_channels = cfg["in_channels"]
        self.spatial_compression = 2 ** (len(cfg["dim_mult"]) - 1)
        self.temporal_compression = 2 ** sum(bool(d) for d in cfg["temperal_downsample"])
        z = cfg["z_dim"]
        self.encoder = WanEncoder3d(cfg["in_channels"], cfg["base_dim"], z * 2, cfg["dim_mult"],
                                    cfg["num_res_blocks"], cfg["temperal_downsample"])
        self.quant_conv = WanCausalConv3d(z * 2, z * 2, 1)
        self.post_quant_conv = WanCausalConv3d(z, z, 1)
        self.decoder = WanDecoder3d(cfg["decoder_base_dim"] or cfg["base_dim"], z, cfg["dim_mult"],
                                    cfg["num_res_blocks"], list(cfg["temperal_downsample"])[::-1],
                                    cfg["out_channels"])
        shape = (1, z, 1, 1, 1)
        # Not persistent: config.json is their one source of truth (and diffusers' state dict has none).
        self.register_buffer("latents_mean", torch.tensor(cfg["latents_mean"], dtype=torch.float32).view(shape),
                             persistent=False)
        self.register_buffer("latents_std", torch.tensor(cfg["latents_std"], dtype=torch.float32).view(shape),
                             persistent=False)

    # ---- the 1 + 4k rule ------------------------------------------------------------

    def num_frames(self, latent_frames: int) -> int:
        """Frames a whole video of `latent_frames` latent frames decodes to: 1 + 4 (t - 1)."""
        return 1 + self.temporal_compression * (latent_frames - 1)

    def num_latent_frames(self, frames: int) -> int:
        """Latent frames of a video of `frames` frames; `frames` must be 1 + 4k (ValueError otherwise)."""
        tc = self.temporal_compression
        if frames < 1 or (frames - 1) % tc:
            raise ValueError(f"the Wan VAE codes 1 + {tc}k frames (1, {1 + tc}, {1 + 2 * tc}, ...); got {frames}")
        return 1 + (frames - 1) // tc

    # ---- latent statistics ----------------------------------------------------------

    def normalize_latents(self, raw: torch.Tensor) -> torch.Tensor:
        mean, std = self.latents_mean.to(raw), self.latents_std.to(raw)
        return (raw - mean) * (1.0 / std)

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self.latents_mean.to(latents), self.latents_std.to(latents)
        return latents / (1.0 / std) + mean  # SanaVideoPipeline's expression, for identical rounding

    # ---- encoding -------------------------------------------------------------------

    def _encode_moments(self, video: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        """Video chunk -> raw posterior moments (B, 2z, t, h, w). A fresh (or absent) cache means the
        chunk starts the video: 1 + 4k frames, else 4k frames. Processed 4 frames per pass after the
        first frame, like diffusers, so memory does not grow with the chunk."""
        if video.ndim != 5 or video.shape[1] != self.in_channels:
            raise ValueError(f"video must have shape (B, {self.in_channels}, T, H, W); got {tuple(video.shape)}")
        if not video.is_floating_point():
            raise ValueError(f"video must be a float tensor in [-1, 1]; got dtype {video.dtype}")
        _, _, t, h, w = video.shape
        sc, tc = self.spatial_compression, self.temporal_compression
        if h == 0 or w == 0 or h % sc or w % sc:
            raise ValueError(f"video is {h}x{w} (HxW); height and width must be positive multiples of {sc}")
        cache = {} if cache is None else cache
        video = video.to(self.quant_conv.weight.dtype)
        fresh = self.encoder.conv_in not in cache
        if fresh and (t - 1) % tc:
            raise ValueError(f"the first chunk of a video must have 1 + {tc}k frames; got {t}")
        if not fresh and (t == 0 or t % tc):
            raise ValueError(f"after the first chunk, chunks must have a positive multiple of {tc} frames; got {t}")
        starts = ([0] if fresh else []) + list(range(1 if fresh else 0, t, tc))
        pieces = [video[:, :, s: (1 if s == 0 and fresh else s + tc)] for s in starts]
        out = torch.cat([self.encoder(p, cache) for p in pieces], 2)
        return self.quant_conv(out)

    def encode_distribution(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logvar) in raw latent space, logvar clamped to [-30, 20] as diffusers does."""
        mean, logvar = self._encode_moments(video, None).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, 1+4k, H, W) in [-1, 1] -> normalised posterior mean (B, z, 1+k, H/8, W/8)."""
        return self.normalize_latents(self._encode_moments(video, None)[:, : self.latent_channels])

    def stream_encoder(self) -> StreamingVAEEncoder:
        """Encoder taking the video in chunks: 1 + 4k frames first, then multiples of 4 frames."""
        return StreamingVAEEncoder(self)

    # ---- decoding -------------------------------------------------------------------

    def _decode(self, latents: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        """Normalised latent chunk (B, z, t, h, w) -> video (B, 3, T, 8h, 8w) in [-1, 1].

        T is 1 + 4(t-1) when `cache` is fresh or None (the chunk starts the video), else 4t. One
        latent frame per decoder pass, exactly diffusers' loop."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must have shape (B, {self.latent_channels}, t, h, w); "
                             f"got {tuple(latents.shape)}")
        if latents.shape[2] == 0:
            raise ValueError("latents have 0 frames")
        cache = {} if cache is None else cache
        # Like SanaVideoPipeline: latents.to(vae.dtype) first, then de-normalise in that dtype.
        x = self.post_quant_conv(self.denormalize_latents(latents.to(self.post_quant_conv.weight.dtype)))
        out = torch.cat([self.decoder(x[:, :, i: i + 1], cache) for i in range(x.shape[2])], 2)
        return out.clamp(-1.0, 1.0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents of a whole video (B, z, t, h, w) -> (B, 3, 1 + 4(t-1), 8h, 8w) in [-1, 1]."""
        return self._decode(latents, None)

    def stream_decoder(self) -> StreamingVAEDecoder:
        """Decoder taking latents chunk by chunk (any sizes); the outputs concatenated equal `decode`.

        Its first chunk gives 1 + 4(t-1) frames, every later one 4t. The cache (`.nbytes`) is the last
        two input frames of every causal conv: constant from the second chunk on."""
        return StreamingVAEDecoder(self)

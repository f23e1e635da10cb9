"""The LTX-2 video VAE (diffusers' `AutoencoderKLLTX2Video`), the VAE of SANA-Video 2B/720p.

128 latent channels; a 4x4 spatial patchify then three 2x stages: 32x in space, 8x in time, so a video
of `1 + 8k` frames has `1 + k` latent frames (81 frames -> 11). The encoder is causal (its temporal
convs replicate the first frame as the past); the decoder is NOT causal in the release
(`decoder_causal: false`): each temporal conv replicates the first frame on the left and the last
frame on the right, and its spatial padding is `reflect`. No timestep conditioning or noise injection
in the release; those variants are refused with a clear error rather than served wrong.

Parameter names are diffusers' (`decoder.up_blocks.0.upsamplers.0.conv.conv.weight`, ...) and the
per-channel `latents_mean` / `latents_std` are persistent buffers in the safetensors (not config
entries), so a diffusers `vae/` folder loads with `strict=True`.

Latent statistics as `SanaVideoPipeline` applies them: `decode` takes normalised latents and computes
`latents / (1 / std) + mean` in the VAE's dtype; `encode` returns `(mode - mean) * (1 / std)` of the
posterior, as `SanaImageToVideoPipeline` normalises the image latent.

Decoding a video. The decoder sees the whole clip at once (non-causal), so unlike the Wan VAE it
cannot keep a small causal cache. Three paths, one idea each:
- `decode`: one pass over the whole clip (exact; memory grows with the clip).
- `tiled_decode`: diffusers' spatial tiling (overlapping tiles in latent space, linear blends in
  pixels); equal to `AutoencoderKLLTX2Video.tiled_decode` with the same tile sizes.
- `WindowedDecoder` (`stream_decoder()`): for full-sequence mode, where all latents are known before
  the first block is decoded. Exact by default (the whole clip decoded once, handed out block by
  block); with `decode_context = c` each block is decoded from a temporal window of its latent frames
  plus c latent frames on both sides, and only the block's frames are kept: memory bounded by the
  window, not the video, at a measured distance from the whole decode (see WindowedDecoder).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from sana_serve.engine.model.vae import DiffusersVAEFiles

CLASS_NAME = "AutoencoderKLLTX2Video"

# Every config key AutoencoderKLLTX2Video (diffusers 0.42) accepts, with its default. Unknown keys are
# an error: a config we do not understand must not load as something else.
DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 128,
    "block_out_channels": [256, 512, 1024, 2048],
    "down_block_types": ["LTX2VideoDownBlock3D"] * 4,
    "decoder_block_out_channels": [256, 512, 1024],
    "layers_per_block": [4, 6, 6, 2, 2],
    "decoder_layers_per_block": [5, 5, 5, 5],
    "spatio_temporal_scaling": [True, True, True, True],
    "decoder_spatio_temporal_scaling": [True, True, True],
    "decoder_inject_noise": [False, False, False, False],
    "downsample_type": ["spatial", "temporal", "spatiotemporal", "spatiotemporal"],
    "upsample_type": ["spatiotemporal", "spatiotemporal", "spatiotemporal"],
    "upsample_residual": [True, True, True],
    "upsample_factor": [2, 2, 2],
    "timestep_conditioning": False,
    "patch_size": 4,
    "patch_size_t": 1,
    "resnet_norm_eps": 1e-6,
    "scaling_factor": 1.0,
    "encoder_causal": True,
    "decoder_causal": True,
    "encoder_spatial_padding_mode": "zeros",
    "decoder_spatial_padding_mode": "reflect",
    "spatial_compression_ratio": None,
    "temporal_compression_ratio": None,
}
STRIDES = {"spatial": (1, 2, 2), "temporal": (2, 1, 1), "spatiotemporal": (2, 2, 2)}


def ltx2_config(config: dict) -> dict:
    """A diffusers config.json dict -> the full config, validated; bools broadcast to tuples as diffusers does."""
    cfg = dict(DEFAULTS)
    unknown = sorted(k for k in config if not k.startswith("_") and k not in DEFAULTS)
    if unknown:
        raise ValueError(f"unknown {CLASS_NAME} config keys: {', '.join(unknown)}")
    cfg.update({k: v for k, v in config.items() if not k.startswith("_")})
    n_enc, n_dec = len(cfg["layers_per_block"]), len(cfg["decoder_layers_per_block"])
    for key, n in (("spatio_temporal_scaling", n_enc - 1), ("decoder_spatio_temporal_scaling", n_dec - 1),
                   ("decoder_inject_noise", n_dec), ("upsample_residual", n_dec - 1)):
        if isinstance(cfg[key], bool):
            cfg[key] = [cfg[key]] * n
        cfg[key] = list(cfg[key])
    if cfg["timestep_conditioning"]:
        raise ValueError("timestep_conditioning=True (LTX-Video 0.9.x style decoder) is not supported; "
                         "the SANA-Video release has none")
    if any(cfg["decoder_inject_noise"]):
        raise ValueError("decoder_inject_noise is not supported (random noise in the decoder); the release has none")
    if cfg["patch_size_t"] != 1:
        raise ValueError(f"patch_size_t must be 1; got {cfg['patch_size_t']}")
    if any(t != "LTX2VideoDownBlock3D" for t in cfg["down_block_types"]):
        raise ValueError(f"unknown down block types {cfg['down_block_types']}")
    return cfg


# --------------------------------------------------------------------------------------
# Layers, channel-first (B, C, T, H, W) as in diffusers.
# --------------------------------------------------------------------------------------


class PerChannelRMSNorm(nn.Module):
    """x / sqrt(mean over channels of x^2 + 1e-8): per pixel and frame, no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class LTX2Conv3d(nn.Module):
    """A 3-D conv whose time padding repeats edge frames: the first frame (k-1) times on the left when
    causal, else (k-1)/2 copies of the first and of the last frame. Spatial padding is the conv's own
    (`zeros` or `reflect`). The inner `conv` keeps diffusers' parameter names (`...conv.weight`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride=1,
                 padding_mode: str = "zeros"):
        super().__init__()
        self.kernel_t = kernel_size
        stride = stride if isinstance(stride, tuple) else (stride,) * 3
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=(0, kernel_size // 2, kernel_size // 2), padding_mode=padding_mode)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        k = self.kernel_t
        if causal:
            x = torch.cat([x[:, :, :1].repeat(1, 1, k - 1, 1, 1), x], dim=2)
        else:
            side = (k - 1) // 2
            x = torch.cat([x[:, :, :1].repeat(1, 1, side, 1, 1), x, x[:, :, -1:].repeat(1, 1, side, 1, 1)], dim=2)
        return self.conv(x)


class ResnetBlock(nn.Module):
    """norm -> SiLU -> conv -> norm -> SiLU -> conv, plus the input (LayerNorm + 1x1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, eps: float, padding_mode: str):
        super().__init__()
        self.norm1 = PerChannelRMSNorm()
        self.conv1 = LTX2Conv3d(in_channels, out_channels, 3, padding_mode=padding_mode)
        self.norm2 = PerChannelRMSNorm()
        self.conv2 = LTX2Conv3d(out_channels, out_channels, 3, padding_mode=padding_mode)
        self.norm3 = self.conv_shortcut = None
        if in_channels != out_channels:
            self.norm3 = nn.LayerNorm(in_channels, eps=eps, elementwise_affine=True, bias=True)
            self.conv_shortcut = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), causal)
        h = self.conv2(F.silu(self.norm2(h)), causal)
        if self.norm3 is not None:
            x = self.conv_shortcut(self.norm3(x.movedim(1, -1)).movedim(-1, 1))
        return h + x


def _space_time_to_channels(x: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, T*st, H*sh, W*sw) -> (B, C*st*sh*sw, T, H, W), in diffusers' channel order."""
    st, sh, sw = stride
    x = x.unflatten(4, (-1, sw)).unflatten(3, (-1, sh)).unflatten(2, (-1, st))
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).flatten(1, 4)


def _channels_to_space_time(x: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """(B, C*st*sh*sw, T, H, W) -> (B, C, T*st, H*sh, W*sw): the inverse of _space_time_to_channels."""
    b, _, t, h, w = x.shape
    st, sh, sw = stride
    x = x.reshape(b, -1, st, sh, sw, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


class Downsampler(nn.Module):
    """Space/time-to-channels after a conv, plus a parameter-free residual (channel-group mean of the
    same reshape). `stride[0] - 1` copies of the first frame go in front, so 1 + 2k frames -> 1 + k."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int, int], padding_mode: str):
        super().__init__()
        self.stride = stride
        volume = stride[0] * stride[1] * stride[2]
        self.group_size = in_channels * volume // out_channels
        self.conv = LTX2Conv3d(in_channels, out_channels // volume, 3, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = torch.cat([x[:, :, : self.stride[0] - 1], x], dim=2)
        residual = _space_time_to_channels(x, self.stride).unflatten(1, (-1, self.group_size)).mean(dim=2)
        return _space_time_to_channels(self.conv(x, causal), self.stride) + residual


class Upsampler(nn.Module):
    """Conv then channels-to-space/time (depth-to-space), dropping the first `stride[0] - 1` frames so
    1 + k latent frames -> 1 + 2k; optional residual: the input's own depth-to-space, repeated."""

    def __init__(self, in_channels: int, stride: tuple[int, int, int], residual: bool, upscale_factor: int,
                 padding_mode: str):
        super().__init__()
        self.stride, self.residual, self.upscale_factor = stride, residual, upscale_factor
        volume = stride[0] * stride[1] * stride[2]
        self.conv = LTX2Conv3d(in_channels, in_channels * volume // upscale_factor, 3, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        drop = self.stride[0] - 1
        out = _channels_to_space_time(self.conv(x, causal), self.stride)[:, :, drop:]
        if self.residual:
            volume = self.stride[0] * self.stride[1] * self.stride[2]
            residual = _channels_to_space_time(x, self.stride).repeat(1, volume // self.upscale_factor, 1, 1, 1)
            out = out + residual[:, :, drop:]
        return out


class DownBlock(nn.Module):
    """Resnets at one width, then the downsampler (a strided conv, or a space/time-to-channels one)."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, eps: float, scale: bool,
                 downsample_type: str, padding_mode: str):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(in_channels, in_channels, eps, padding_mode) for _ in range(num_layers))
        self.downsamplers = None
        if scale:
            if downsample_type == "conv":
                down = LTX2Conv3d(in_channels, in_channels, 3, stride=(2, 2, 2), padding_mode=padding_mode)
            elif downsample_type in STRIDES:
                down = Downsampler(in_channels, out_channels, STRIDES[downsample_type], padding_mode)
            else:
                raise ValueError(f"unknown downsample_type {downsample_type!r}")
            self.downsamplers = nn.ModuleList([down])

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, causal)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x, causal)
        return x


class MidBlock(nn.Module):
    def __init__(self, channels: int, num_layers: int, eps: float, padding_mode: str):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, eps, padding_mode) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, causal)
        return x


class UpBlock(nn.Module):
    """A width-changing resnet (`conv_in`) when needed, the upsampler, then resnets."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, eps: float, scale: bool,
                 upsample_type: str, residual: bool, upscale_factor: int, padding_mode: str):
        super().__init__()
        self.conv_in = ResnetBlock(in_channels, out_channels, eps, padding_mode) if in_channels != out_channels else None
        self.upsamplers = None
        if scale:
            if upsample_type not in STRIDES:
                raise ValueError(f"unknown upsample_type {upsample_type!r}")
            self.upsamplers = nn.ModuleList([Upsampler(out_channels * upscale_factor, STRIDES[upsample_type],
                                                       residual, upscale_factor, padding_mode)])
        self.resnets = nn.ModuleList(ResnetBlock(out_channels, out_channels, eps, padding_mode)
                                     for _ in range(num_layers))

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        if self.conv_in is not None:
            x = self.conv_in(x, causal)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, causal)
        for resnet in self.resnets:
            x = resnet(x, causal)
        return x


class Encoder(nn.Module):
    """Video -> raw posterior moments: 4x4 patchify, conv, down blocks, mid block, norm, SiLU, conv to
    latent + 1 channels (the last is one shared log-variance, repeated to all latent channels)."""

    def __init__(self, cfg: dict):
        super().__init__()
        p, pad, eps = cfg["patch_size"], cfg["encoder_spatial_padding_mode"], cfg["resnet_norm_eps"]
        self.patch_size, self.causal = p, cfg["encoder_causal"]
        width = cfg["latent_channels"]
        self.conv_in = LTX2Conv3d(cfg["in_channels"] * p * p, width, 3, padding_mode=pad)
        blocks = []
        for i, out in enumerate(cfg["block_out_channels"]):
            blocks.append(DownBlock(width, out, cfg["layers_per_block"][i], eps, cfg["spatio_temporal_scaling"][i],
                                    cfg["downsample_type"][i], pad))
            width = out
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(width, cfg["layers_per_block"][-1], eps, pad)
        self.norm_out = PerChannelRMSNorm()
        self.conv_out = LTX2Conv3d(width, cfg["latent_channels"] + 1, 3, padding_mode=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, t, 1, h // p, p, w // p, p).permute(0, 1, 3, 7, 5, 2, 4, 6).flatten(1, 4)
        x = self.conv_in(x, self.causal)
        for block in self.down_blocks:
            x = block(x, self.causal)
        x = self.mid_block(x, self.causal)
        x = self.conv_out(F.silu(self.norm_out(x)), self.causal)
        logvar = x[:, -1:].repeat(1, x.shape[1] - 2, 1, 1, 1)
        return torch.cat([x, logvar], dim=1)


class Decoder(nn.Module):
    """Raw latents -> video: conv, mid block, up blocks, norm, SiLU, conv, 4x4 un-patchify."""

    def __init__(self, cfg: dict):
        super().__init__()
        p, pad, eps = cfg["patch_size"], cfg["decoder_spatial_padding_mode"], cfg["resnet_norm_eps"]
        self.patch_size, self.causal = p, cfg["decoder_causal"]
        widths = list(reversed(cfg["decoder_block_out_channels"]))
        scaling = list(reversed(cfg["decoder_spatio_temporal_scaling"]))
        layers = list(reversed(cfg["decoder_layers_per_block"]))
        residual = list(reversed(cfg["upsample_residual"]))
        factor = list(reversed(cfg["upsample_factor"]))
        width = widths[0]
        self.conv_in = LTX2Conv3d(cfg["latent_channels"], width, 3, padding_mode=pad)
        self.mid_block = MidBlock(width, layers[0], eps, pad)
        blocks = []
        for i, out in enumerate(widths):
            blocks.append(UpBlock(width // factor[i], out // factor[i], layers[i + 1], eps, scaling[i],
                                  cfg["upsample_type"][i], residual[i], factor[i], pad))
            width = out // factor[i]
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = PerChannelRMSNorm()
        self.conv_out = LTX2Conv3d(width, cfg["out_channels"] * p * p, 3, padding_mode=pad)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z, self.causal)
        x = self.mid_block(x, self.causal)
        for block in self.up_blocks:
            x = block(x, self.causal)
        x = self.conv_out(F.silu(self.norm_out(x)), self.causal)
        b, _, t, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, -1, 1, p, p, t, h, w).permute(0, 1, 5, 2, 6, 4, 7, 3)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


# --------------------------------------------------------------------------------------
# Spatial tiling, exactly diffusers' (tiles overlap in latent space, blends are linear in pixels)
# --------------------------------------------------------------------------------------


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Ramp from the end of `a` into the start of `b` over `extent` positions along `dim` (in place in b)."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    for i in range(extent):
        src = a.narrow(dim, a.shape[dim] - extent + i, 1)
        dst = b.narrow(dim, i, 1)
        dst.copy_(src * (1 - i / extent) + dst * (i / extent))
    return b


class SpatialTiling:
    """diffusers' `tiled_decode` tiles: `tile` pixels a side, one every `stride` pixels; tiling starts
    when the latent is larger than one tile. The decode of each tile is independent: peak memory is one
    tile's activations (plus the output video)."""

    def __init__(self, tile: int = 512, stride: int = 448):
        if not 0 < stride <= tile:
            raise ValueError(f"tile stride must be in (0, tile]; got tile {tile}, stride {stride}")
        self.tile, self.stride = tile, stride

    def applies(self, z: torch.Tensor, spatial_compression: int) -> bool:
        t = self.tile // spatial_compression
        return z.shape[-1] > t or z.shape[-2] > t

    def decode(self, decoder: Decoder, z: torch.Tensor, spatial_compression: int) -> torch.Tensor:
        sc = spatial_compression
        tile_l, stride_l = self.tile // sc, self.stride // sc
        blend = self.tile - self.stride
        h, w = z.shape[-2:]
        for size in (h, w):  # the reflect padding of a conv needs 2 latent pixels (diffusers fails the same way)
            if any(min(tile_l, size - start) < 2 for start in range(0, size, stride_l)):
                raise ValueError(f"spatial tiles of {self.tile} px every {self.stride} px leave an edge tile under "
                                 f"2 latent pixels on a {size}-latent side; pick decode.tile / decode.tile_stride "
                                 f"so the last tile is wider")
        rows = [[decoder(z[:, :, :, i: i + tile_l, j: j + tile_l]) for j in range(0, w, stride_l)]
                for i in range(0, h, stride_l)]
        out_rows = []
        for i, row in enumerate(rows):
            out_row = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = _blend(rows[i - 1][j], tile, blend, 3)
                if j > 0:
                    tile = _blend(row[j - 1], tile, blend, 4)
                out_row.append(tile[:, :, :, : self.stride, : self.stride])
            out_rows.append(torch.cat(out_row, dim=4))
        return torch.cat(out_rows, dim=3)[:, :, :, : h * sc, : w * sc]


# --------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------


class LTX2VAE(DiffusersVAEFiles, nn.Module):
    """`AutoencoderKLLTX2Video` behind the engine's VAE interface: `encode`, `decode`, `stream_decoder()`,
    `stream_encoder()`, `latent_channels`, `temporal_compression`, `spatial_compression`, `num_frames` /
    `num_latent_frames` (the 1 + 8k rule). `tiling` (a SpatialTiling or None) applies to every decode."""

    diffusers_class = CLASS_NAME

    def __init__(self, **config):
        super().__init__()
        cfg = ltx2_config(config)
        self.config = cfg
        self.latent_channels = cfg["latent_channels"]
        self.in_channels = cfg["in_channels"]
        scale = sum(bool(s) for s in cfg["spatio_temporal_scaling"])
        self.spatial_compression = cfg["spatial_compression_ratio"] or cfg["patch_size"] * 2**scale
        self.temporal_compression = cfg["temporal_compression_ratio"] or cfg["patch_size_t"] * 2**scale
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        z = cfg["latent_channels"]
        # Persistent: the release stores them in the safetensors (diffusers' buffers), not in config.json.
        self.register_buffer("latents_mean", torch.zeros(z))
        self.register_buffer("latents_std", torch.ones(z))
        self.tiling: SpatialTiling | None = None
        # Latent frames each side of a streamed block's window (WindowedDecoder); None: whole-clip decode (exact).
        self.decode_context: int | None = None
        self.max_gib: float | None = None  # the decode's activation budget (config decode.max_gib)

    def configure_decode(self, decode) -> None:
        """Apply a config's `decode` section (engine.config.DecodeConfig): window context and tiling."""
        if decode.context is not None and decode.context < 0:
            raise ValueError(f"decode.context must be >= 0 latent frames or null (whole clip); got {decode.context}")
        self.decode_context = decode.context
        self.max_gib = decode.max_gib
        if decode.tile is None:
            self.tiling = None
            return
        stride = decode.tile_stride if decode.tile_stride is not None else decode.tile - 64
        sc = self.spatial_compression
        if decode.tile % sc or stride % sc or stride <= 0:
            raise ValueError(f"decode.tile and decode.tile_stride must be positive multiples of {sc} pixels "
                             f"(the VAE's spatial compression); got {decode.tile} and {stride}")
        self.tiling = SpatialTiling(decode.tile, stride)

    # ---- memory, from shapes ----------------------------------------------------------

    def decode_activation_elements(self, latent_frames: int, height: int, width: int) -> int:
        """Elements held at once at the decoder's worst point, for one untiled pass over `latent_frames`
        latent frames at height x width pixels (batch 1). A walk over the stage shapes: a resnet holds
        its input, the normalised/activated copy, the time-padded copy and the conv output (4 tensors of
        its stage); an upsampler holds its input, the conv output, its depth-to-space copy and the
        repeated residual. Checked against measured peaks in tests/engine/test_ltx2_vae.py."""
        d = self.decoder
        sc = self.spatial_compression
        t, h, w = latent_frames, height // sc, width // sc
        c = d.conv_in.conv.out_channels
        peak = self.latent_channels * t * h * w + 4 * c * t * h * w
        for block in d.up_blocks:
            if block.conv_in is not None:
                c = block.conv_in.conv2.conv.out_channels
                peak = max(peak, 4 * c * t * h * w)
            if block.upsamplers is not None:
                up = block.upsamplers[0]
                st, sh, sw = up.stride
                conv_out = up.conv.conv.out_channels * t * h * w
                t, h, w = st * t - (st - 1), sh * h, sw * w
                c = up.conv.conv.out_channels // (st * sh * sw)
                peak = max(peak, c * st * sh * sw * t * h * w // (st * sh * sw) + conv_out + 2 * c * t * h * w)
            peak = max(peak, 4 * c * t * h * w)
        out = d.conv_out.conv.out_channels * t * h * w
        return max(peak, 2 * c * t * h * w + 2 * out)

    def decode_peak_bytes(self, latent_frames: int, height: int, width: int) -> int:
        """Peak activation bytes of one decode as configured: the whole clip, or one window
        (`decode_context`: 2 context + the block), over one spatial tile when tiling applies."""
        if self.tiling is not None and (height > self.tiling.tile or width > self.tiling.tile):
            height, width = min(height, self.tiling.tile), min(width, self.tiling.tile)
        return self.decode_activation_elements(latent_frames, height, width) * self.latents_mean.element_size()

    def check_decode_memory(self, frames: int, width: int, height: int, block_latent: int) -> None:
        """ValueError (one line, naming the settings that would make it fit) when decoding `frames` frames
        at width x height, as configured, needs more than `max_gib` (config `decode.max_gib`; unset, load_engine
        sets it on CUDA to the device's free memory with the model loaded; on CPU no limit)."""
        if self.max_gib is None:  # load_engine sets it on CUDA (the memory free after loading); CPU: no limit
            return
        budget = self.max_gib * 2**30
        latent = 1 + (frames - 1) // self.temporal_compression
        window = latent if self.decode_context is None else min(latent, block_latent + 2 * self.decode_context)
        need = self.decode_peak_bytes(window, height, width)
        if need <= budget:
            return
        hints = []
        if self.tiling is None:
            hints.append("decode.tile: 512 (spatial tiles)")
        if self.decode_context is None or window > block_latent + 2:
            hints.append("decode.context: 1 (temporal windows)")
        hints.append("fewer frames or a smaller size")
        raise ValueError(f"this request's VAE decode ({frames} frames at {width}x{height}) needs about "
                         f"{need / 2**30:.2f} GiB of activations, more than the {budget / 2**30:.2f} GiB available "
                         f"(decode.max_gib); set {' or '.join(hints)}")

    # ---- the 1 + 8k rule ------------------------------------------------------------

    def num_frames(self, latent_frames: int) -> int:
        return 1 + self.temporal_compression * (latent_frames - 1)

    def num_latent_frames(self, frames: int) -> int:
        tc = self.temporal_compression
        if frames < 1 or (frames - 1) % tc:
            raise ValueError(f"the LTX-2 VAE codes 1 + {tc}k frames (1, {1 + tc}, {1 + 2 * tc}, ...); got {frames}")
        return 1 + (frames - 1) // tc

    # ---- latent statistics (SanaVideoPipeline's expressions, for identical rounding) ---

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.latent_channels, 1, 1, 1)
        return (self.latents_mean.view(shape).to(like.device, like.dtype),
                (1.0 / self.latents_std.view(shape)).to(like.device, like.dtype))

    def normalize_latents(self, raw: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self._stats(raw)
        return (raw - mean) * inv_std

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        shape = (1, self.latent_channels, 1, 1, 1)
        mean = self.latents_mean.view(shape).to(latents.device, latents.dtype)
        inv_std = 1.0 / self.latents_std.view(shape).to(latents.device, latents.dtype)  # cast first, as diffusers
        return latents / inv_std + mean

    # ---- encoding -------------------------------------------------------------------

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != self.in_channels:
            raise ValueError(f"video must have shape (B, {self.in_channels}, T, H, W); got {tuple(video.shape)}")
        if not video.is_floating_point():
            raise ValueError(f"video must be a float tensor in [-1, 1]; got dtype {video.dtype}")
        _, _, t, h, w = video.shape
        sc = self.spatial_compression
        if h == 0 or w == 0 or h % sc or w % sc:
            raise ValueError(f"video is {h}x{w} (HxW); height and width must be positive multiples of {sc}")
        self.num_latent_frames(t)

    def encode_distribution(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logvar) in raw latent space; logvar clamped to [-30, 20] as diffusers does."""
        self._check_video(video)
        moments = self.encoder(video.to(self.latents_mean.dtype))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, 1+8k, H, W) in [-1, 1] -> normalised posterior mode (B, 128, 1+k, H/32, W/32)."""
        return self.normalize_latents(self.encode_distribution(video)[0])

    def stream_encoder(self) -> "WholeEncoder":
        return WholeEncoder(self)

    # ---- decoding -------------------------------------------------------------------

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Raw (de-normalised) latents -> video, unclamped: diffusers' `vae.decode(z).sample`, tiled when
        `self.tiling` applies (as diffusers with `enable_tiling` and the same tile sizes)."""
        if self.tiling is not None and self.tiling.applies(z, self.spatial_compression):
            return self.tiling.decode(self.decoder, z, self.spatial_compression)
        return self.decoder(z)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents of a whole clip (B, 128, t, h, w) -> (B, 3, 1 + 8(t-1), 32h, 32w) in [-1, 1]."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels or latents.shape[2] == 0:
            raise ValueError(f"latents must have shape (B, {self.latent_channels}, t>0, h, w); got {tuple(latents.shape)}")
        z = self.denormalize_latents(latents.to(self.latents_mean.dtype))
        return self.decode_raw(z).clamp(-1.0, 1.0)  # the pipeline's postprocess clamps the same way

    def stream_decoder(self) -> "WindowedDecoder":
        return WindowedDecoder(self, self.decode_context)


class WindowedDecoder:
    """Decodes a clip block by block (the non-causal decoder's streaming), in one of two ways.

    `see(latents)` hands over the clip's normalised latents (full-sequence mode has all of them before
    the first block); each `decode(piece)` then returns the next block's frames: 1 + 8(t-1) for the first
    block, 8t after, the same counts as the causal VAEs' stream decoders.
    - `context=None` (exact): the first call decodes the whole clip once and later calls hand out its
      frames. Equal to `decode`; activations grow with the clip.
    - `context=c` (windowed): each block is decoded from the window [start - c, end + c) of the clip
      (clipped to the clip) and only the block's frames are kept. Activations are bounded by the
      window, not the clip. Frames near a window's edge see replicated instead of real neighbours;
      the decoder's temporal receptive field is long (release: ~20 latent frames each side, more than
      an 81-frame clip), so this is an approximation whose size depends on the weights: measured on
      tiny random weights in tests/engine/test_ltx2_vae.py, unmeasured on the released weights.
    Without `see` (latents arriving piece by piece) each piece is decoded with what has been seen so
    far as left context.
    """

    batched = False  # decode_streams: decode each video on its own (there is no shared cache to merge)

    def __init__(self, vae: LTX2VAE, context: int | None):
        if context is not None and context < 0:
            raise ValueError(f"decode context must be >= 0 latent frames or None (whole clip); got {context}")
        self.vae, self.context = vae, context
        # The rollout snapshots and restores a stream decoder's `cache` (module -> tensor, saved under the
        # module's name). What this decoder must carry across a resume, the clip's latents and how many
        # latent frames are handed out, lives there, keyed by the decoder module and its conv_in.
        self.cache: dict = {}
        self.decoded: torch.Tensor | None = None  # the whole clip's frames (context=None); recomputed on resume

    @property
    def clip(self) -> torch.Tensor | None:
        return self.cache.get(self.vae.decoder)

    @clip.setter
    def clip(self, latents: torch.Tensor | None) -> None:
        if latents is None:
            self.cache.pop(self.vae.decoder, None)
        else:
            self.cache[self.vae.decoder] = latents

    @property
    def position(self) -> int:
        """Latent frames already handed out."""
        held = self.cache.get(self.vae.decoder.conv_in)
        return 0 if held is None else int(held)

    @position.setter
    def position(self, value: int) -> None:
        self.cache[self.vae.decoder.conv_in] = torch.tensor(value)

    def see(self, latents: torch.Tensor) -> None:
        self.clip, self.decoded = latents, None

    def reset(self) -> None:
        self.cache.clear()
        self.decoded = None

    @property
    def nbytes(self) -> int:
        held = [t for t in (*self.cache.values(), self.decoded) if t is not None]
        return sum(t.numel() * t.element_size() for t in held)

    def decode(self, piece: torch.Tensor) -> torch.Tensor:
        start, n = self.position, piece.shape[2]
        if self.clip is None or self.clip.shape[2] < start + n:  # latents arriving piece by piece
            self.clip = piece if self.clip is None else torch.cat([self.clip, piece], dim=2)
            self.decoded = None
        total, tc = self.clip.shape[2], self.vae.temporal_compression
        if self.context is None:
            if self.decoded is None:
                self.decoded = self.vae.decode(self.clip)
            video, lo = self.decoded, 0
        else:
            lo, hi = max(0, start - self.context), min(total, start + n + self.context)
            video = self.vae.decode(self.clip[:, :, lo:hi])
        # window frame j is clip frame tc*lo + j; the block's frames are tc*(start-1)+1 .. tc*(start+n-1)
        first = 0 if start == 0 else tc * (start - 1) + 1
        last = tc * (start + n - 1)
        self.position += n
        if self.context is None and self.position >= total:
            self.decoded = None  # handed out: free the frames
        return video[:, :, first - tc * lo: last - tc * lo + 1]


class WholeEncoder:
    """The causal encoder takes a clip whole (1 + 8k frames): the engine's stream_encoder interface,
    for image-to-video (one frame) and video edits."""

    def __init__(self, vae: LTX2VAE):
        self.vae = vae
        self.cache: dict = {}

    def reset(self) -> None:
        pass

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(video)

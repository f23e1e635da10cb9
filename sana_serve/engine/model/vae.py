"""A small causal video VAE for the built-in Shapes model (64x64 RGB, 16 fps).

Compression is 4x in time and 8x in space: a (B, 3, T, 64, 64) clip in [-1, 1] becomes
(B, 8, T/4, 8, 8) latents. Everything temporal is causal, so decoded frames 4i..4i+3
depend only on latent frames <= i. That is what lets the engine decode each finished
block of latents while the next block is still being denoised (`stream_decoder()`),
with a cache of constant size: the last `kernel_t - 1` input frames of every causal conv.

Shape of the network (default config: base 32, `channel_multipliers=(1, 2, 3)`):

    encoder  video --patchify 2x2x2--> 24ch @32x32, T/2 --conv--> 32ch --res-->
             down(t2, s2) --> 64ch @16x16, T/4 --res--> down(s2) --> 96ch @8x8 --res-->
             conv --> mean, logvar (8ch each)
    decoder  the mirror image (2 res blocks per level), ending in un-patchify 2x2x2.

Design choices, and why:
- Temporal down/up-sampling is a reshape between time and channels inside one latent
  frame's group of frames (pixel-(un)shuffle, applied to time too). It never mixes frames
  across groups, so it is causal by construction and works on any chunk boundary that is
  a whole latent frame. Mixing across frames happens only in causal convs.
- Normalisation is an RMS norm over channels at each (frame, pixel): a GroupNorm over
  (C, T, H, W) would let future frames change the statistics of past ones.
- Activations are kept frame-major, (B, T, C, H, W), so every per-frame op is a plain 2-D
  op over B*T images. A causal 3x3x3 conv is computed as one conv2d over the kt
  time-shifted copies stacked along channels ("temporal im2col"): on this CPU that is
  2-8x faster than `F.conv3d` (oneDNN's 3-D conv is slow at small channel counts), and it
  gives the same numbers to ~1e-6. Weights are still stored in the usual Conv3d layout
  (out, in, kt, kh, kw).
- No attention: the Shapes world does not need it, and without it every layer is a conv
  whose streaming state is just its last few input frames.

The built-in model's config sets `first_level_temporal: false`: per-frame 1x3x3 convs at
the full-resolution level, which has 4x the pixels of the next and cost the most. Measured
side by side on a quiet machine (2 threads): 2.70M instead of 2.84M parameters, a 2 s block
(8 latent frames -> 32 frames) decodes in 41 ms instead of 77 ms, and a training step
(batch 8 x 16 frames) takes 0.75 s instead of 1.21 s.

Measured on the project's 2-core CPU, fp32, default config, `torch.inference_mode()`,
batch 1 (other jobs were sharing the machine, hence ranges): 2.84M parameters (0.88M
encoder, 1.96M decoder). Decoding 4 latent frames into 16 frames of 64x64 takes
~25-35 ms as one pass and ~35-45 ms streamed as 4 chunks of one latent frame (~9-14 ms
per chunk); encoding the same 16 frames takes ~13-20 ms. The streaming cache is ~2 MB
per video at 64x64, and streamed output is bit-identical to the full pass here.
A training step (encode, sample, decode, backward) on 2 clips of 16 frames takes ~0.3 s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from sana_serve.engine.memory import storage_bytes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class DiffusersVAEFiles:
    """A VAE module stored as diffusers stores its `AutoencoderKL*` (config.json + safetensors in `vae/`), so
    diffusers loads what we save and we load its folders with strict keys. The class sets `diffusers_class`
    (the `_class_name` it answers to) and keeps its constructor keywords in `self.config`."""

    diffusers_class: str

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu"):
        """Load a diffusers `vae/` folder (config.json + diffusion_pytorch_model.safetensors), strict keys."""
        directory = Path(directory)
        config = json.loads((directory / CONFIG_NAME).read_text())
        name = config.get("_class_name", cls.diffusers_class)
        if name != cls.diffusers_class:
            raise ValueError(f"{directory / CONFIG_NAME} describes a {name}, not an {cls.diffusers_class}")
        try:
            model = cls(**config)
        except ValueError as e:
            raise ValueError(f"{directory / CONFIG_NAME}: {e}") from None
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}")
        model.load_state_dict(load_file(str(weights), device=str(device)), strict=True)
        return model.to(device).eval()

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json and the safetensors weights in diffusers' layout (its class's from_pretrained loads it)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": self.diffusers_class, **self.config}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(directory / WEIGHTS_NAME))

# A cache maps each causal conv to the last (kernel_t - 1) frames of its input, in the
# frame-major layout (B, kernel_t - 1, C, H, W). `None` means "start of the video":
# the past is zeros, exactly what a fresh cache holds.
Cache = dict[nn.Module, torch.Tensor]


# --------------------------------------------------------------------------------------
# Reshapes between (time, space) and channels, in the frame-major layout (B, T, C, H, W).
# --------------------------------------------------------------------------------------


def fold_into_channels(x: torch.Tensor, ft: int, fs: int) -> torch.Tensor:
    """(B, T*ft, C, H*fs, W*fs) -> (B, T, C*ft*fs*fs, H, W).

    Each output frame holds the `ft` consecutive input frames of its group, so output
    frame i sees input frames ft*i .. ft*i + ft - 1 and nothing else.
    """
    b, t, c, h, w = x.shape
    x = x.reshape(b, t // ft, ft, c, h // fs, fs, w // fs, fs)
    x = x.permute(0, 1, 3, 2, 5, 7, 4, 6)  # b, t, c, ft, fs_h, fs_w, h, w
    return x.reshape(b, t // ft, c * ft * fs * fs, h // fs, w // fs)


def unfold_from_channels(x: torch.Tensor, ft: int, fs: int) -> torch.Tensor:
    """(B, T, C*ft*fs*fs, H, W) -> (B, T*ft, C, H*fs, W*fs); inverse of fold_into_channels.

    Output frames ft*i .. ft*i + ft - 1 come from input frame i only.
    """
    b, t, c, h, w = x.shape
    c_out = c // (ft * fs * fs)
    x = x.reshape(b, t, c_out, ft, fs, fs, h, w)
    x = x.permute(0, 1, 3, 2, 6, 4, 7, 5)  # b, t, ft, c, h, fs_h, w, fs_w
    return x.reshape(b, t * ft, c_out, h * fs, w * fs)


# --------------------------------------------------------------------------------------
# Layers. Every layer takes (x, cache) so the encoder/decoder can run them in one loop.
# --------------------------------------------------------------------------------------


class CausalConv3d(nn.Conv3d):
    """A Conv3d that sees only the current and past frames (input and output frame-major).

    The full pass pads `kernel_t - 1` zero frames on the past side. Streaming passes a
    `cache` dict; the conv then prepends the frames it kept from the previous chunk (zeros
    on the first chunk, like the padding) and keeps the last `kernel_t - 1` frames of its
    input for the next chunk. Spatial padding is ordinary "same" zero padding per frame.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3):
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_channels, out_channels, (kt, kh, kw), padding=0)
        self.time_pad = kt - 1
        self.spatial_pad = (kh // 2, kw // 2)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        b, t, c, h, w = x.shape
        kt = self.kernel_size[0]
        if self.time_pad:
            past = cache.get(self) if cache is not None else None
            if past is None:
                past = x.new_zeros(b, self.time_pad, c, h, w)
            x = torch.cat([past, x], dim=1)
            if cache is not None:
                # clone: a slice would keep the whole concatenated chunk alive.
                cache[self] = x[:, -self.time_pad :].clone()
            # Temporal im2col: output frame j sees input frames j .. j+kt-1 of the padded
            # sequence; stacking those kt shifted views on channels turns the 3-D conv into
            # one 2-D conv over all B*t frames.
            x = torch.cat([x[:, k : k + t] for k in range(kt)], dim=2)
        # (out, in, kt, kh, kw) -> (out, kt*in, kh, kw), matching the stacking order above.
        weight = self.weight.transpose(1, 2).reshape(self.out_channels, kt * c, *self.kernel_size[1:])
        y = F.conv2d(x.reshape(b * t, kt * c, h, w), weight, self.bias, padding=self.spatial_pad)
        return y.reshape(b, t, self.out_channels, h, w)


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each (frame, pixel): causal, and independent of chunking."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.pow(2).mean(dim=2, keepdim=True).add(self.eps).rsqrt()
        return x * rms * self.weight.view(-1, 1, 1)


class ResBlock(nn.Module):
    """Pre-norm residual block of two causal 3x3x3 convs (receptive field: 4 past frames), or
    of two per-frame 1x3x3 convs with `kernel_t=1`."""

    def __init__(self, channels: int, kernel_t: int = 3):
        super().__init__()
        self.norm1 = ChannelRMSNorm(channels)
        self.conv1 = CausalConv3d(channels, channels, (kernel_t, 3, 3))
        self.norm2 = ChannelRMSNorm(channels)
        self.conv2 = CausalConv3d(channels, channels, (kernel_t, 3, 3))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return x + h


class Downsample(nn.Module):
    """Fold 2x2 pixels (and `ft` frames) into channels, then a 1x1 conv: together a strided
    2x2(x`ft`) patch conv, as in DiT's patch embedding. The res blocks after it provide the
    spatial context, so a 3x3 kernel here would mostly add parameters."""

    def __init__(self, in_channels: int, out_channels: int, ft: int):
        super().__init__()
        self.ft = ft
        self.conv = CausalConv3d(in_channels * ft * 4, out_channels, 1)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        return self.conv(fold_into_channels(x, self.ft, 2), cache)


class Upsample(nn.Module):
    """A per-frame 3x3 conv to `ft * 4` times the channels, then unfold to 2x2 pixels (and
    `ft` frames). Sub-pixel convolution: each new frame comes from one input frame only.
    3x3 rather than 1x1 so that neighbouring 2x2 output blocks agree (no blockiness)."""

    def __init__(self, in_channels: int, out_channels: int, ft: int):
        super().__init__()
        self.ft = ft
        self.conv = CausalConv3d(in_channels, out_channels * ft * 4, (1, 3, 3))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        return unfold_from_channels(self.conv(x, cache), self.ft, 2)


class OutputHead(nn.Module):
    """Norm, SiLU, causal conv: the last layer of the encoder and of the decoder."""

    def __init__(self, in_channels: int, out_channels: int, kernel_t: int = 3):
        super().__init__()
        self.norm = ChannelRMSNorm(in_channels)
        self.conv = CausalConv3d(in_channels, out_channels, (kernel_t, 3, 3))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        return self.conv(F.silu(self.norm(x)), cache)


def _run(layers: nn.ModuleList, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
    for layer in layers:
        x = layer(x, cache)
    return x


# --------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------


class CausalVideoVAE(nn.Module):
    """Causal video VAE: (B, C, T, H, W) in [-1, 1] <-> normalised latents (B, z, T/4, H/8, W/8).

    Public tensors are channel-first, (B, C, T, H, W), like diffusers' video VAEs.
    Compression: `patch_size * 2**(levels-1)` in space and
    `temporal_patch_size * 2**sum(temporal_downsample)` in time (8 and 4 by default).
    `latent_mean`/`latent_std` (per channel) normalise latents: `encode` returns
    `(mean - latent_mean) / latent_std` and `decode` undoes it, so the diffusion model sees
    roughly unit-variance latents once the statistics are measured after training.
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 8,
        base_channels: int = 32,
        channel_multipliers: Sequence[int] = (1, 2, 3),
        encoder_res_blocks: int = 1,
        decoder_res_blocks: int = 2,
        patch_size: int = 2,
        temporal_patch_size: int = 2,
        temporal_downsample: Sequence[bool] = (True, False),
        first_level_temporal: bool = True,
        latent_mean: Sequence[float] | None = None,
        latent_std: Sequence[float] | None = None,
    ):
        super().__init__()
        levels = len(channel_multipliers)
        if len(temporal_downsample) != levels - 1:
            raise ValueError(
                f"temporal_downsample needs one flag per level transition ({levels - 1}), "
                f"got {len(temporal_downsample)}"
            )
        latent_mean = [0.0] * latent_channels if latent_mean is None else [float(v) for v in latent_mean]
        latent_std = [1.0] * latent_channels if latent_std is None else [float(v) for v in latent_std]
        if len(latent_mean) != latent_channels or len(latent_std) != latent_channels:
            raise ValueError(f"latent_mean and latent_std need {latent_channels} values each")
        if any(s <= 0 for s in latent_std):
            raise ValueError("latent_std values must be positive")

        # JSON-serialisable constructor keywords, written by save_pretrained.
        self.config = {
            "in_channels": in_channels,
            "latent_channels": latent_channels,
            "base_channels": base_channels,
            "channel_multipliers": [int(m) for m in channel_multipliers],
            "encoder_res_blocks": encoder_res_blocks,
            "decoder_res_blocks": decoder_res_blocks,
            "patch_size": patch_size,
            "temporal_patch_size": temporal_patch_size,
            "temporal_downsample": [bool(d) for d in temporal_downsample],
            "first_level_temporal": bool(first_level_temporal),
            "latent_mean": latent_mean,
            "latent_std": latent_std,
        }
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.spatial_compression = patch_size * 2 ** (levels - 1)
        self.temporal_compression = temporal_patch_size * 2 ** sum(bool(d) for d in temporal_downsample)

        channels = [base_channels * m for m in channel_multipliers]
        patch_channels = in_channels * temporal_patch_size * patch_size**2
        time_factors = [2 if d else 1 for d in temporal_downsample]

        # The full-resolution level has 4x the pixels of the next one and costs the most; with
        # first_level_temporal=False its convs are per frame (1x3x3) and frames mix only below it.
        kt = [3] * levels
        if not first_level_temporal:
            kt[0] = 1
        encoder: list[nn.Module] = [CausalConv3d(patch_channels, channels[0], (kt[0], 3, 3))]
        for level, ch in enumerate(channels):
            encoder += [ResBlock(ch, kt[level]) for _ in range(encoder_res_blocks)]
            if level < levels - 1:
                encoder.append(Downsample(ch, channels[level + 1], time_factors[level]))
        encoder.append(OutputHead(channels[-1], 2 * latent_channels))  # mean and logvar
        self.encoder = nn.ModuleList(encoder)

        decoder: list[nn.Module] = [CausalConv3d(latent_channels, channels[-1], 3)]
        for level in reversed(range(levels)):
            decoder += [ResBlock(channels[level], kt[level]) for _ in range(decoder_res_blocks)]
            if level > 0:
                decoder.append(Upsample(channels[level], channels[level - 1], time_factors[level - 1]))
        decoder.append(OutputHead(channels[0], patch_channels, kt[0]))
        self.decoder = nn.ModuleList(decoder)

        # Not persistent: config.json is their one source of truth.
        stat_shape = (1, latent_channels, 1, 1, 1)
        self.register_buffer("latent_mean", torch.tensor(latent_mean).view(stat_shape), persistent=False)
        self.register_buffer("latent_std", torch.tensor(latent_std).view(stat_shape), persistent=False)

    # ---- encoding -------------------------------------------------------------------

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5:
            raise ValueError(f"video must have shape (B, C, T, H, W); got {tuple(video.shape)}")
        if not video.is_floating_point():
            raise ValueError(f"video must be a float tensor in [-1, 1]; got dtype {video.dtype}")
        _, c, t, h, w = video.shape
        if c != self.in_channels:
            raise ValueError(f"video has {c} channels; this VAE expects {self.in_channels}")
        tc, sc = self.temporal_compression, self.spatial_compression
        if t == 0 or t % tc:
            raise ValueError(f"video has {t} frames; the frame count must be a positive multiple of {tc}")
        if h == 0 or w == 0 or h % sc or w % sc:
            raise ValueError(f"video is {h}x{w} (HxW); height and width must be positive multiples of {sc}")

    def _encode_moments(self, video: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        self._check_video(video)
        x = video.transpose(1, 2)  # frame-major (B, T, C, H, W)
        x = fold_into_channels(x, self.temporal_patch_size, self.patch_size)
        x = _run(self.encoder, x, cache)
        return x.transpose(1, 2)  # (B, 2z, t, h, w)

    def encode_distribution(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logvar) in raw, un-normalised latent space, each (B, z, T/4, H/8, W/8).

        For training: sample `mean + exp(logvar / 2) * noise`, decode after normalising, and
        regularise with KL(N(mean, exp(logvar)) || N(0, 1)).
        """
        mean, logvar = self._encode_moments(video, None).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def normalize_latents(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.latent_mean) / self.latent_std

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.latent_std + self.latent_mean

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, C, T, H, W) in [-1, 1] -> normalised posterior mean (B, z, T/4, H/8, W/8)."""
        mean = self._encode_moments(video, None)[:, : self.latent_channels]
        return self.normalize_latents(mean)

    # ---- decoding -------------------------------------------------------------------

    def _decode(self, latents: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        if latents.ndim != 5:
            raise ValueError(f"latents must have shape (B, C, t, h, w); got {tuple(latents.shape)}")
        if latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents have {latents.shape[1]} channels; this VAE expects {self.latent_channels}")
        if latents.shape[2] == 0:
            raise ValueError("latents have 0 frames")
        x = self.denormalize_latents(latents).transpose(1, 2)
        x = _run(self.decoder, x, cache)
        x = unfold_from_channels(x, self.temporal_patch_size, self.patch_size)
        return x.transpose(1, 2).contiguous()  # (B, C, 4t, H, W)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, z, t, h, w) -> video (B, C, 4t, 8h, 8w), roughly in [-1, 1]."""
        return self._decode(latents, None)

    def stream_decoder(self) -> StreamingVAEDecoder:
        """A decoder that takes latents chunk by chunk; concatenated outputs equal `decode`."""
        return StreamingVAEDecoder(self)

    def stream_encoder(self) -> StreamingVAEEncoder:
        """An encoder that takes video in chunks of whole latent frames (multiples of 4 frames)."""
        return StreamingVAEEncoder(self)

    # ---- checkpoints ----------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `config.json` and `diffusion_pytorch_model.safetensors` (diffusers layout)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": type(self).__name__, **self.config}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> CausalVideoVAE:
        directory = Path(directory)
        config = json.loads((directory / CONFIG_NAME).read_text())
        name = config.get("_class_name", cls.__name__)
        if name != cls.__name__:
            raise ValueError(f"{directory / CONFIG_NAME} describes a {name}, not a {cls.__name__}")
        # Keys starting with "_" are metadata (_class_name, _diffusers_version, ...).
        model = cls(**{k: v for k, v in config.items() if not k.startswith("_")})
        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME), device=str(device)), strict=True)
        return model.to(device).eval()


class _StreamingVAE:
    """Holds the causal cache: the last kernel_t - 1 input frames of every causal conv."""

    def __init__(self, vae: CausalVideoVAE):
        self.vae = vae
        self.cache: Cache = {}

    def reset(self) -> None:
        """Start a new video: the next chunk sees a zero past, like a full pass."""
        self.cache.clear()

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds (its storages, each once); constant after the first chunk, however many
        chunks follow."""
        return storage_bytes(self.cache.values())


class StreamingVAEDecoder(_StreamingVAE):
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent chunk (B, z, t, h, w), any t >= 1 -> the next frames (B, C, T, 8h, 8w): T = 4t for
        CausalVideoVAE; for the Wan VAE 1 + 4(t-1) on the first chunk of a video, 4t after it."""
        return self.vae._decode(latents, self.cache)


def decode_streams(decoders: list[StreamingVAEDecoder], latents: list[torch.Tensor]) -> list[torch.Tensor]:
    """Decode several videos' next chunks in one batched pass; each decoder keeps its own cache.

    The chunks must have the same shape and the decoders the same progress (all fresh, or all
    past their first chunk). One decoder alone takes the plain path, bit-identical to `decode`.
    """
    if len(decoders) == 1 or not getattr(decoders[0], "batched", True):  # windowed decoders: one at a time
        return [d.decode(x) for d, x in zip(decoders, latents)]
    keys = set(decoders[0].cache)
    if any(set(d.cache) != keys for d in decoders):
        raise ValueError("decode_streams needs decoders at the same progress (all fresh or all started)")
    merged = {m: torch.cat([d.cache[m] for d in decoders]) for m in keys}
    sizes = [x.shape[0] for x in latents]
    video = decoders[0].vae._decode(torch.cat(latents), merged)
    for m, tail in merged.items():  # every decoder takes back its own rows of the updated cache
        for d, rows in zip(decoders, tail.split(sizes)):
            d.cache[m] = rows
    return list(video.split(sizes))


class StreamingVAEEncoder(_StreamingVAE):
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video chunk (B, C, T, H, W) -> its normalised latents. T a multiple of 4 for CausalVideoVAE;
        for the Wan VAE 1 + 4k frames in the first chunk of a video, multiples of 4 after it."""
        mean = self.vae._encode_moments(video, self.cache)[:, : self.vae.latent_channels]
        return self.vae.normalize_latents(mean)


def vae_classes() -> dict[str, type[nn.Module]]:
    """Every VAE class servable through load_vae, by the `_class_name` of its config.json. All of them
    share the interface used by the engine: encode, decode, stream_decoder, stream_encoder,
    temporal_compression, spatial_compression, latent_channels (and `_decode(latents, cache)` /
    `_encode_moments(video, cache)` with a `Cache` dict, for the streaming classes above)."""
    from sana_serve.engine.model.ltx2_vae import CLASS_NAME as LTX2_CLASS_NAME, LTX2VAE  # both import this module
    from sana_serve.engine.model.wan_vae import CLASS_NAME as WAN_CLASS_NAME, WanVAE

    return {"CausalVideoVAE": CausalVideoVAE, WAN_CLASS_NAME: WanVAE, LTX2_CLASS_NAME: LTX2VAE}


def load_vae(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load the VAE in `directory` (config.json + safetensors), dispatching on `_class_name`:
    `CausalVideoVAE` (the built-in Shapes VAE) or `AutoencoderKLWan` (the Wan2.1 VAE of diffusers checkpoints)."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no VAE config at {config_path}")
    name = json.loads(config_path.read_text()).get("_class_name")
    classes = vae_classes()
    if name not in classes:
        raise ValueError(f"{config_path}: unknown VAE class {name!r}; known: {', '.join(classes)}")
    return classes[name].from_pretrained(directory, device=device)

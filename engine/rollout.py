"""Block-autoregressive rollout: prompt -> stream of finished blocks of uint8 frames.

For each chunk of latent frames: draw seeded noise, denoise it with a few flow steps while
attending to the past through the StreamState, decode it with the VAE's causal cache, hand the
block to the caller, and only then run the model once more on the clean chunk at t=0 to fold
it into the state (so the caller gets each block one forward earlier).

Every chunk's noise comes from its own generator seeded by (seed, chunk, step), so a rollout
is byte-reproducible and can resume from any block boundary without replaying the RNG.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from engine.config import ModelConfig
from engine.model.transformer import SanaVideoTransformer, TextContext
from engine.sampler import guided, make_sigmas, sample_chunk
from engine.state import StreamState


class Cancelled(Exception):
    """The caller asked to stop; raised between denoising steps."""


@dataclass
class GenerationRequest:
    prompt: str
    seconds: float
    seed: int = 0
    negative_prompt: str = ""
    num_inference_steps: int | None = None  # per chunk; None = the config's default
    guidance_scale: float | None = None
    sampler: str | None = None


@dataclass
class Block:
    index: int
    frame_start: int
    frames: np.ndarray  # (T, H, W, 3) uint8
    num_blocks: int
    seconds: float  # wall time spent producing this block
    state_bytes: int = 0  # size of the carried stream state after this block

    @property
    def frame_count(self) -> int:
        return len(self.frames)


def chunk_plan(total_frames: int, temporal_compression: int, chunk_frames: int) -> tuple[list[int], int]:
    """Latent frames per chunk, and how many decoded frames to drop from the start of block 0.

    The first chunk takes the remainder, so every later block has the full, regular size.
    """
    if total_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {total_frames}")
    latent = math.ceil(total_frames / temporal_compression)
    full, rest = divmod(latent, chunk_frames)
    sizes = ([rest] if rest else []) + [chunk_frames] * full
    return sizes, latent * temporal_compression - total_frames


def noise_generator(seed: int, *keys: int) -> torch.Generator:
    """A generator for one (chunk, step) of one request: independent streams, resumable anywhere."""
    entropy = np.random.SeedSequence([seed % (1 << 63), *keys]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(entropy[0] >> np.uint64(1)))


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    return ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


class Engine:
    """Holds the model parts; `stream(request)` runs one request."""

    def __init__(self, transformer: SanaVideoTransformer, vae, text_encoder, config: ModelConfig,
                 device: str | torch.device = "cpu"):
        self.transformer = transformer.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.config = config
        self.device = torch.device(device)
        self.latent_channels = vae.latent_channels
        v = config.video
        self.latent_hw = (v.height // vae.spatial_compression, v.width // vae.spatial_compression)

    # -- request validation ----------------------------------------------------------------
    def total_frames(self, seconds: float) -> int:
        return int(round(seconds * self.config.video.fps))

    def validate(self, req: GenerationRequest) -> None:
        lim = self.config.limits
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if len(req.prompt) > lim.max_prompt_chars:
            raise ValueError(f"prompt is {len(req.prompt)} characters; the limit is {lim.max_prompt_chars}")
        if not (isinstance(req.seconds, (int, float)) and math.isfinite(req.seconds)) or req.seconds <= 0:
            raise ValueError(f"seconds must be a positive number, got {req.seconds!r}")
        if req.seconds > lim.max_seconds:
            raise ValueError(f"seconds must be at most {lim.max_seconds:g} for this model, got {req.seconds:g}")
        if self.total_frames(req.seconds) < 1:
            raise ValueError(f"seconds={req.seconds:g} is shorter than one frame at {self.config.video.fps} fps")
        if req.num_inference_steps is not None and not (1 <= req.num_inference_steps <= lim.max_steps):
            raise ValueError(f"num_inference_steps must be between 1 and {lim.max_steps}")
        if req.guidance_scale is not None and not (lim.min_guidance <= req.guidance_scale <= lim.max_guidance):
            raise ValueError(f"guidance_scale must be between {lim.min_guidance:g} and {lim.max_guidance:g}")
        if not isinstance(req.seed, int) or req.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {req.seed!r}")

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def stream(self, req: GenerationRequest, cancelled: Callable[[], bool] | None = None) -> Iterator[Block]:
        """Yield finished blocks as soon as each is decoded. Exactly round(seconds·fps) frames in all."""
        self.validate(req)
        rollout = Rollout(self, req)
        for _ in range(rollout.num_blocks):
            yield rollout.next_block(cancelled)

    def text_context(self, prompt: str, negative_prompt: str, guidance_scale: float) -> TextContext:
        """Cond rows first, then uncond rows when guidance is on."""
        prompts = [prompt] + ([negative_prompt] if guidance_scale != 1.0 else [])
        encoded = [self.text_encoder.encode_one(p) for p in prompts]
        states = torch.stack([s for s, _ in encoded]).to(self.device)
        mask = torch.stack([m for _, m in encoded]).to(self.device)
        return self.transformer.encode_text(states, mask)


@dataclass
class Rollout:
    """The resumable state of one request: which block is next, the stream state, the VAE cache."""

    engine: Engine
    request: GenerationRequest
    chunk_sizes: list[int] = field(init=False)
    trim: int = field(init=False)
    next_index: int = 0
    next_frame: int = 0

    def __post_init__(self):
        e, cfg = self.engine, self.engine.config
        s = cfg.sampling
        self.chunk_sizes, self.trim = chunk_plan(e.total_frames(self.request.seconds),
                                                 e.vae.temporal_compression, s.chunk_frames)
        self.guidance = s.guidance_scale if self.request.guidance_scale is None else self.request.guidance_scale
        self.sampler = self.request.sampler or s.sampler
        steps = self.request.num_inference_steps or s.steps
        use_fixed = s.timesteps is not None and self.request.num_inference_steps is None
        self.sigmas = make_sigmas(steps, s.flow_shift, s.timesteps if use_fixed else None)
        self.text = e.text_context(self.request.prompt, self.request.negative_prompt, self.guidance)
        rows = 2 if self.guidance != 1.0 else 1
        self.state: StreamState = e.transformer.new_state(rows, s.window_chunks)
        self.decoder = e.vae.stream_decoder()
        self.pending_clean: torch.Tensor | None = None  # last chunk, not yet folded into the state

    @property
    def num_blocks(self) -> int:
        return len(self.chunk_sizes)

    def _fold_pending(self) -> None:
        """Run the clean previous chunk at t=0 through the model to add it to the state."""
        if self.pending_clean is None:
            return
        rows = self.state.layers[0].vk.shape[0]
        x = self.pending_clean.expand(rows, -1, -1, -1, -1)
        t = torch.zeros(rows, device=x.device)
        self.engine.transformer.forward_chunk(x, t, self.text, self.state, update_state=True)
        self.pending_clean = None

    def next_block(self, cancelled: Callable[[], bool] | None = None) -> Block:
        if self.next_index >= self.num_blocks:
            raise StopIteration("all blocks have been generated")
        start = time.perf_counter()
        e, req = self.engine, self.request
        self._fold_pending()
        n = self.chunk_sizes[self.next_index]
        h, w = e.latent_hw
        shape = (1, e.latent_channels, n, h, w)
        noise = torch.randn(shape, generator=noise_generator(req.seed, self.next_index, 0)).to(e.device)

        def velocity(x, t):
            return e.transformer.forward_chunk(x, t, self.text, self.state)

        def renoise(step):
            return torch.randn(shape, generator=noise_generator(req.seed, self.next_index, step + 1)).to(e.device)

        def on_step(_):
            if cancelled is not None and cancelled():
                raise Cancelled()

        x0 = sample_chunk(guided(velocity, self.guidance), noise, self.sigmas, self.sampler, renoise, on_step)
        frames = to_uint8(self.decoder.decode(x0))
        if self.next_index == 0 and self.trim:
            frames = frames[self.trim:]
        self.pending_clean = x0
        block = Block(self.next_index, self.next_frame, frames, self.num_blocks, time.perf_counter() - start,
                      self.state.nbytes())
        self.next_index += 1
        self.next_frame += len(frames)
        return block

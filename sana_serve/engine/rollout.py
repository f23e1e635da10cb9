"""Block-autoregressive rollout: prompt -> stream of finished blocks of uint8 frames.

For each chunk of latent frames: draw seeded noise, denoise it with a few flow steps while
attending to the past through the StreamState, decode it with the VAE's causal cache, hand the
block to the caller, and only then run the model once more on the clean chunk at t=0 to fold
it into the state (so the caller gets each block one forward earlier).

Every chunk's noise comes from its own generator seeded by (seed, chunk, step), so a rollout
is byte-reproducible and can resume from any block boundary without replaying the RNG.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from sana_serve.engine.config import ModelConfig
from sana_serve.engine.model.transformer import SanaVideoTransformer, TextContext
from sana_serve.engine.model.vae import decode_streams
from sana_serve.engine.sampler import ChunkSampler, combine_guidance, make_sigmas
from sana_serve.engine.model.state import StateBatch, StreamState


class Cancelled(Exception):
    """The caller asked to stop; raised between denoising steps."""


@dataclass
class GenerationRequest:
    prompt: str
    seconds: float | None  # None: endless (a realtime session)
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
    """Holds the model parts; `stream(request)` runs one request, `step(rollouts)` many at once.

    batch_invariant (the default): a request's frames do not depend on what it is batched with.
    `step` still runs one forward per step for all compatible rollouts, but inside it every
    kernel whose rows could depend on the rest of the batch (GEMMs, convs, attention) runs once
    per request (`transformer.per_request`), and each finished chunk is decoded on its own: a
    request gets bit-identical latents and frames alone, in any batch, and after a resume on
    another worker. False: one kernel call over the whole batch and one batched VAE pass
    (rows may then round differently in the last bits, which grows into visibly different
    frames over a long video); `bench/batch_invariance.py` measures what the guarantee costs.
    """

    def __init__(self, transformer: SanaVideoTransformer, vae, text_encoder, config: ModelConfig,
                 device: str | torch.device = "cpu", batch_invariant: bool = True):
        self.transformer = transformer.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.config = config
        self.device = torch.device(device)
        self.batch_invariant = batch_invariant
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
        if req.seconds is not None:  # None: endless (realtime)
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
        if req.seconds is None:
            raise ValueError("stream() needs seconds; endless rollouts are driven with Rollout/Engine.step")
        rollout = Rollout(self, req)
        while not rollout.done:
            yield rollout.next_block(cancelled)

    @torch.no_grad()
    def step(self, rollouts: list["Rollout"]) -> list[Block | None]:
        """Advance every rollout by one model call; returns, per rollout, the Block it finished (or None).

        Rollouts whose calls have the same chunk shape share one batched forward, each row with its
        own timestep, prompt, state and frame position: the scheduler can add and drop requests
        between any two calls (continuous batching). A rollout folding its last clean chunk into
        its state (t=0) rides in the same forward as the others' denoising steps: requests that
        joined at different calls are out of phase for good, and a separate small forward for
        each fold would cost nearly as much as the batched one. With `batch_invariant` each
        request's rows are computed as if it were alone (see the class docstring).
        """
        calls = [r._model_call() for r in rollouts]
        groups: dict[tuple, list[int]] = {}
        for i, (x, _, _) in enumerate(calls):
            key = (tuple(x.shape[1:]), rollouts[i].text.bias is None)
            groups.setdefault(key, []).append(i)
        finished: dict[int, torch.Tensor | None] = {}
        for members in groups.values():
            for r in (rollouts[i] for i in members):
                if not r._started:
                    r._started = time.perf_counter()
            updates = [calls[i][2] for i in members]
            if len(members) == 1:  # alone: no copies, and bit-identical to an unbatched run
                r = rollouts[members[0]]
                x, t, update = calls[members[0]]
                outs = [self.transformer.forward_chunk(x, t, r.text, r.state, update_state=update)]
            else:
                group = [rollouts[i] for i in members]
                x = torch.cat([calls[i][0] for i in members])
                t = torch.cat([calls[i][1] for i in members])
                text = TextContext.cat([r.text for r in group])
                states = StateBatch([r.state for r in group], update=updates)
                rows = [r.rows for r in group] if self.batch_invariant else None
                out = self.transformer.forward_chunk(x, t, text, states, update_state=any(updates), request_rows=rows)
                outs = out.split([r.rows for r in group])
            for i, out, update in zip(members, outs, updates):
                finished[i] = rollouts[i]._take_output(out, update)
        # Decode the finished chunks: batch-invariant, each on its own (the VAE's convolutions
        # keep the cores busy at batch 1: a batched pass saved 3 %, README); otherwise batched
        # like the forward, one VAE pass per shape.
        decode_groups: dict[tuple, list[int]] = {}
        for i, x0 in finished.items():
            if x0 is not None:  # a fresh decoder (empty cache) cannot share a pass with a warm one
                key = (i,) if self.batch_invariant else (tuple(x0.shape), bool(rollouts[i].decoder.cache))
                decode_groups.setdefault(key, []).append(i)
        results: list[Block | None] = [None] * len(rollouts)
        for members in decode_groups.values():
            videos = decode_streams([rollouts[i].decoder for i in members], [finished[i] for i in members])
            for i, video in zip(members, videos):
                results[i] = rollouts[i]._finish_block(finished[i], video)
        return results

    def text_context(self, prompt: str, negative_prompt: str, guidance_scale: float) -> TextContext:
        """Cond rows first, then uncond rows when guidance is on."""
        prompts = [prompt] + ([negative_prompt] if guidance_scale != 1.0 else [])
        encoded = [self.text_encoder.encode_one(p) for p in prompts]
        states = torch.stack([s for s, _ in encoded]).to(self.device)
        mask = torch.stack([m for _, m in encoded]).to(self.device)
        return self.transformer.encode_text(states, mask)


class Rollout:
    """One request's generation, advanced one model call at a time; resumable between blocks.

    Holds which block is next, the stream state, the VAE decoder's causal cache and, while a
    chunk is being denoised, its sampler. `next_block()` runs one request alone; a scheduler
    instead calls `Engine.step(rollouts)`, which batches the model calls of many rollouts.
    `snapshot()`/`restore()` save and reload everything between blocks: because every chunk's
    noise is derived from (seed, chunk, step), a restored rollout continues bit-identically.
    A request with `seconds=None` is endless (realtime sessions); `set_prompt` steers it.
    """

    def __init__(self, engine: "Engine", request: GenerationRequest):
        e, s = engine, engine.config.sampling
        self.engine, self.request = e, dataclasses.replace(request)  # own copy: set_prompt changes it
        if request.seconds is None:
            self.chunk_sizes, self.trim = None, 0
        else:
            self.chunk_sizes, self.trim = chunk_plan(e.total_frames(request.seconds), e.vae.temporal_compression,
                                                     s.chunk_frames)
        self.guidance = s.guidance_scale if request.guidance_scale is None else request.guidance_scale
        self.sampler = request.sampler or s.sampler
        first, steps = s.block_steps(request.num_inference_steps)
        use_fixed = s.timesteps is not None and request.num_inference_steps is None
        self.sigmas = make_sigmas(steps, s.flow_shift, s.timesteps if use_fixed else None)
        self.first_sigmas = make_sigmas(first, s.flow_shift) if first != steps else self.sigmas
        self.rows = 2 if self.guidance != 1.0 else 1  # cond (+ uncond) rows in every model call
        self.text = e.text_context(request.prompt, request.negative_prompt, self.guidance)
        self._next_text: TextContext | None = None  # a new prompt, applied when the next block starts
        self.state: StreamState = e.transformer.new_state(self.rows, s.window_chunks)
        self.decoder = e.vae.stream_decoder()
        self.pending_clean: torch.Tensor | None = None  # last chunk, not yet folded into the state
        self.next_index = 0
        self.next_frame = 0
        self._chunk: ChunkSampler | None = None  # the chunk being denoised
        self._started = 0.0

    # -- plan ------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int | None:
        """Blocks in the whole video; None for an endless rollout."""
        return None if self.chunk_sizes is None else len(self.chunk_sizes)

    @property
    def done(self) -> bool:
        return self.num_blocks is not None and self.next_index >= self.num_blocks

    @property
    def between_blocks(self) -> bool:
        """No chunk is half-denoised: the moment to snapshot, change the prompt or drop the rollout."""
        return self._chunk is None

    def chunk_size(self, index: int) -> int:
        if self.chunk_sizes is None:
            return self.engine.config.sampling.chunk_frames
        return self.chunk_sizes[index]

    def set_prompt(self, prompt: str, negative_prompt: str = "") -> None:
        """Follow `prompt` from the next block on (the chunk in progress keeps the old one). The
        state carries the scene over; the last chunk is still folded in under the prompt it was made with."""
        self.engine.validate(GenerationRequest(prompt, seconds=None, seed=self.request.seed))
        self.request.prompt, self.request.negative_prompt = prompt, negative_prompt
        self._next_text = self.engine.text_context(prompt, negative_prompt, self.guidance)

    # -- one model call ----------------------------------------------------------------------
    def _model_call(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(latents rows, timestep rows, update_state) of this rollout's next model call."""
        if self.done:
            raise RuntimeError("all blocks have been generated")
        if self.pending_clean is not None:  # fold the previous chunk in (clean, t=0) first
            x = self.pending_clean.expand(self.rows, -1, -1, -1, -1)
            return x, torch.zeros(self.rows, device=x.device), True
        if self._chunk is None:
            self._begin_chunk()
        x, t = self._chunk.x, self._chunk.timestep()
        if self.rows == 2:
            x, t = torch.cat([x, x]), torch.cat([t, t])
        return x, t, False

    def _begin_chunk(self) -> None:
        e, seed, index = self.engine, self.request.seed, self.next_index
        if self._next_text is not None:
            self.text, self._next_text = self._next_text, None
        h, w = e.latent_hw
        shape = (1, e.latent_channels, self.chunk_size(index), h, w)
        noise = torch.randn(shape, generator=noise_generator(seed, index, 0)).to(e.device)

        def renoise(step):
            return torch.randn(shape, generator=noise_generator(seed, index, step + 1)).to(e.device)

        sigmas = self.first_sigmas if index == 0 else self.sigmas
        self._chunk = ChunkSampler(noise, sigmas, self.sampler, renoise)

    def _take_output(self, out: torch.Tensor, update_state: bool) -> torch.Tensor | None:
        """Consume this rollout's rows of a model call; the clean latents if the chunk is done."""
        if update_state:  # the state was updated inside the forward
            self.pending_clean = None
            return None
        self._chunk.advance(combine_guidance(out, self.guidance))
        if not self._chunk.done:
            return None
        x0, self._chunk = self._chunk.x, None
        return x0

    def _finish_block(self, x0: torch.Tensor, video: torch.Tensor) -> Block:
        """Hand over the decoded chunk as a Block; x0 waits to be folded into the state."""
        frames = to_uint8(video)
        if self.next_index == 0 and self.trim:
            frames = frames[self.trim:]
        self.pending_clean = x0
        block = Block(self.next_index, self.next_frame, frames, self.num_blocks or 0,
                      time.perf_counter() - self._started, self.state.nbytes())
        self.next_index += 1
        self.next_frame += len(frames)
        self._started = 0.0
        return block

    def next_block(self, cancelled: Callable[[], bool] | None = None) -> Block:
        """Run model calls until the next block is finished (this rollout alone)."""
        while True:
            if cancelled is not None and cancelled():
                raise Cancelled()
            block = self.engine.step([self])[0]
            if block is not None:
                return block

    # -- resume ------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Everything needed to continue after a restart (tensors on CPU; torch.save-able)."""
        if not self.between_blocks:
            raise RuntimeError("snapshot() between blocks only: a chunk is being denoised")
        cpu = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        names = {m: n for n, m in self.engine.vae.named_modules()}
        return {
            "version": 1,
            "next_index": self.next_index,
            "next_frame": self.next_frame,
            "prompt": self.request.prompt,
            "negative_prompt": self.request.negative_prompt,
            "state": {k: ([{n: cpu(t) for n, t in layer.items()} for layer in v] if k == "layers" else v)
                      for k, v in self.state.state_dict().items()},
            "decoder_cache": {names[m]: cpu(t) for m, t in self.decoder.cache.items()},
            "pending_clean": cpu(self.pending_clean),
        }

    @classmethod
    def restore(cls, engine: "Engine", request: GenerationRequest, snapshot: dict) -> "Rollout":
        """A rollout that continues from `snapshot` exactly as the original would have."""
        if snapshot.get("version") != 1:
            raise ValueError(f"unknown rollout snapshot version {snapshot.get('version')!r}")
        request = dataclasses.replace(request, prompt=snapshot["prompt"], negative_prompt=snapshot["negative_prompt"])
        self = cls(engine, request)
        dev = engine.device
        to = lambda t: None if t is None else t.to(dev)  # noqa: E731
        sd = dict(snapshot["state"])
        sd["layers"] = [{n: to(t) for n, t in layer.items()} for layer in sd["layers"]]
        self.state = StreamState.from_state_dict(sd)
        modules = dict(engine.vae.named_modules())
        self.decoder.cache.update({modules[n]: to(t) for n, t in snapshot["decoder_cache"].items()})
        self.pending_clean = to(snapshot["pending_clean"])
        self.next_index, self.next_frame = snapshot["next_index"], snapshot["next_frame"]
        return self

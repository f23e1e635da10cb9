"""Rollouts: prompt -> stream of finished blocks of uint8 frames, in one of two modes.

`block_causal` (LongSANA, the built-in model): for each chunk of latent frames, draw seeded
noise, denoise it with a few flow steps while attending to the past through the StreamState,
decode it with the VAE's causal cache, hand the block to the caller, and only then run the model
once more on the clean chunk at t=0 to fold it into the state (so the caller gets each block one
forward earlier). Every chunk's noise comes from its own generator seeded by (seed, chunk, step),
so a rollout is byte-reproducible and can resume from any block boundary without replaying the RNG.

`full_sequence` (bidirectional SANA-Video): all latent frames are denoised together, one model
call per step (the progress moves per step), from the initial latents diffusers' SanaVideoPipeline
draws for the same seed (`torch.Generator("cpu").manual_seed(seed)`), so the same request gives
the same video. Then the clean latents are decoded block by block with the causal VAE cache and
handed out as they come, so a viewer still sees the video stream in.

In both modes the blocks handed out follow one plan (`chunk_plan`): the first block takes the
remainder, every later block has `chunk_frames` latent frames. Denoising chunks may be larger
(LongSANA's first chunk takes the remainder into itself; full-sequence has one chunk): a chunk's
clean latents wait in the rollout until their blocks are decoded, one block per engine step.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from sana_serve.engine.config import ModelConfig, resolution_bins
from sana_serve.engine.model.transformer import SanaVideoTransformer, TextContext
from sana_serve.engine.model.vae import decode_streams
from sana_serve.engine.sampler import ChunkSampler, combine_guidance, make_sigmas, snapped_sigmas
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
    frames: int | None = None  # exact frame count, instead of seconds (the VAE's rule applies: Engine.frame_rule)
    width: int | None = None  # None: the config's size
    height: int | None = None

    @property
    def endless(self) -> bool:
        """Neither seconds nor frames: a realtime session that runs until stopped."""
        return self.seconds is None and self.frames is None


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


def latent_frames(total_frames: int, temporal_compression: int, first_frame_alone: bool = False) -> int:
    """Latent frames that decode to `total_frames` (at least). A Wan-style VAE (`first_frame_alone`)
    decodes its first latent frame to one frame and every later one to `temporal_compression`."""
    if total_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {total_frames}")
    if first_frame_alone:
        return (total_frames - 1 + temporal_compression - 1) // temporal_compression + 1
    return math.ceil(total_frames / temporal_compression)


def chunk_plan(total_frames: int, temporal_compression: int, chunk_frames: int,
               first_frame_alone: bool = False) -> tuple[list[int], int]:
    """Latent frames per handed-out block, and how many decoded frames to drop from the start of block 0.

    The first block takes the remainder, so every later block has the full, regular size (what a
    fragmented-MP4 stream with a fixed keyframe period needs).
    """
    latent = latent_frames(total_frames, temporal_compression, first_frame_alone)
    full, rest = divmod(latent, chunk_frames)
    sizes = ([rest] if rest else []) + [chunk_frames] * full
    decoded = (1 + (latent - 1) * temporal_compression) if first_frame_alone else latent * temporal_compression
    return sizes, decoded - total_frames


def merged_remainder_plan(latent: int, chunk_frames: int) -> list[int]:
    """LongSANA's denoising chunks (NVlabs/Sana longlive_flow_euler_sampler): the remainder joins
    the first chunk, 21 latent frames with chunks of 10 -> [11, 10]; fewer than one chunk -> one chunk."""
    full, rest = divmod(latent, chunk_frames)
    if full == 0:
        return [latent]
    return [chunk_frames + rest] + [chunk_frames] * (full - 1)


def noise_generator(seed: int, *keys: int) -> torch.Generator:
    """A generator for one (chunk, step) of one request: independent streams, resumable anywhere."""
    entropy = np.random.SeedSequence([seed % (1 << 63), *keys]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(entropy[0] >> np.uint64(1)))


def to_host(t: torch.Tensor) -> torch.Tensor:
    """THE place where the engine copies a device tensor to the host. Two things cross, once per
    block: the finished frames (uint8) and the checkpoint (`Rollout.snapshot`). Everything else
    stays on the engine's device; tests/engine/test_device_guard.py runs the engine on a stand-in
    device and fails on any other copy to the host (or any op mixing devices)."""
    return t.detach().to("cpu", copy=True)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] on the engine's device -> (T, H, W, 3) uint8 on the host. The
    conversion runs on the device, so the one copy to the host is the uint8 frames, 1/4 of fp32."""
    frames = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)
    return to_host(frames.contiguous()).numpy()


FULL_SEQUENCE_ENDLESS = ("this model denoises whole videos at once (mode full_sequence): an endless realtime session "
                         "needs a block-causal model (mode block_causal, e.g. LongSANA); ask for seconds or frames instead")


class RequestRules:
    """What a request may ask of a model (frame counts, sizes, limits) and how it is cut into
    blocks. The engine derives them from its model (Engine is a RequestRules); an API node of a
    cluster, which loads no model, gets the same rules from a worker (`to_dict` / `from_dict`)."""

    def __init__(self, config: ModelConfig, temporal_compression: int, first_frame_alone: bool,
                 size_multiple: int, resolution_bins: list[tuple[int, int]] | None):
        self.config = config
        self.mode = config.sampling.mode
        self.temporal_compression = int(temporal_compression)
        # A Wan-style causal VAE decodes a video's first latent frame to one frame, each later one to 4
        # (its stream decoder handles that first frame on its own: any block sizes may follow).
        self.first_frame_alone = bool(first_frame_alone)
        # sides of a free size: multiples of 32, as SanaVideoPipeline.check_inputs asks (and of VAE x patch)
        self.size_multiple = int(size_multiple)
        self.resolution_bins = [tuple(b) for b in resolution_bins] if resolution_bins else None

    def to_dict(self) -> dict:
        """The model-derived rules as JSON-able values (the model config travels as its name)."""
        return {"temporal_compression": self.temporal_compression, "first_frame_alone": self.first_frame_alone,
                "size_multiple": self.size_multiple, "resolution_bins": self.resolution_bins}

    @classmethod
    def from_dict(cls, config: ModelConfig, rules: dict) -> "RequestRules":
        return cls(config, rules["temporal_compression"], rules["first_frame_alone"], rules["size_multiple"],
                   rules["resolution_bins"])

    def frame_rule(self) -> str:
        tc = self.temporal_compression
        if self.first_frame_alone:
            return (f"1 + {tc}k frames (1, {1 + tc}, {1 + 2 * tc}, ..., 81, ...): this model's causal VAE decodes its "
                    f"first latent frame to one frame and every later one to {tc}")
        return "any positive number of frames"

    def valid_frames(self, frames: int) -> bool:
        return frames >= 1 and (not self.first_frame_alone or (frames - 1) % self.temporal_compression == 0)

    def total_frames(self, seconds: float) -> int:
        """Frames for a video of `seconds`: round(seconds·fps), then (Wan VAE) the nearest 1 + 4k, ties up."""
        frames = int(round(seconds * self.config.video.fps))
        if self.first_frame_alone:
            tc = self.temporal_compression
            frames = 1 + tc * max(0, math.floor((frames - 1) / tc + 0.5))
        return frames

    def request_frames(self, req: GenerationRequest) -> int:
        return req.frames if req.frames is not None else self.total_frames(req.seconds)

    def allowed_sizes(self) -> list[tuple[int, int]] | None:
        """(width, height) sizes a request may ask for; None: any multiple of `size_multiple`.

        A checkpoint with resolution bins (SANA-Video 480p: diffusers' ASPECT_RATIO_480_BIN) serves
        those and the config's size; one without bins serves the config's size in block-causal mode
        (what it streams at) and, like diffusers' pipeline without binning, any multiple of 32 in
        full-sequence mode, up to the config's pixel count."""
        default = (self.config.video.width, self.config.video.height)
        if self.resolution_bins:
            return [default] + [b for b in self.resolution_bins if b != default]
        return None if self.mode == "full_sequence" else [default]

    def request_size(self, req: GenerationRequest) -> tuple[int, int]:
        v = self.config.video
        return (req.width or v.width, req.height or v.height)

    def check_size(self, width: int, height: int) -> None:
        allowed = self.allowed_sizes()
        if allowed is None:
            m, v = self.size_multiple, self.config.video
            if width < m or height < m or width % m or height % m:
                raise ValueError(f"size must be WIDTHxHEIGHT with both multiples of {m} for this model, "
                                 f"got {width}x{height}")
            if width * height > v.width * v.height:  # the config's size bounds the memory a request may take
                raise ValueError(f"size must have at most {v.width}x{v.height} = {v.width * v.height} pixels for "
                                 f"this model, got {width}x{height}")
        elif (width, height) not in allowed:
            names = ", ".join(f"{w}x{h}" for w, h in allowed)
            raise ValueError(f"size must be one of {names} for this model, got {width}x{height}")

    def validate(self, req: GenerationRequest) -> None:
        lim = self.config.limits
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if len(req.prompt) > lim.max_prompt_chars:
            raise ValueError(f"prompt is {len(req.prompt)} characters; the limit is {lim.max_prompt_chars}")
        if req.endless and self.mode == "full_sequence":
            raise ValueError(FULL_SEQUENCE_ENDLESS)
        max_frames = int(lim.max_seconds * self.config.video.fps)
        if req.frames is not None:
            if isinstance(req.frames, bool) or not isinstance(req.frames, int) or req.frames < 1:
                raise ValueError(f"frames must be a positive integer, got {req.frames!r}")
            if not self.valid_frames(req.frames):
                raise ValueError(f"frames must be {self.frame_rule()}; got {req.frames}")
            if req.frames > max_frames:
                raise ValueError(f"frames must be at most {max_frames} for this model, got {req.frames}")
        elif req.seconds is not None:  # None: endless (realtime)
            if not (isinstance(req.seconds, (int, float)) and math.isfinite(req.seconds)) or req.seconds <= 0:
                raise ValueError(f"seconds must be a positive number, got {req.seconds!r}")
            if req.seconds > lim.max_seconds:
                raise ValueError(f"seconds must be at most {lim.max_seconds:g} for this model, got {req.seconds:g}")
            if self.total_frames(req.seconds) < 1:
                raise ValueError(f"seconds={req.seconds:g} is shorter than one frame at {self.config.video.fps} fps")
        if req.width is not None or req.height is not None:
            self.check_size(*self.request_size(req))
        if req.num_inference_steps is not None and not (1 <= req.num_inference_steps <= lim.max_steps):
            raise ValueError(f"num_inference_steps must be between 1 and {lim.max_steps}")
        if req.guidance_scale is not None and not (lim.min_guidance <= req.guidance_scale <= lim.max_guidance):
            raise ValueError(f"guidance_scale must be between {lim.min_guidance:g} and {lim.max_guidance:g}")
        if not isinstance(req.seed, int) or req.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {req.seed!r}")
        self.check_memory(req)

    def check_memory(self, req: GenerationRequest) -> None:
        """Refuse a request that cannot fit before it starts (Engine: the non-causal VAE's decode)."""

    def plan_blocks(self, req: GenerationRequest) -> list[int]:
        """Latent frames of each block the request will be handed out in."""
        sizes, _ = chunk_plan(self.request_frames(req), self.temporal_compression,
                              self.config.sampling.chunk_frames, self.first_frame_alone)
        return sizes



class Engine(RequestRules):
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
                 device: str | torch.device = "cpu", scheduler=None, batch_invariant: bool = True,
                 memory_budget: int | None = None):
        self.transformer = transformer.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.device = torch.device(device)
        self.batch_invariant = batch_invariant
        super().__init__(config, vae.temporal_compression,
                         first_frame_alone=hasattr(vae, "num_frames") and vae.num_frames(1) == 1,
                         size_multiple=max(32, vae.spatial_compression * transformer.patch_size[1]),
                         resolution_bins=resolution_bins(transformer.config.get("sample_size")))
        # full_sequence: the checkpoint's scheduler (engine.scheduler), stepping exactly as diffusers' does;
        # None: the config's sampler
        self.scheduler = scheduler
        self.latent_channels = vae.latent_channels
        v = config.video
        self.latent_hw = (v.height // vae.spatial_compression, v.width // vae.spatial_compression)
        if memory_budget is None and self.device.type == "cuda":
            # what is free once the weights are loaded, less 10 % for the caching allocator's rounding and
            # fragmentation, cuBLAS workspaces and the like
            memory_budget = int(torch.cuda.mem_get_info(self.device)[0] * 0.9)
        self.memory_budget = memory_budget  # bytes the requests may take together; None: no limit (CPU)
        self._meta_models = None  # the architecture on `meta`, for request_bytes
        self._request_bytes: dict[tuple, int] = {}

    # -- memory ------------------------------------------------------------------------------
    def request_bytes(self, req: GenerationRequest) -> int:
        """Device bytes one request takes at its peak, measured from shapes on the meta device
        (engine.memory): its rows' activations in a forward at its largest chunk, its stream state,
        the VAE decoder's cache plus one block's decode, its latents and noise, its text context.
        The weights are not in it (they are shared)."""
        from sana_serve.engine import memory

        s = self.config.sampling
        guidance = s.guidance_scale if req.guidance_scale is None else req.guidance_scale
        rows = 2 if guidance != 1.0 else 1
        width, height = self.request_size(req)
        h, w = height // self.vae.spatial_compression, width // self.vae.spatial_compression
        blocks = [s.chunk_frames] if req.endless else self.plan_blocks(req)
        latent = sum(blocks)
        if self.mode == "full_sequence":
            chunk = latent
        elif s.merge_remainder:
            chunk = max(merged_remainder_plan(latent, s.chunk_frames))
        else:
            chunk = max(blocks)
        key = (rows, chunk, max(blocks), latent if self.mode == "full_sequence" else 0, h, w)
        if key not in self._request_bytes:
            if self._meta_models is None:
                self._meta_models = (memory.meta_transformer(self.transformer), memory.meta_vae(self.vae))
            model, vae = self._meta_models
            c = self.latent_channels
            forward, state = memory.forward_peak_bytes(model, rows, (c, chunk, h, w), self.config.text_max_length,
                                                       with_state=self.mode == "block_causal",
                                                       window_chunks=s.window_chunks)
            _, decode = memory.decoder_bytes(vae, c, max(blocks), h, w)
            # the video's clean latents waiting to be decoded (full-sequence: all of them), a chunk's noise
            # (every step's, for the renoise sampler), the sampler's x and x0
            latents = 4 * c * h * w * (key[3] + chunk * (len(s.timesteps or [0]) + 3))
            text = rows * self.config.text_max_length * model.inner_dim * 2 * len(model.transformer_blocks) * \
                model.proj_out.weight.element_size()
            self._request_bytes[key] = forward + state + decode + latents + text
        return self._request_bytes[key]

    def fits(self, requests: list[GenerationRequest]) -> bool:
        """Whether these requests can run together within the memory budget."""
        return self.memory_budget is None or sum(self.request_bytes(r) for r in requests) <= self.memory_budget

    def check_memory(self, req: GenerationRequest) -> None:
        """Refuse, before it starts, a request that can never fit: first the non-causal VAE's decode (LTX-2:
        the 720p peak; its error names the decode settings that would make it fit), then the whole request."""
        if hasattr(self.vae, "check_decode_memory") and not req.endless:
            self.vae.check_decode_memory(self.request_frames(req), *self.request_size(req),
                                         self.config.sampling.chunk_frames)
        if self.memory_budget is not None and (need := self.request_bytes(req)) > self.memory_budget:
            raise ValueError(f"this request needs about {need / 2**30:.1f} GiB of device memory and "
                             f"this server has {self.memory_budget / 2**30:.1f} GiB for requests: ask for fewer seconds, "
                             f"a smaller size or guidance_scale 1")

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def stream(self, req: GenerationRequest, cancelled: Callable[[], bool] | None = None) -> Iterator[Block]:
        """Yield finished blocks as soon as each is decoded: exactly `request_frames(req)` frames in all."""
        self.validate(req)
        if req.endless:
            raise ValueError("stream() needs seconds or frames; endless rollouts are driven with Rollout/Engine.step")
        rollout = Rollout(self, req)
        while not rollout.done:
            yield rollout.next_block(cancelled)

    @torch.no_grad()
    def step(self, rollouts: list["Rollout"]) -> list[Block | None]:
        """Advance every rollout by one model call (or one block decode); returns, per rollout, the
        Block it finished (or None).

        Rollouts whose calls have the same chunk shape share one batched forward, each row with its
        own timestep, prompt, state and frame position: the scheduler can add and drop requests
        between any two calls (continuous batching); full-sequence jobs of the same shape batch the
        same way (no state). A rollout folding its last clean chunk into its state (t=0) rides in the
        same forward as the others' denoising steps: requests that joined at different calls are out
        of phase for good, and a separate small forward for each fold would cost nearly as much as
        the batched one. A rollout whose next block's latents are already clean (a full-sequence
        video being decoded, LongSANA's merged first chunk) makes no model call: it decodes that block.
        With `batch_invariant` each request's rows are computed as if it were alone (class docstring).
        """
        now = time.perf_counter()
        for r in rollouts:
            if not r._started:
                r._started = now
        calls = [None if r.failed else r._model_call() for r in rollouts]
        groups: dict[tuple, list[int]] = {}
        for i, call in enumerate(calls):
            if call is not None:
                key = (tuple(call[0].shape[1:]), rollouts[i].text.bias is None, rollouts[i].state is None)
                groups.setdefault(key, []).append(i)
        for members in groups.values():
            try:
                outs = self._forward(rollouts, members, calls)
            except torch.OutOfMemoryError as e:
                outs, error = None, e
            if outs is None:
                if len(members) == 1:  # it does not fit even alone: only this request fails
                    rollouts[members[0]].failed = error.with_traceback(None)  # no traceback: it would pin the step's tensors
                    continue
                # Out of memory in a batched forward: nothing has changed yet (the states are updated only
                # at the end of a forward), so run the requests one at a time (bit-identical, batch
                # invariance) and fail only one that does not fit even alone.
                del error
                for i in members:
                    try:
                        out = self._forward(rollouts, [i], calls)[0]
                    except torch.OutOfMemoryError as e:
                        rollouts[i].failed = e.with_traceback(None)
                        continue
                    rollouts[i]._take_output(out, calls[i][2])
                continue
            for i, out in zip(members, outs):
                rollouts[i]._take_output(out, calls[i][2])
        # Decode the blocks whose latents are clean. Batch-invariant: each on its own (the VAE's
        # convolutions keep the cores busy at batch 1: a batched pass saved 3 %, README); otherwise
        # batched like the forward, one VAE pass per shape.
        pieces = {i: p for i, r in enumerate(rollouts) if not r.failed and (p := r._take_piece()) is not None}
        decode_groups: dict[tuple, list[int]] = {}
        for i, x0 in pieces.items():  # a fresh decoder (empty cache) cannot share a pass with a warm one
            key = (i,) if self.batch_invariant else (tuple(x0.shape), rollouts[i].next_index == 0)
            decode_groups.setdefault(key, []).append(i)
        results: list[Block | None] = [None] * len(rollouts)
        for members in decode_groups.values():
            # A batched decode (not batch-invariant) changes the decoders' caches only at its end: on running
            # out of memory it is retried one video at a time. A decode alone changes its cache as it goes:
            # out of memory there fails its request.
            for part in [members] if len(members) == 1 else [members, *([i] for i in members)]:
                try:
                    videos = decode_streams([rollouts[i].decoder for i in part], [pieces[i] for i in part])
                except torch.OutOfMemoryError as e:
                    if len(part) == 1:
                        rollouts[part[0]].failed = e.with_traceback(None)
                    continue
                for i, video in zip(part, videos):
                    results[i] = rollouts[i]._finish_block(video, pieces[i])
                if part is members:
                    break
        return results

    def _forward(self, rollouts: list["Rollout"], members: list[int], calls: list) -> list[torch.Tensor]:
        """One forward for the rollouts `members` (same chunk shape); their output rows, per rollout."""
        updates = [calls[i][2] for i in members]
        if len(members) == 1:  # alone: no copies, and bit-identical to an unbatched run
            r = rollouts[members[0]]
            x, t, update = calls[members[0]]
            return [self.transformer.forward_chunk(x, t, r.text, r.state, update_state=update)]
        group = [rollouts[i] for i in members]
        x = torch.cat([calls[i][0] for i in members])
        t = torch.cat([calls[i][1] for i in members])
        text = TextContext.cat([r.text for r in group])
        states = None if group[0].state is None else StateBatch([r.state for r in group], update=updates)
        rows = [r.rows for r in group] if self.batch_invariant else None
        out = self.transformer.forward_chunk(x, t, text, states, update_state=any(updates), request_rows=rows)
        return list(out.split([r.rows for r in group]))

    def text_context(self, prompt: str, negative_prompt: str, guidance_scale: float) -> TextContext:
        """Cond rows first, then uncond rows when guidance is on."""
        encoded = [self.text_encoder.encode_one(prompt)]
        if guidance_scale != 1.0:  # Gemma: the negative prompt without the instruction, as diffusers encodes it
            encoded.append(self.text_encoder.encode_one(negative_prompt, negative=True))
        states = torch.stack([s for s, _ in encoded]).to(self.device)
        mask = torch.stack([m for _, m in encoded]).to(self.device)
        return self.transformer.encode_text(states, mask)


class Rollout:
    """One request's generation, advanced one model call at a time; resumable between blocks.

    Holds which block is next, the stream state (block-causal mode), the VAE decoder's causal cache,
    the clean latents not yet decoded and, while a chunk is being denoised, its sampler.
    `next_block()` runs one request alone; a scheduler instead calls `Engine.step(rollouts)`, which
    batches the model calls of many rollouts. `snapshot()`/`restore()` save and reload everything
    between blocks: because every chunk's noise is derived from (seed, chunk, step), a restored
    rollout continues bit-identically (a full-sequence rollout's initial noise from the seed alone).
    An endless request (no seconds, no frames; block-causal only) is a realtime session; `set_prompt` steers it.
    """

    def __init__(self, engine: "Engine", request: GenerationRequest):
        e, s = engine, engine.config.sampling
        self.engine, self.request = e, dataclasses.replace(request)  # own copy: set_prompt changes it
        self.full_sequence = e.mode == "full_sequence"
        if self.full_sequence and request.endless:
            raise ValueError(FULL_SEQUENCE_ENDLESS)
        width, height = e.request_size(request)
        self.size = (width, height)
        self.latent_hw = (height // e.vae.spatial_compression, width // e.vae.spatial_compression)
        if request.endless:
            self.block_sizes, self.chunk_sizes, self.trim = None, None, 0
        else:
            self.block_sizes, self.trim = chunk_plan(e.request_frames(request), e.vae.temporal_compression,
                                                     s.chunk_frames, e.first_frame_alone)
            latent = sum(self.block_sizes)
            if self.full_sequence:
                self.chunk_sizes = [latent]
            elif s.merge_remainder:
                self.chunk_sizes = merged_remainder_plan(latent, s.chunk_frames)
            else:
                self.chunk_sizes = list(self.block_sizes)
        self.guidance = s.guidance_scale if request.guidance_scale is None else request.guidance_scale
        self.sampler = request.sampler or s.sampler
        first, steps = s.block_steps(request.num_inference_steps)
        if self.full_sequence:
            first = steps  # one chunk: the config's first-chunk bonus is a block-causal matter
        use_fixed = s.timesteps is not None and request.num_inference_steps is None
        self.steps = steps
        self.sigmas = make_sigmas(steps, s.flow_shift, s.timesteps if use_fixed else None)
        self.model_timesteps = None  # LongSANA: the model sees the listed t, the sampler the snapped sigma
        if use_fixed and s.snap_timesteps:
            self.sigmas, self.model_timesteps = snapped_sigmas(s.timesteps, s.flow_shift)
        self.first_sigmas = make_sigmas(first, s.flow_shift) if first != steps else self.sigmas
        self.rows = 2 if self.guidance != 1.0 else 1  # cond (+ uncond) rows in every model call
        self.text = e.text_context(request.prompt, request.negative_prompt, self.guidance)
        self._next_text: TextContext | None = None  # a new prompt, applied when the next block starts
        self.state: StreamState | None = None if self.full_sequence else e.transformer.new_state(self.rows,
                                                                                                  s.window_chunks)
        self.decoder = e.vae.stream_decoder()
        # The clean latents of the blocks decoded so far, on the host: a checkpoint carries them instead
        # of the decoder's cache (GBs at 480p), and restore() rebuilds the cache by decoding them again.
        # None once they outgrow the cache (a very long video), and for an endless session (they would
        # grow without end): checkpoints then carry the cache itself. So does a non-causal decoder (LTX-2,
        # `see`): its cache is already just the clip's latents and how far it has handed them out.
        replays = not request.endless and not hasattr(self.decoder, "see")
        self.decoded_latents: list[torch.Tensor] | None = [] if replays else None
        self.pending_clean: torch.Tensor | None = None  # last chunk, not yet folded into the state
        self.ready: torch.Tensor | None = None  # clean latent frames not yet decoded (1, C, n, h, w)
        self.next_index = 0  # next block to hand out
        self.next_frame = 0
        self.next_chunk = 0  # next chunk to denoise
        self._chunk = None  # the chunk being denoised: a ChunkSampler (or the checkpoint's scheduler)
        self.failed: torch.OutOfMemoryError | None = None  # set by Engine.step: this request did not fit, even alone
        self._started = 0.0

    # -- plan ------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int | None:
        """Blocks in the whole video; None for an endless rollout."""
        return None if self.block_sizes is None else len(self.block_sizes)

    @property
    def done(self) -> bool:
        return self.num_blocks is not None and self.next_index >= self.num_blocks

    @property
    def between_blocks(self) -> bool:
        """No chunk is half-denoised: the moment to snapshot, change the prompt or drop the rollout."""
        return self._chunk is None

    @property
    def progress(self) -> float | None:
        """Share of the work done, 0..1 (None when endless). Full-sequence: denoising steps and decoded
        blocks count one each, so the progress moves on every step of the long denoising phase."""
        if self.num_blocks is None:
            return None
        if not self.full_sequence:
            return self.next_index / self.num_blocks
        steps_done = self.steps if self.next_chunk else (self._chunk.step if self._chunk is not None else 0)
        return (steps_done + self.next_index) / (self.steps + self.num_blocks)

    def chunk_size(self, index: int) -> int:
        if self.chunk_sizes is None:
            return self.engine.config.sampling.chunk_frames
        return self.chunk_sizes[index]

    def block_size(self, index: int) -> int:
        if self.block_sizes is None:
            return self.engine.config.sampling.chunk_frames
        return self.block_sizes[index]

    def set_prompt(self, prompt: str, negative_prompt: str = "") -> None:
        """Follow `prompt` from the next block on (the chunk in progress keeps the old one). The
        state carries the scene over; the last chunk is still folded in under the prompt it was made with."""
        self.engine.validate(GenerationRequest(prompt, seconds=None, seed=self.request.seed))
        self.request.prompt, self.request.negative_prompt = prompt, negative_prompt
        self._next_text = self.engine.text_context(prompt, negative_prompt, self.guidance)

    # -- one model call ----------------------------------------------------------------------
    def _piece_ready(self) -> bool:
        return self.ready is not None and not self.done and self.ready.shape[2] >= self.block_size(self.next_index)

    def _model_call(self) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
        """(latents rows, timestep rows, update_state) of this rollout's next model call; None when
        this step only decodes (the next block's latents are clean already)."""
        if self.done:
            raise RuntimeError("all blocks have been generated")
        if self._piece_ready():
            return None
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
        e, seed, index = self.engine, self.request.seed, self.next_chunk
        if self._next_text is not None:
            self.text, self._next_text = self._next_text, None
        h, w = self.latent_hw
        shape = (1, e.latent_channels, self.chunk_size(index), h, w)
        if self.full_sequence:
            # exactly the latents SanaVideoPipeline(..., generator=torch.Generator("cpu").manual_seed(seed)) draws
            noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
            noise = noise.to(e.device)
            if e.scheduler is not None:
                self._chunk = e.scheduler.start(noise, self.steps)
                return
            self._chunk = ChunkSampler(noise, self.sigmas, self.sampler)
            return
        sigmas = self.first_sigmas if index == 0 else self.sigmas
        # All of the chunk's noise at once: the start (step key 0) and, for the renoise sampler, the fresh
        # noise of every step but the last (keys 1..steps-1), drawn on the host from the per-(chunk, step)
        # generators and uploaded in one copy, so the denoising steps themselves never touch the host.
        # Host generators keep a seed's noise the same on every device (and resumable anywhere).
        draws = len(sigmas) - 1 if self.sampler == "renoise" else 1
        noise = torch.stack([torch.randn(shape, generator=noise_generator(seed, index, k))
                             for k in range(draws)]).to(e.device)

        def renoise(step):
            return noise[step + 1]

        self._chunk = ChunkSampler(noise[0], sigmas, self.sampler, renoise,
                                   model_timesteps=None if index == 0 and sigmas is not self.sigmas
                                   else self.model_timesteps)

    def _take_output(self, out: torch.Tensor, update_state: bool) -> None:
        """Consume this rollout's rows of a model call; a finished chunk's clean latents join `ready`."""
        if update_state:  # the state was updated inside the forward
            self.pending_clean = None
            return
        self._chunk.advance(combine_guidance(out, self.guidance))
        if not self._chunk.done:
            return
        x0, self._chunk = self._chunk.x, None
        self.next_chunk += 1
        if not self.full_sequence:
            self.pending_clean = x0  # folded into the state once its blocks are handed out
        self.ready = x0 if self.ready is None else torch.cat([self.ready, x0], dim=2)
        if self.full_sequence and hasattr(self.decoder, "see"):  # a non-causal VAE (LTX-2) sees the whole clip
            self.decoder.see(self.ready)

    def _take_piece(self) -> torch.Tensor | None:
        """The clean latents of the next block, if they are all there (removed from `ready`)."""
        if not self._piece_ready():
            return None
        n = self.block_size(self.next_index)
        piece = self.ready[:, :, :n]
        self.ready = self.ready[:, :, n:] if self.ready.shape[2] > n else None
        return piece

    def _finish_block(self, video: torch.Tensor, latents: torch.Tensor) -> Block:
        """Hand over the decoded `latents` (now `video`) as a Block."""
        frames = to_uint8(video)
        if self.decoded_latents is not None:
            self.decoded_latents.append(to_host(latents))
            if sum(t.nbytes for t in self.decoded_latents) > self.decoder.nbytes:
                self.decoded_latents = None
        if self.next_index == 0 and self.trim:
            frames = frames[self.trim:]
        block = Block(self.next_index, self.next_frame, frames, self.num_blocks or 0,
                      time.perf_counter() - self._started, 0 if self.state is None else self.state.nbytes())
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
            if self.failed is not None:
                raise self.failed
            if block is not None:
                return block

    # -- resume ------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Everything needed to continue after a restart: a dict of host tensors and plain values
        (torch.save-able, torch.load(weights_only=True)-able).

        Its size is about the stream state plus the clean latents: not the VAE decoder's causal
        cache (~3.5 GiB for the Wan VAE at 480p, fp32) but the latents of the blocks decoded so far,
        from which restore() rebuilds that cache exactly. Only a stream whose latents outgrew the cache
        carries the cache instead (`decoded_latents` is None then)."""
        if not self.between_blocks:
            raise RuntimeError("snapshot() between blocks only: a chunk is being denoised")
        host = lambda t: None if t is None else to_host(t)  # noqa: E731
        state = None if self.state is None else {
            "window_chunks": self.state.window_chunks, "next_frame": self.state.next_frame,
            "chunks_seen": self.state.chunks_seen,
            "layers": [{n: host(t) for n, t in vars(layer).items()} for layer in self.state.layers]}
        replay = self.decoded_latents is not None
        decoder_cache = None
        if not replay:
            names = {m: n for n, m in self.engine.vae.named_modules()}
            decoder_cache = {names[m]: host(t) for m, t in self.decoder.cache.items()}
        return {
            "version": 3,
            "next_index": self.next_index,
            "next_frame": self.next_frame,
            "next_chunk": self.next_chunk,
            "prompt": self.request.prompt,
            "negative_prompt": self.request.negative_prompt,
            "state": state,
            # the decoded blocks' latents (restore decodes them again) or, for a long stream, the decoder cache
            "decoded_latents": torch.cat(self.decoded_latents, dim=2) if replay and self.decoded_latents else None,
            "decoder_cache": decoder_cache,
            "pending_clean": host(self.pending_clean),
            "ready": host(self.ready),
        }

    @classmethod
    def restore(cls, engine: "Engine", request: GenerationRequest, snapshot: dict) -> "Rollout":
        """A rollout that continues from `snapshot` exactly as the original would have."""
        version = snapshot.get("version")
        if version not in (1, 2, 3):
            raise ValueError(f"unknown rollout snapshot version {version!r}")
        request = dataclasses.replace(request, prompt=snapshot["prompt"], negative_prompt=snapshot["negative_prompt"])
        self = cls(engine, request)
        dev = engine.device
        to = lambda t: None if t is None else t.to(dev)  # noqa: E731
        if snapshot["state"] is not None:
            sd = dict(snapshot["state"])
            sd["layers"] = [{n: to(t) for n, t in layer.items()} for layer in sd["layers"]]
            self.state = StreamState.from_state_dict(sd)
        self.next_index, self.next_frame = snapshot["next_index"], snapshot["next_frame"]
        if snapshot.get("decoder_cache") is not None:  # versions 1, 2; version 3 for a long stream
            modules = dict(engine.vae.named_modules())
            self.decoder.cache.update({modules[n]: to(t) for n, t in snapshot["decoder_cache"].items()})
            self.decoded_latents = None
        else:
            self._replay_decoder(snapshot["decoded_latents"])
        self.pending_clean = to(snapshot["pending_clean"])
        # version 1 (before blocks and chunks could differ): one chunk per block, nothing waiting
        self.next_chunk = snapshot.get("next_chunk", self.next_index)
        self.ready = to(snapshot.get("ready"))
        return self

    def _replay_decoder(self, latents: torch.Tensor | None) -> None:
        """Rebuild the decoder's causal cache by decoding the handed-out blocks' latents again, block by
        block with the same sizes, discarding the frames: the same calls on the same inputs as the
        original run (batch-invariant: each block decoded alone), so the cache is bit-identical."""
        sizes = [self.block_size(i) for i in range(self.next_index)]
        if sum(sizes) != (0 if latents is None else latents.shape[2]):
            raise ValueError(f"the checkpoint holds {0 if latents is None else latents.shape[2]} decoded latent "
                             f"frames; blocks 0..{self.next_index - 1} need {sum(sizes)}")
        if latents is None:
            return
        for piece in latents.to(self.engine.device).split(sizes, dim=2):
            self.decoder.decode(piece)  # frames discarded: only the cache it leaves behind matters
        self.decoded_latents = [latents]  # the next checkpoint carries them again

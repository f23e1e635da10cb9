"""Memory per request, measured from tensor storages on the `meta` device (no allocation: the 2B
models cost nothing here). Prints the README's "Memory per request" table.

For each model the request runs for real through the engine's code (Rollout, Engine.step, the
VAE's stream decoder, snapshot) with every tensor on `meta`, then the sizes are read from the
storages the rollout holds (a view counts the storage it keeps alive):
- state: the stream state (block-causal), and what it held before the conv tail owned its storage
  (each layer's tail was a view of that layer's whole FFN output for the chunk)
- decoder cache: the VAE stream decoder's causal cache after a block
- checkpoint: a block's snapshot now (state + latents), and what it was (state + decoder cache + latents)
- request: Engine.request_bytes (what admission counts): activations of a forward at the largest
  chunk, state, decoder cache + one block's decode, latents, text context

Usage: python bench/memory.py [config ...]   (default: shapes-tiny longsana-2b-480p sana-video-2b-480p)
"""
from __future__ import annotations

import sys

import torch

from sana_serve.engine import rollout as rollout_module
from sana_serve.engine.config import load_config
from sana_serve.engine.load import build_random_models
from sana_serve.engine.memory import META, storage_bytes
from sana_serve.engine.rollout import Engine, GenerationRequest, Rollout

REQUESTS = {  # what each model is typically asked for
    "shapes-tiny": GenerationRequest("a red circle moving right on a black background", seconds=10),
    "longsana-2b-480p": GenerationRequest("a cat", seconds=None, frames=161),
    "sana-video-2b-480p": GenerationRequest("a cat", seconds=None, frames=81, num_inference_steps=2),
}


class ShapeOnlyText:
    """Text states of the right shape (values do not change any size)."""

    def __init__(self, width: int, tokens: int):
        self.hidden_size, self.tokens = width, tokens

    def encode_one(self, prompt: str, negative: bool = False):
        return torch.zeros(self.tokens, self.hidden_size), torch.ones(self.tokens)


def meta_engine(name: str, dtype: torch.dtype = torch.float32) -> Engine:
    """The model on meta, the transformer in `dtype` (load_engine's precision; the VAE stays fp32 as it loads)."""
    cfg = load_config(name)
    with META:
        transformer, vae = build_random_models(cfg)
    transformer = transformer.to(dtype)
    text = ShapeOnlyText(transformer.config["caption_channels"], cfg.text_max_length)
    return Engine(transformer, vae, text, cfg, META)


def to_host_on_meta(t: torch.Tensor) -> torch.Tensor:
    """rollout.to_host for meta tensors: there is no data to copy; an uninitialised host tensor of the
    same shape and dtype stands for the copy (the pages are never touched, so never allocated)."""
    return torch.empty(t.shape, dtype=t.dtype, device="cpu")


def measure(name: str, dtype: torch.dtype) -> dict:
    engine = meta_engine(name, dtype)
    req = REQUESTS[name]
    rollout = Rollout(engine, req)
    blocks = 0  # at least two blocks, and (block-causal) one chunk folded into the state
    while blocks < 2 or (rollout.state is not None and not rollout.state.chunks_seen):
        rollout.next_block()
        blocks += 1
    snapshot = rollout.snapshot()
    tensors = []

    def walk(v):
        if isinstance(v, torch.Tensor):
            tensors.append(v)
        elif isinstance(v, dict):
            [walk(x) for x in v.values()]
        elif isinstance(v, (list, tuple)):
            [walk(x) for x in v]

    walk(snapshot)
    state = 0 if rollout.state is None else rollout.state.nbytes()
    waiting = storage_bytes([rollout.pending_clean, rollout.ready])
    state_before = state
    if rollout.state is not None:  # each layer's tail pinned its FFN output: rows x chunk frames x tokens x width
        tail = rollout.state.layers[0].conv_tail
        chunk = max(rollout.chunk_sizes)
        state_before += len(rollout.state.layers) * (chunk - 1) * tail.numel() * tail.element_size()
    return {
        "model": f"{name} {str(dtype).removeprefix('torch.').replace('bfloat16', 'bf16').replace('float32', 'fp32')}",
        "request": f"{engine.request_frames(req)} frames {'x'.join(map(str, engine.request_size(req)))}"
                                   f"{', CFG' if rollout.rows == 2 else ''}",
        "state": state, "state_before": state_before, "decoder_cache": rollout.decoder.nbytes,
        "checkpoint": storage_bytes(tensors), "checkpoint_before": state + rollout.decoder.nbytes + waiting,
        "after_blocks": blocks, "request_bytes": engine.request_bytes(req),
    }


def mib(n: int) -> str:
    if n == 0:
        return "0"
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def main(names: list[str]) -> None:
    rollout_module.to_host = to_host_on_meta
    # the released 2B models serve in bf16 on GPUs (fp32 on CPU); the built-in model in fp32
    rows = [measure(n, dtype) for n in names for dtype in ([torch.float32] if n == "shapes-tiny"
                                                            else [torch.float32, torch.bfloat16])]
    print("| model | request | state (before) | decoder cache | checkpoint per block (before) | request (admission) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['request']} | {mib(r['state'])} ({mib(r['state_before'])}) | {mib(r['decoder_cache'])} "
              f"| {mib(r['checkpoint'])} ({mib(r['checkpoint_before'])}) | {mib(r['request_bytes'])} |")


if __name__ == "__main__":
    main(sys.argv[1:] or list(REQUESTS))

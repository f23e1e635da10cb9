"""What a request costs in device memory, measured from shapes on the `meta` device.

A copy of the model's architecture is built on `meta` (shapes only: no data, no allocation, so even
the 2B model costs nothing) and run at the request's shapes while `LiveBytes` follows every tensor
storage that the ops create and free. Its peak is what the real run allocates at its peak, minus
the caching allocator's rounding and fragmentation. Sizes come from storages (a view counts the
storage it keeps alive), never from a tensor's numel.
"""
from __future__ import annotations

import weakref
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

META = torch.device("meta")


def storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind `tensors` (None skipped): what they keep allocated."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            storage = t.untyped_storage()
            seen[storage._cdata] = storage.nbytes()  # _cdata: the storage itself (also for meta tensors)
    return sum(seen.values())


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created by ops inside the mode and still alive; `peak` is their maximum.
    Tensors that existed before (weights, inputs) are not counted."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, int] = {}  # storage -> live tensors (a view keeps its storage alive)
        self._size: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self.live -= self._size.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key not in self._refs:
                if key in inputs:  # in place on, or a view of, a tensor made outside (a weight, an input)
                    continue
                self._refs[key] = 0
                self._size[key] = storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self._refs[key] += 1
            weakref.finalize(t, self._release, key)
        return out


def meta_transformer(transformer):
    """The transformer's architecture on `meta`, in its dtype (an NVFP4 model's activations are its
    compute dtype's, which is what counts here)."""
    from sana_serve.engine.model.transformer import SanaVideoTransformer

    dtype = transformer.proj_out.weight.dtype  # the compute dtype (never NVFP4-packed)
    with META:
        return SanaVideoTransformer(**transformer.config).to(dtype).eval().requires_grad_(False)


def meta_vae(vae):
    """The VAE's architecture on `meta`, in its dtype."""
    dtype = next(vae.parameters()).dtype
    with META:
        return type(vae)(**vae.config).to(dtype).eval().requires_grad_(False)


@torch.no_grad()
def forward_peak_bytes(meta_model, rows: int, latent_shape: tuple[int, int, int, int], text_tokens: int,
                       with_state: bool, window_chunks: int | None = None) -> tuple[int, int]:
    """(activations, state) for `rows` rows of a latent chunk (C, F, h, w): the peak bytes the
    activations of one `forward_chunk` take (what one step of one request adds on the device; a
    batched step adds each request's own, the per-request kernels inside running one request at a
    time), and the bytes of the stream state it leaves (0 without one)."""
    text = meta_model.encode_text(torch.empty(rows, text_tokens, meta_model.config["caption_channels"], device=META),
                                  torch.ones(rows, text_tokens, device=META))
    state = meta_model.new_state(rows, window_chunks) if with_state else None
    x = torch.empty(rows, *latent_shape, device=META)
    t = torch.zeros(rows, device=META)
    with LiveBytes() as live:
        meta_model.forward_chunk(x, t, text, state, update_state=with_state)
    return live.peak, 0 if state is None else state.nbytes()


@torch.no_grad()
def decoder_bytes(meta_vae_model, latent_channels: int, block_frames: int, h: int, w: int) -> tuple[int, int]:
    """(cache, peak) of a stream decoder past its first block: the causal cache it keeps between
    blocks and the peak of decoding one block (cache included)."""
    decoder = meta_vae_model.stream_decoder()
    decoder.decode(torch.empty(1, latent_channels, 1, h, w, device=META))  # the first block, then a regular one
    with LiveBytes() as live:
        decoder.decode(torch.empty(1, latent_channels, block_frames, h, w, device=META))
    return decoder.nbytes, live.peak + decoder.nbytes

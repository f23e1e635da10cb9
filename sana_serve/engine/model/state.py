"""The constant-size memory a block-causal rollout carries from chunk to chunk.

Linear attention lets the past be summarised by two running sums per layer:
    vk    = sum over past tokens of v ⊗ RoPE(φk)      (batch, heads, d_v, d_k), fp32
    k_sum = sum over past tokens of φk                 (batch, heads, d_k),      fp32
plus the last latent frame fed to each layer's temporal conv (the conv is causal across
chunks, so it needs one frame of the past). None of these grow with the video length, which
is why a minute-long video costs the memory of a one-second one.

With `window_chunks=N` only the last N chunks are remembered (a chunk always sees itself
plus those N): each chunk's own contribution goes into a preallocated ring of N slots that is
re-summed, so nothing is ever subtracted (which would let fp32 rounding drift over thousands
of chunks) and the size is fixed from the first chunk on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sana_serve.engine.memory import storage_bytes


@dataclass
class LayerState:
    vk: torch.Tensor  # (B, H, d_v, d_k) fp32
    k_sum: torch.Tensor  # (B, H, d_k) fp32
    conv_tail: torch.Tensor | None = None  # (B, 1, tokens_per_frame, C): last frame of the temporal-conv input
    ring_vk: torch.Tensor | None = None  # (N, B, H, d_v, d_k) per-chunk contributions when windowed
    ring_k_sum: torch.Tensor | None = None  # (N, B, H, d_k)


class StreamState:
    """Per-layer linear-attention state of one rollout batch (cond and uncond are separate rows)."""

    def __init__(self, num_layers: int, batch_size: int, heads: int, head_dim: int,
                 window_chunks: int | None = None, device: torch.device | str = "cpu"):
        if window_chunks is not None and window_chunks < 1:
            raise ValueError(f"window_chunks must be >= 1 or None, got {window_chunks}")
        self.window_chunks = window_chunks
        self.next_frame = 0  # absolute index of the next latent frame (temporal RoPE position)
        self.chunks_seen = 0
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float32, device=device)  # noqa: E731
        ring = window_chunks or 0
        self.layers = [
            LayerState(
                vk=zeros(batch_size, heads, head_dim, head_dim),
                k_sum=zeros(batch_size, heads, head_dim),
                ring_vk=zeros(ring, batch_size, heads, head_dim, head_dim) if ring else None,
                ring_k_sum=zeros(ring, batch_size, heads, head_dim) if ring else None,
            )
            for _ in range(num_layers)
        ]

    @torch.compiler.disable  # plain bookkeeping: not worth tracing, and it would recompile per layer
    def add_chunk(self, contributions: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], num_frames: int) -> None:
        """Fold one clean chunk into every layer: contributions[i] = (vk, k_sum, conv_tail) of layer i."""
        for st, (vk, k_sum, conv_tail) in zip(self.layers, contributions, strict=True):
            # Own copy: the tail arrives as a view of the layer's whole FFN output for the chunk
            # (or of a StateBatch's rows); keeping the view would pin all of it for the next chunk.
            st.conv_tail = conv_tail.clone(memory_format=torch.contiguous_format)
            if self.window_chunks is None:
                st.vk += vk
                st.k_sum += k_sum
                continue
            slot = self.chunks_seen % self.window_chunks  # overwrite the oldest chunk
            st.ring_vk[slot] = vk
            st.ring_k_sum[slot] = k_sum
            st.vk = st.ring_vk.sum(0)
            st.k_sum = st.ring_k_sum.sum(0)
        self.next_frame += num_frames
        self.chunks_seen += 1

    def tensors(self) -> list[torch.Tensor]:
        out = []
        for st in self.layers:
            out += [t for t in (st.vk, st.k_sum, st.conv_tail, st.ring_vk, st.ring_k_sum) if t is not None]
        return out

    def nbytes(self) -> int:
        """Bytes the state really holds: the storages behind its tensors, each counted once (a view
        counts its whole storage, which is what it keeps alive)."""
        return storage_bytes(self.tensors())

    def state_dict(self) -> dict:
        """Everything needed to resume a rollout after a restart."""
        return {
            "window_chunks": self.window_chunks,
            "next_frame": self.next_frame,
            "chunks_seen": self.chunks_seen,
            "layers": [{name: None if t is None else t.clone() for name, t in vars(st).items()}
                       for st in self.layers],
        }

    @classmethod
    def from_state_dict(cls, sd: dict) -> "StreamState":
        self = cls.__new__(cls)
        self.window_chunks = sd["window_chunks"]
        self.next_frame = sd["next_frame"]
        self.chunks_seen = sd["chunks_seen"]
        self.layers = [LayerState(**layer) for layer in sd["layers"]]
        return self


class StateBatch:
    """Several rollouts' states side by side, for one batched forward (continuous batching).

    Quacks like a StreamState for `forward_chunk`: `layers` holds the members' tensors
    concatenated along the batch, `next_frame` gives each row its own absolute position, and
    `add_chunk` hands every member its own rows of the contributions, so windowed rings and
    positions stay per request. The concatenated tensors are copies, made once per call.
    `update[i]` False leaves member i unchanged by `add_chunk` (its rows were a denoising step
    batched with other members' folds).
    """

    def __init__(self, members: list[StreamState], update: list[bool] | None = None):
        if not members:
            raise ValueError("a StateBatch needs at least one state")
        if update is not None and len(update) != len(members):
            raise ValueError(f"update has {len(update)} flags for {len(members)} states")
        self.members = members
        self.update = [True] * len(members) if update is None else list(update)
        self.rows = [m.layers[0].vk.shape[0] for m in members]
        self.next_frame = [m.next_frame for m, r in zip(members, self.rows) for _ in range(r)]
        self.layers = []
        for per_member in zip(*(m.layers for m in members)):
            tails = [st.conv_tail for st in per_member]
            if all(t is None for t in tails):
                tail = None
            else:  # a member at its first chunk has no past frame: zeros add nothing to the conv
                like = next(t for t in tails if t is not None)
                tail = torch.cat([like.new_zeros(r, *like.shape[1:]) if t is None else t
                                  for t, r in zip(tails, self.rows)])
            self.layers.append(LayerState(vk=torch.cat([st.vk for st in per_member]),
                                          k_sum=torch.cat([st.k_sum for st in per_member]),
                                          conv_tail=tail))

    @torch.compiler.disable
    def add_chunk(self, contributions: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], num_frames: int) -> None:
        start = 0
        for member, rows, update in zip(self.members, self.rows, self.update):
            if update:
                member.add_chunk([tuple(t[start:start + rows] for t in c) for c in contributions], num_frames)
            start += rows

"""The constant-size memory a block-causal rollout carries from chunk to chunk.

Linear attention lets the past be summarised by two running sums per layer:
    vk    = sum over past tokens of v ⊗ RoPE(φk)      (batch, heads, d_v, d_k), fp32
    k_sum = sum over past tokens of φk                 (batch, heads, d_k),      fp32
plus the last latent frame fed to each layer's temporal conv (the conv is causal across
chunks, so it needs one frame of the past). None of these grow with the video length, which
is why a minute-long video costs the memory of a one-second one.

With `window_chunks=N` only the last N chunks are remembered: we keep each chunk's own
contribution in a ring of N entries and re-sum it, so nothing is ever subtracted (which
would let fp32 rounding drift over thousands of chunks).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch


@dataclass
class LayerState:
    vk: torch.Tensor  # (B, H, d_v, d_k) fp32
    k_sum: torch.Tensor  # (B, H, d_k) fp32
    conv_tail: torch.Tensor | None = None  # (B, 1, tokens_per_frame, C): last frame of the temporal-conv input
    window: deque = field(default_factory=deque)  # per-chunk (vk, k_sum) when windowed


class StreamState:
    """Per-layer linear-attention state of one rollout batch (cond and uncond are separate rows)."""

    def __init__(self, num_layers: int, batch_size: int, heads: int, head_dim: int,
                 window_chunks: int | None = None, device: torch.device | str = "cpu"):
        if window_chunks is not None and window_chunks < 1:
            raise ValueError(f"window_chunks must be >= 1 or None, got {window_chunks}")
        self.window_chunks = window_chunks
        self.next_frame = 0  # absolute index of the next latent frame (temporal RoPE position)
        self.chunks_seen = 0
        self.layers = [
            LayerState(
                vk=torch.zeros(batch_size, heads, head_dim, head_dim, dtype=torch.float32, device=device),
                k_sum=torch.zeros(batch_size, heads, head_dim, dtype=torch.float32, device=device),
            )
            for _ in range(num_layers)
        ]

    def add_chunk(self, layer: int, vk: torch.Tensor, k_sum: torch.Tensor, conv_tail: torch.Tensor) -> None:
        """Fold one chunk's contribution into layer `layer`."""
        st = self.layers[layer]
        st.conv_tail = conv_tail
        if self.window_chunks is None:
            st.vk += vk
            st.k_sum += k_sum
            return
        st.window.append((vk, k_sum))
        if len(st.window) > self.window_chunks:
            st.window.popleft()
        st.vk = torch.stack([c[0] for c in st.window]).sum(0)
        st.k_sum = torch.stack([c[1] for c in st.window]).sum(0)

    def advance(self, num_frames: int) -> None:
        """Called once per clean chunk after every layer has been updated."""
        self.next_frame += num_frames
        self.chunks_seen += 1

    def tensors(self) -> list[torch.Tensor]:
        out = []
        for st in self.layers:
            out += [st.vk, st.k_sum]
            if st.conv_tail is not None:
                out.append(st.conv_tail)
            for vk, ks in st.window:
                out += [vk, ks]
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def state_dict(self) -> dict:
        """Everything needed to resume a rollout after a restart."""
        return {
            "window_chunks": self.window_chunks,
            "next_frame": self.next_frame,
            "chunks_seen": self.chunks_seen,
            "layers": [
                {"vk": st.vk.clone(), "k_sum": st.k_sum.clone(),
                 "conv_tail": None if st.conv_tail is None else st.conv_tail.clone(),
                 "window": [(a.clone(), b.clone()) for a, b in st.window]}
                for st in self.layers
            ],
        }

    @classmethod
    def from_state_dict(cls, sd: dict) -> "StreamState":
        self = cls.__new__(cls)
        self.window_chunks = sd["window_chunks"]
        self.next_frame = sd["next_frame"]
        self.chunks_seen = sd["chunks_seen"]
        self.layers = [LayerState(vk=l["vk"], k_sum=l["k_sum"], conv_tail=l["conv_tail"],
                                  window=deque(l["window"])) for l in sd["layers"]]
        return self

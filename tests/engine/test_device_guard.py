"""The CPU guard for device bugs: the engine end to end on a stand-in for the GPU.

Nothing in the CPU suite runs on a GPU, so a tensor left on the host (an op mixing devices) or a
copy to the host in the middle of the loop (`.numpy()`, `.item()`, `.cpu()`) would first fail on a
user's GPU. Here the model and everything derived from it live on the `meta` device (shapes, no
data, no allocation), and `DeviceGuard` watches every op: it fails on any op whose tensors sit on
two devices (a 0-dim CPU tensor excepted, as CUDA allows) and on any copy from the device to the
host. The one sanctioned hand-off, `rollout.to_host` (finished uint8 frames and checkpoints, once
per block), is allowed by name: on meta there is no data to copy, so it hands back an
uninitialised host tensor of the same shape and dtype after checking what crosses.

Both modes run: block-causal (the built-in model) and full-sequence (the same weights), each with a
batched step of two requests, decoding, block hand-off, snapshot and restore.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sana_serve.engine import rollout as rollout_module
from sana_serve.engine.config import load_config
from sana_serve.engine.load import build_random_models
from sana_serve.engine.rollout import Engine, GenerationRequest, Rollout

DEVICE = torch.device("meta")  # the stand-in for the GPU
RED = "a red circle moving right on a black background"
BLUE = "a blue square moving up on a white background"


class DeviceGuard(TorchDispatchMode):
    """Fails on ops that mix devices or copy device tensors to the host; records host-to-device uploads."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.uploads: list[tuple[int, ...]] = []  # shapes of tensors copied host -> device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = [t for t in tensors if t.device.type == self.device.type]
        # CUDA lets a 0-dim CPU tensor (a scalar) join a device op; nothing else may cross
        devices = {t.device.type for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1:
            raise AssertionError(f"{func} mixes devices {sorted(devices)}: "
                                 f"{[(tuple(t.shape), t.device.type) for t in tensors]}")
        if on_device and func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError(f"{func}: .item() / bool() on a device tensor waits for the device and copies to the host")
        target = kwargs.get("device")
        if func is torch.ops.aten._to_copy.default and target is not None:
            target = torch.device(target)
            if on_device and target.type == "cpu":
                raise AssertionError(f"a copy to the host outside rollout.to_host: {tuple(tensors[0].shape)}")
            if not on_device and target.type == self.device.type:
                self.uploads.append(tuple(tensors[0].shape))
        return func(*args, **kwargs)


@pytest.fixture
def guarded(monkeypatch):
    """A DeviceGuard active during the test; `rollout.to_host` is the one door to the host."""
    crossed = []

    def to_host(t: torch.Tensor) -> torch.Tensor:
        assert t.device.type == DEVICE.type, f"to_host got a tensor on {t.device}"
        crossed.append((tuple(t.shape), t.dtype))
        with torch.utils._python_dispatch._disable_current_modes():  # the sanctioned copy (no data on meta)
            return torch.empty(t.shape, dtype=t.dtype, device="cpu")

    monkeypatch.setattr(rollout_module, "to_host", to_host, raising=False)  # raising=False: also runs on code before to_host existed
    guard = DeviceGuard(DEVICE)
    guard.crossed = crossed
    with guard:
        yield guard


def meta_engine(text_encoder, mode: str) -> Engine:
    """The built-in model's architecture with its parameters on the stand-in device; `mode` picks
    block_causal (its config) or full_sequence (same weights, one chunk, Euler)."""
    cfg = load_config("shapes-tiny")
    if mode == "full_sequence":
        cfg = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, mode="full_sequence", steps=3,
                                                                    window_chunks=None))
    with DEVICE:
        transformer, vae = build_random_models(cfg)
    return Engine(transformer, vae, text_encoder, cfg, DEVICE)


def run_batched(engine: Engine, guard: DeviceGuard, requests: list[GenerationRequest],
                snapshot_after_blocks: int) -> tuple[list[list], list[tuple[int, ...]]]:
    """Two requests advanced together through Engine.step; the first is snapshotted after
    `snapshot_after_blocks` blocks and replaced by its restore (as a resumed server job).
    Returns each request's blocks and the shapes uploaded host -> device during the steps."""
    rollouts = [Rollout(engine, r) for r in requests]
    blocks: list[list] = [[] for _ in requests]
    step_uploads = []
    restored = False
    while not all(r.done for r in rollouts):
        active = [i for i, r in enumerate(rollouts) if not r.done]
        before = len(guard.uploads)
        results = engine.step([rollouts[i] for i in active])
        step_uploads += guard.uploads[before:]
        for i, b in zip(active, results):
            if b is not None:
                blocks[i].append(b)
        first = rollouts[0]
        if not restored and len(blocks[0]) == snapshot_after_blocks and first.between_blocks:
            rollouts[0] = Rollout.restore(engine, requests[0], first.snapshot())
            restored = True
    assert restored
    return blocks, step_uploads


@pytest.mark.parametrize("mode", ["block_causal", "full_sequence"])
def test_engine_stays_on_its_device_end_to_end(engine, guarded, mode):
    e = meta_engine(engine.text_encoder, mode)
    requests = [GenerationRequest(RED, seconds=5, seed=1), GenerationRequest(BLUE, seconds=3, seed=2, guidance_scale=1.0)]
    blocks, step_uploads = run_batched(e, guarded, requests, snapshot_after_blocks=1)
    for req, got in zip(requests, blocks):
        assert [b.index for b in got] == list(range(len(e.plan_blocks(req))))
        assert sum(b.frame_count for b in got) == e.request_frames(req)
        assert all(b.frames.dtype.name == "uint8" and b.frames.shape[1:] == (64, 64, 3) for b in got)
    # what crossed to the host: each block's uint8 frames, and the checkpoint's tensors
    assert any(dtype == torch.uint8 for _, dtype in guarded.crossed)
    assert all(dtype in (torch.uint8, torch.float32) for _, dtype in guarded.crossed)
    # what went up during the steps: each chunk's noise in one copy, and the RoPE frequencies once
    # (1-D, per axis length); nothing per denoising step
    chunks = sum(len(Rollout(e, r).chunk_sizes) for r in requests)
    noise = [s for s in step_uploads if len(s) > 1]
    assert len(noise) == chunks, step_uploads
    assert all(len(s) == 1 for s in step_uploads if len(s) == 1) and len(step_uploads) - len(noise) <= 3

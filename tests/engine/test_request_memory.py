"""What a request really holds, measured from tensor storages (a view keeps its whole storage alive)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from sana_serve.engine.memory import storage_bytes
from sana_serve.engine.model.transformer import SanaVideoTransformer
from sana_serve.engine.rollout import GenerationRequest, Rollout

BLUE = "a blue square moving up on a white background"


def snapshot_tensors(snapshot: dict) -> list[torch.Tensor]:
    out = []

    def walk(v):
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(snapshot)
    return out


@torch.no_grad()
def test_stream_state_holds_only_its_own_bytes():
    """The conv tail is one latent frame per layer: before, it was a view of the layer's whole FFN
    output for the chunk and kept all of it alive (chunk_frames times the tail, every layer)."""
    torch.manual_seed(0)
    heads, head_dim, layers, dim = 2, 16, 3, 32
    model = SanaVideoTransformer(in_channels=4, out_channels=4, num_attention_heads=heads, attention_head_dim=head_dim,
                                 num_layers=layers, num_cross_attention_heads=2, cross_attention_head_dim=16,
                                 cross_attention_dim=dim, caption_channels=24, sample_size=8).eval()
    text = model.encode_text(torch.randn(1, 5, 24))
    state = model.new_state(1)
    frames, h, w = 6, 8, 8
    for _ in range(2):
        model.forward_chunk(torch.randn(1, 4, frames, h, w), torch.zeros(1), text, state, update_state=True)
    tokens_per_frame = (h // 2) * (w // 2)
    per_layer = heads * head_dim * head_dim + heads * head_dim + tokens_per_frame * dim  # vk, k_sum, conv tail
    expected = layers * per_layer * 4  # fp32
    real = sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in state.tensors()}.values())
    assert real == expected
    assert state.nbytes() == expected


def test_checkpoint_costs_the_state_plus_the_latents(engine):
    """A block's checkpoint holds the stream state and the clean latents (decoded blocks' and those
    waiting), not the VAE decoder's cache; it loads with weights_only=True; restore is exact."""
    req = GenerationRequest(BLUE, seconds=6, seed=5)
    whole = [b.frames for b in engine.stream(req)]
    rollout = Rollout(engine, req)
    got = [rollout.next_block().frames]
    snapshot = rollout.snapshot()
    assert snapshot["decoder_cache"] is None
    latents = [snapshot[k] for k in ("decoded_latents", "pending_clean", "ready") if snapshot[k] is not None]
    assert snapshot["decoded_latents"].shape[2] == engine.plan_blocks(req)[0]
    assert storage_bytes(snapshot_tensors(snapshot)) == rollout.state.nbytes() + sum(t.nbytes for t in latents)
    assert storage_bytes(snapshot_tensors(snapshot)) < rollout.state.nbytes() + rollout.decoder.nbytes

    buf = io.BytesIO()
    torch.save(snapshot, buf)
    buf.seek(0)
    resumed = Rollout.restore(engine, req, torch.load(buf, weights_only=True))
    while not resumed.done:
        got.append(resumed.next_block().frames)
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(whole))


def test_a_stream_whose_latents_outgrew_the_cache_checkpoints_the_cache(engine):
    """Past the point where the decoded latents would cost more than the decoder's cache (a very long
    stream), the checkpoint carries the cache itself, and restore is still exact."""
    req = GenerationRequest(BLUE, seconds=6, seed=6)
    whole = [b.frames for b in engine.stream(req)]
    rollout = Rollout(engine, req)
    got = [rollout.next_block().frames]
    rollout.decoded_latents = None  # what _finish_block does once they outgrow rollout.decoder.nbytes
    snapshot = rollout.snapshot()
    assert snapshot["decoded_latents"] is None and snapshot["decoder_cache"]
    resumed = Rollout.restore(engine, req, snapshot)
    while not resumed.done:
        got.append(resumed.next_block().frames)
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(whole))


RED = "a red circle moving right on a black background"


def test_request_bytes_cover_a_real_block(engine):
    """The admission cost, computed from shapes on meta, covers what a real block allocates on the CPU
    (live storages, followed op by op) beside the request's state and decoder cache."""
    from sana_serve.engine.memory import LiveBytes

    req = GenerationRequest(RED, seconds=4, seed=2)
    rollout = Rollout(engine, req)
    with LiveBytes() as live:
        rollout.next_block()
        rollout.next_block()
    cost = engine.request_bytes(req)
    assert live.peak <= cost
    assert cost < 4 * live.peak  # and is not a blanket over-estimate


def test_admission_keeps_requests_within_the_memory_budget(engine, monkeypatch):
    one = engine.request_bytes(GenerationRequest(RED, seconds=4, guidance_scale=1.0))
    cfg = engine.request_bytes(GenerationRequest(RED, seconds=4, guidance_scale=3.0))
    assert cfg > one  # CFG doubles the rows
    monkeypatch.setattr(engine, "memory_budget", int(2.5 * one))
    plain = GenerationRequest(RED, seconds=4, guidance_scale=1.0)
    assert engine.fits([plain, plain]) and not engine.fits([plain, plain, plain])
    monkeypatch.setattr(engine, "memory_budget", (one + cfg) // 2)
    engine.validate(plain)
    with pytest.raises(ValueError, match="GiB of device memory"):  # never fits: refused up front (a 4xx)
        engine.validate(GenerationRequest(RED, seconds=4, guidance_scale=3.0))


def test_out_of_memory_in_a_batched_step_fails_only_the_request_that_does_not_fit(engine, monkeypatch):
    """As if the device held at most one row per forward: the batched step runs out of memory, its
    requests are retried one at a time, the one-row request goes on (bit-identical to running alone)
    and only the two-row (CFG) request fails."""
    plain = GenerationRequest(RED, seconds=4, seed=3, guidance_scale=1.0)
    alone = np.concatenate([b.frames for b in engine.stream(plain)])
    forward = engine.transformer.forward_chunk

    def forward_within_one_row(latents, *args, **kwargs):
        if latents.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected: one row fits)")
        return forward(latents, *args, **kwargs)

    monkeypatch.setattr(engine.transformer, "forward_chunk", forward_within_one_row)
    rollouts = [Rollout(engine, plain), Rollout(engine, GenerationRequest(BLUE, seconds=4, seed=4, guidance_scale=3.0))]
    frames = []
    while not rollouts[0].done:
        blocks = engine.step([r for r in rollouts if not r.failed])
        assert isinstance(rollouts[1].failed, torch.OutOfMemoryError)
        if blocks[0] is not None:
            frames.append(blocks[0].frames)
    np.testing.assert_array_equal(np.concatenate(frames), alone)
    with pytest.raises(torch.OutOfMemoryError):
        rollouts[1].next_block()

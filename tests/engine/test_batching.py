"""Continuous batching and resume: what the server's scheduler relies on.

- Engine.step batches requests at different positions, prompts, guidance and chunk lengths,
  and each request gets the video it would get alone;
- a rollout snapshotted between blocks and restored (through torch.save, as after a crash)
  continues bit-identically;
- an endless rollout follows a prompt change from the next block on.
"""
import io

import numpy as np
import pytest
import torch

from sana_serve.engine import GenerationRequest
from sana_serve.engine.rollout import Rollout

RED = "a red circle moving right on a black background"
BLUE = "a blue square moving up on a white background"


def _alone(engine, req):
    return np.concatenate([b.frames for b in engine.stream(req)])


def _run_together(engine, requests, join_after=None):
    """Step all rollouts together; request i joins after `join_after[i]` calls (continuous batching)."""
    join_after = join_after or [0] * len(requests)
    rollouts, frames = [None] * len(requests), [[] for _ in requests]
    calls = batched_calls = 0
    while True:
        for i, req in enumerate(requests):
            if rollouts[i] is None and calls >= join_after[i]:
                rollouts[i] = Rollout(engine, req)
        active = [i for i, r in enumerate(rollouts) if r is not None and not r.done]
        if not active and all(r is not None for r in rollouts):
            return [np.concatenate(f) for f in frames], batched_calls
        blocks = engine.step([rollouts[i] for i in active])
        batched_calls += len(active) > 1
        calls += 1
        for i, b in zip(active, blocks):
            if b is not None:
                assert b.index == len(frames[i])
                frames[i].append(b.frames)


def test_batched_requests_match_their_solo_runs(engine):
    requests = [
        GenerationRequest(RED, seconds=5, seed=3),
        GenerationRequest(BLUE, seconds=4, seed=7, guidance_scale=3.0, negative_prompt="blurry"),
        GenerationRequest("a green triangle moving left on a gray background", seconds=4, seed=1,
                          sampler="dpmpp_2m", num_inference_steps=3),
        GenerationRequest(RED, seconds=2, seed=3),
    ]
    # Requests join at different calls, so rows sit at different frame positions and steps.
    together, batched_calls = _run_together(engine, requests, join_after=[0, 0, 3, 5])
    assert batched_calls > 5
    for req, got in zip(requests, together):
        want = _alone(engine, req)
        assert got.shape == want.shape
        # Batch-invariant (the engine's default): exactly the solo frames (test_batch_invariance.py).
        np.testing.assert_array_equal(got, want)


def test_snapshot_restore_continues_bit_identically(engine):
    req = GenerationRequest(BLUE, seconds=6, seed=11, guidance_scale=2.0)
    want = _alone(engine, req)
    first = Rollout(engine, req)
    frames = [first.next_block().frames, first.next_block().frames]
    buf = io.BytesIO()
    torch.save(first.snapshot(), buf)  # through bytes, as the server stores it
    del first
    buf.seek(0)
    resumed = Rollout.restore(engine, GenerationRequest(BLUE, seconds=6, seed=11, guidance_scale=2.0),
                              torch.load(buf, weights_only=False))
    assert resumed.next_index == 2
    while not resumed.done:
        frames.append(resumed.next_block().frames)
    np.testing.assert_array_equal(np.concatenate(frames), want)


def test_snapshot_only_between_blocks(engine):
    r = Rollout(engine, GenerationRequest(RED, seconds=2, seed=0))
    engine.step([r])  # one denoising step into the first chunk
    assert not r.between_blocks
    with pytest.raises(RuntimeError, match="between blocks"):
        r.snapshot()


def test_endless_rollout_follows_a_prompt_update(engine):
    def endless(updates):
        r = Rollout(engine, GenerationRequest(RED, seconds=None, seed=5))
        assert r.num_blocks is None
        out = []
        for k in range(3):
            if k in updates:
                r.set_prompt(updates[k])
            out.append(r.next_block().frames)
        return out

    steady = endless({})
    steered = endless({2: BLUE})
    np.testing.assert_array_equal(steady[0], steered[0])
    np.testing.assert_array_equal(steady[1], steered[1])  # the update waits for the next block
    assert np.abs(steady[2].astype(int) - steered[2].astype(int)).mean() > 0.5
    with pytest.raises(ValueError, match="prompt"):
        Rollout(engine, GenerationRequest(RED, seconds=None)).set_prompt("  ")


def test_a_fold_rides_in_the_same_forward_as_the_others_denoising(engine, monkeypatch):
    """Two requests one call out of phase: one forward per step (not a separate one for each
    fold of a clean chunk into the state), and each still gets its solo video."""
    requests = [GenerationRequest(RED, seconds=4, seed=2), GenerationRequest(BLUE, seconds=4, seed=4)]
    forwards = []
    real = engine.transformer.forward_chunk

    def counting(x, *args, **kwargs):
        forwards.append(x.shape[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(engine.transformer, "forward_chunk", counting)
    rollouts = [Rollout(engine, requests[0])]
    frames = [[], []]
    steps = 0
    while any(not r.done for r in rollouts) or len(rollouts) < 2:
        if steps == 1:
            rollouts.append(Rollout(engine, requests[1]))  # joins one call late: out of phase for good
        active = [r for r in rollouts if not r.done]
        for r, b in zip(active, engine.step(active)):
            if b is not None:
                frames[rollouts.index(r)].append(b.frames)
        steps += 1
    assert len(forwards) == steps  # one batched forward per step, folds included
    monkeypatch.undo()
    for req, got in zip(requests, frames):
        got, want = np.concatenate(got), _alone(engine, req)
        np.testing.assert_array_equal(got, want)

"""Same seed, same video, wherever it runs: a request's frames do not depend on its batch.

The engine (batch-invariant by default) runs a request alone and batched with three other
jobs (other prompts, seeds, guidance, samplers; joining at other calls and blocks), through
`Engine.step` as the server's worker drives it, and after a resume from a snapshot into a
running batch (a job reclaimed by another worker). Latents and uint8 frames must be equal, not
close. tests/server/test_batch_invariance.py checks the same through the server's worker.
"""
import io

import numpy as np
import pytest
import torch

from sana_serve.engine import GenerationRequest
from sana_serve.engine.model.state import StateBatch
from sana_serve.engine.model.transformer import TextContext
from sana_serve.engine.rollout import Rollout

RED = "a red circle moving right on a black background"
OTHERS = [
    GenerationRequest("a blue square moving up on a white background", seconds=2, seed=7, negative_prompt="blurry"),
    GenerationRequest("a green triangle moving left on a gray background", seconds=1.5, seed=1, guidance_scale=1.0),
    GenerationRequest("a yellow circle moving down on a black background", seconds=2, seed=5,
                      sampler="dpmpp_2m", num_inference_steps=3),
]


def _drive(engine, rollouts, join_after):
    """Step rollouts like the worker: rollout i joins after join_after[i] calls. Per rollout, its
    blocks' frames and the clean latents of each block (taken as the block is handed over)."""
    frames = [[] for _ in rollouts]
    latents = [[] for _ in rollouts]
    calls = batched = 0
    while True:
        active = [i for i, r in enumerate(rollouts) if calls >= join_after[i] and not r.done]
        if not active and calls >= max(join_after):
            return frames, latents, batched
        blocks = engine.step([rollouts[i] for i in active]) if active else []
        batched += len(active) > 1
        calls += 1
        for i, b in zip(active, blocks):
            if b is not None:
                frames[i].append(b.frames)
                latents[i].append(rollouts[i].pending_clean.clone())  # x0, waiting to be folded in


def _assert_identical(got, want):
    (gf, gl), (wf, wl) = got, want
    assert len(gl) == len(wl)
    for a, b in zip(gl, wl):
        assert torch.equal(a, b), (a - b).abs().max()
    np.testing.assert_array_equal(np.concatenate(gf), np.concatenate(wf))


@pytest.mark.parametrize("guidance", [3.0, 1.0], ids=["cfg-2-rows", "no-cfg-1-row"])
def test_a_request_batched_with_three_other_jobs_gets_its_solo_video_exactly(engine, guidance):
    assert engine.batch_invariant  # the default
    target = GenerationRequest(RED, seconds=2, seed=0, guidance_scale=guidance)
    f, l, _ = _drive(engine, [Rollout(engine, target)], [0])
    alone = (f[0], l[0])
    # The target joins a running batch mid-chunk; the others join before it, with it, and after
    # its first block (its first chunk has the config's 24 steps).
    rollouts = [Rollout(engine, target)] + [Rollout(engine, r) for r in OTHERS]
    frames, latents, batched = _drive(engine, rollouts, join_after=[3, 0, 3, 30])
    assert batched > 20
    _assert_identical((frames[0], latents[0]), alone)


def test_a_job_resumed_from_its_snapshot_into_another_batch_continues_exactly(engine):
    """What a reclaimed job sees: its first block alone on one worker, the rest batched on another."""
    req = GenerationRequest(RED, seconds=3, seed=4)
    f, l, _ = _drive(engine, [Rollout(engine, req)], [0])
    first = Rollout(engine, req)
    frames = [first.next_block().frames]
    buf = io.BytesIO()
    torch.save(first.snapshot(), buf)
    buf.seek(0)
    resumed = Rollout.restore(engine, req, torch.load(buf, weights_only=False))
    others = [Rollout(engine, r) for r in OTHERS]
    got_frames, got_latents, batched = _drive(engine, others + [resumed], join_after=[0, 0, 2, 5])
    assert batched > 5
    np.testing.assert_array_equal(np.concatenate(frames + got_frames[-1]), np.concatenate(f[0]))
    for a, b in zip(got_latents[-1], l[0][1:]):
        assert torch.equal(a, b)


def test_forward_rows_per_request_equal_their_solo_forward(engine):
    """The transformer alone: four requests (2, 1, 2, 1 rows) at different frame positions and
    noise levels in one forward with request_rows; each request's rows equal its own forward."""
    tr = engine.transformer
    gen = torch.Generator().manual_seed(0)
    requests = [GenerationRequest(RED, seconds=4, seed=s, guidance_scale=g) for s, g in
                ((0, 3.0), (1, 1.0), (2, 3.0), (3, 1.0))]
    rollouts = [Rollout(engine, r) for r in requests]
    for k, r in enumerate(rollouts):  # give every state a different past (and position)
        for _ in range(k):
            x = torch.randn(r.rows, engine.latent_channels, 8, *engine.latent_hw, generator=gen)
            tr.forward_chunk(x, torch.zeros(r.rows), r.text, r.state, update_state=True)
    xs = [torch.randn(r.rows, engine.latent_channels, 8, *engine.latent_hw, generator=gen) for r in rollouts]
    ts = [torch.full((r.rows,), 100.0 * (k + 1)) for k, r in enumerate(rollouts)]
    with torch.no_grad():
        solo = [tr.forward_chunk(x, t, r.text, r.state) for x, t, r in zip(xs, ts, rollouts)]
        rows = [r.rows for r in rollouts]
        out = tr.forward_chunk(torch.cat(xs), torch.cat(ts), TextContext.cat([r.text for r in rollouts]),
                               StateBatch([r.state for r in rollouts], update=[False] * 4), request_rows=rows)
    for got, want in zip(out.split(rows), solo):
        assert torch.equal(got, want), (got - want).abs().max()
    with pytest.raises(ValueError, match="request_rows"):
        tr.forward_chunk(torch.cat(xs), torch.cat(ts), TextContext.cat([r.text for r in rollouts]),
                         StateBatch([r.state for r in rollouts]), request_rows=[2, 2])

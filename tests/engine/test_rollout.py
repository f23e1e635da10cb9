"""Rollout: exact frame counts, streaming order, determinism, cancellation, validation."""
import numpy as np
import pytest

from sana_serve.engine import Cancelled, GenerationRequest
from sana_serve.engine.rollout import Rollout, chunk_plan
from sana_serve.engine.video import Mp4Writer, decode_video

PROMPT = "a blue square moving up on a white background"


def test_chunk_plan_first_chunk_takes_the_remainder():
    assert chunk_plan(64, 4, 4) == ([4, 4, 4, 4], 0)
    assert chunk_plan(21, 4, 4) == ([2, 4], 3)  # 6 latent frames -> 24 decoded, 3 trimmed
    assert chunk_plan(1, 4, 4) == ([1], 3)
    with pytest.raises(ValueError):
        chunk_plan(0, 4, 4)


@pytest.mark.parametrize("seconds", [0.25, 1, 1.3, 2.5])
def test_exactly_seconds_times_fps_frames(engine, seconds):
    blocks = list(engine.stream(GenerationRequest(PROMPT, seconds=seconds, seed=1)))
    expected = round(seconds * 16)
    assert sum(b.frame_count for b in blocks) == expected
    assert [b.frame_start for b in blocks] == list(np.cumsum([0] + [b.frame_count for b in blocks[:-1]]))
    block_frames = engine.config.sampling.chunk_frames * engine.vae.temporal_compression
    assert all(b.frame_count == block_frames for b in blocks[1:])  # only the first block may be short
    assert all(b.frames.dtype == np.uint8 and b.frames.shape[1:] == (64, 64, 3) for b in blocks)
    assert all(b.num_blocks == len(blocks) for b in blocks)


def test_block_is_handed_over_before_the_state_update(engine):
    rollout = Rollout(engine, GenerationRequest(PROMPT, seconds=3, seed=0))
    first = rollout.next_block()
    assert first.index == 0 and rollout.state.chunks_seen == 0  # clean chunk not folded in yet
    rollout.next_block()
    assert rollout.state.chunks_seen == 1


def _mp4_bytes(engine, req, path):
    with Mp4Writer(path, 64, 64, 16) as w:
        for b in engine.stream(req):
            w.write(b.frames)
    return path.read_bytes()


def test_same_seed_same_bytes_different_seed_different_video(engine, tmp_path):
    a = _mp4_bytes(engine, GenerationRequest(PROMPT, seconds=2, seed=7), tmp_path / "a.mp4")
    b = _mp4_bytes(engine, GenerationRequest(PROMPT, seconds=2, seed=7), tmp_path / "b.mp4")
    c = _mp4_bytes(engine, GenerationRequest(PROMPT, seconds=2, seed=8), tmp_path / "c.mp4")
    assert a == b
    assert a != c
    fa, fc = decode_video(a), decode_video(c)
    assert len(fa) == 32 and np.abs(fa.astype(int) - fc.astype(int)).mean() > 1.0


def test_guidance_uses_the_negative_prompt(engine):
    def frames(**kw):
        return np.concatenate([b.frames for b in engine.stream(GenerationRequest(PROMPT, seconds=1, seed=3, **kw))])

    plain = frames()
    cfg_a = frames(guidance_scale=4.0, negative_prompt="")
    cfg_b = frames(guidance_scale=4.0, negative_prompt="a green triangle")
    assert not np.array_equal(plain, cfg_a) and not np.array_equal(cfg_a, cfg_b)


def test_cancel_stops_within_a_step(engine):
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        list(engine.stream(GenerationRequest(PROMPT, seconds=4, seed=0), cancelled=cancelled))
    assert len(calls) == 3  # checked before every model call, stopped at the first "yes"


@pytest.mark.parametrize("kw,match", [
    (dict(prompt="", seconds=1), "prompt"),
    (dict(prompt=PROMPT, seconds=-1), "seconds"),
    (dict(prompt=PROMPT, seconds=float("nan")), "seconds"),
    (dict(prompt=PROMPT, seconds=10_000), "at most"),
    (dict(prompt=PROMPT, seconds=1, guidance_scale=100.0), "guidance_scale"),
    (dict(prompt=PROMPT, seconds=1, num_inference_steps=0), "num_inference_steps"),
    (dict(prompt=PROMPT, seconds=1, seed=-3), "seed"),
])
def test_bad_requests_are_rejected_with_the_field_named(engine, kw, match):
    with pytest.raises(ValueError, match=match):
        next(engine.stream(GenerationRequest(**kw)))


def test_the_first_block_gets_the_configs_first_chunk_steps(engine):
    """The first block starts from an empty state (the scene comes from the prompt alone), so the
    config gives it more steps; a request that chooses its steps gets them for every block."""
    s = engine.config.sampling
    assert s.first_chunk_steps and s.first_chunk_steps > s.steps  # the built-in model's default

    def calls_per_block(req):
        rollout, counts, n = Rollout(engine, req), [], 0
        while not rollout.done:
            n += 1
            if engine.step([rollout])[0] is not None:
                counts.append(n)
                n = 0
        return counts

    # 3 blocks; blocks after the first also pay the fold of the previous chunk (one call)
    assert calls_per_block(GenerationRequest(PROMPT, seconds=6, seed=0)) == [s.first_chunk_steps, s.steps + 1, s.steps + 1]
    assert calls_per_block(GenerationRequest(PROMPT, seconds=6, seed=0, num_inference_steps=3)) == [3, 4, 4]

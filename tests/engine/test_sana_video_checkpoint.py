"""The released checkpoints' layout, on a tiny random SanaVideoPipeline saved by diffusers itself
(tests/tiny_sana_video.py): `sana-serve generate --checkpoint DIR` gives diffusers' frames for the same
prompt, seed, steps and guidance (full-sequence mode, the bidirectional SANA-Video), and the LongSANA
mode on the same weights gives what a block-causal reference written here from diffusers' modules gives
(NVlabs/Sana longlive_flow_euler_sampler.py's loop over a dense block-causal forward)."""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

from sana_serve.cli import main
from sana_serve.engine.rollout import noise_generator
from tests import tiny_sana_video as tiny
from tests.engine.test_transformer import dense_block_causal

PROMPT = "A red circle moving right on a black background"


def generate(tmp_path, *args) -> tuple[np.ndarray, dict]:
    out, report = tmp_path / "out.npy", tmp_path / "report.json"
    assert main(["generate", "--prompt", PROMPT, "--out", str(out), "--report", str(report), "--quiet",
                 "--size", f"{tiny.WIDTH}x{tiny.HEIGHT}", *args]) == 0
    return np.load(out), json.loads(report.read_text())


def assert_same_frames(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == np.uint8 and got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 2, f"max difference {diff.max()} levels ({(diff > 2).mean():.1%} of values over 2)"
    assert expected.std() > 20  # a real picture, not a saturated one: the comparison means something


@pytest.mark.parametrize("frames,seed,steps,guidance,negative", [
    (25, 3, 4, 4.5, ""),             # two blocks (2 + 5 latent frames), CFG with the empty negative prompt
    (9, 11, None, None, "blurry"),   # the pipeline's defaults: 50 steps, guidance 6; a negative prompt
])
def test_generate_matches_diffusers_pipeline(tiny_sana_video, tmp_path, frames, seed, steps, guidance, negative):
    pipe = tiny_sana_video["pipe"]
    args = ["--checkpoint", str(tiny_sana_video["root"]), "--frames", str(frames), "--seed", str(seed),
            "--negative-prompt", negative]
    args += [] if steps is None else ["--steps", str(steps)]
    args += [] if guidance is None else ["--guidance", str(guidance)]
    got, report = generate(tmp_path, *args)
    call = inspect.signature(type(pipe).__call__).parameters
    expected = tiny.diffusers_frames(pipe, PROMPT, frames, seed, steps or call["num_inference_steps"].default,
                                     guidance or call["guidance_scale"].default, negative)
    assert report["mode"] == "full_sequence" and report["config"] == "sana-video-2b-480p"
    assert report["frames"] == frames and len(got) == frames
    assert_same_frames(got, expected)
    if frames == 25:  # handed out in blocks as the causal VAE decodes them: the first block takes the remainder
        assert [b["frames"] for b in report["blocks"]] == [5, 20]


def test_seed_changes_the_video(tiny_sana_video, tmp_path):
    args = ["--checkpoint", str(tiny_sana_video["root"]), "--frames", "5", "--steps", "2"]
    a, _ = generate(tmp_path, *args, "--seed", "1")
    b, _ = generate(tmp_path, *args, "--seed", "2")
    assert np.abs(a.astype(int) - b.astype(int)).max() > 20


def test_frames_rule_and_seconds(tiny_sana_video, tmp_path, capsys):
    root = str(tiny_sana_video["root"])
    assert main(["generate", "--prompt", PROMPT, "--checkpoint", root, "--frames", "24", "--out",
                 str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1 + 4k" in err and "got 24" in err
    # seconds -> the nearest valid count: 1.3 s at 16 fps is 20.8 -> 21 frames (1 + 4*5)
    got, report = generate(tmp_path, "--checkpoint", root, "--seconds", "1.3", "--steps", "1")
    assert len(got) == 21 and report["frames"] == 21


# ---------------------------------------------------------------------------------------------
# LongSANA: the reference sampler's loop (NVlabs/Sana diffusion/scheduler/longlive_flow_euler_sampler.py)
# over a dense block-causal forward of diffusers' transformer (every previous chunk clean, at t=0).
# ---------------------------------------------------------------------------------------------
def longlive_reference(pipe, prompt: str, frames: int, seed: int, chunk: int) -> np.ndarray:
    instruction = inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default
    with torch.no_grad():
        text, mask, _, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=300,
                                              complex_human_instruction=instruction)
    latent = (frames - 1) // 4 + 1
    full, rest = divmod(latent, chunk)  # _create_autoregressive_segments: the remainder joins the first chunk
    sizes = [latent] if full == 0 else [chunk + rest] + [chunk] * (full - 1)
    # FlowMatchScheduler(shift=7, sigma_min=0, extra_one_step=True).set_timesteps(1000)
    grid = torch.linspace(1.0, 0.0, 1001)[:-1]
    grid = 7.0 * grid / (1 + 6.0 * grid)
    sigma = lambda t: grid[torch.argmin((grid * 1000 - t).abs())].double()  # noqa: E731
    steps = [1000, 960, 889, 727]
    h, w = tiny.HEIGHT // 8, tiny.WIDTH // 8
    clean = torch.zeros(1, 4, 0, h, w)
    with torch.no_grad():
        for ci, n in enumerate(sizes):
            shape = (1, 4, n, h, w)
            x = torch.randn(shape, generator=noise_generator(seed, ci, 0))
            for si, t in enumerate(steps):
                t_frames = torch.cat([torch.zeros(clean.shape[2]), torch.full((n,), float(t))])[None]
                v = dense_block_causal(pipe.transformer, torch.cat([clean, x], 2), text, mask, t_frames,
                                       sizes[:ci + 1])[:, :, -n:]
                x0 = (x.double() - sigma(t) * v.double()).float()
                if si + 1 < len(steps):
                    s = sigma(steps[si + 1]).float()
                    x = (1 - s) * x0 + s * torch.randn(shape, generator=noise_generator(seed, ci, si + 1))
                else:
                    x = x0
            clean = torch.cat([clean, x], 2)
        vae = pipe.vae
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        video = vae.decode(clean * std + mean, return_dict=False)[0]
    return ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def test_longsana_mode_matches_block_causal_reference(tiny_sana_video, tiny_sana_video_configs, tmp_path):
    frames, seed = 25, 5  # 7 latent frames in chunks of 2: denoised as 3 + 2 + 2, handed out as 1 + 2 + 2 + 2
    got, report = generate(tmp_path, "--config", str(tiny_sana_video_configs["block_causal"]),
                           "--frames", str(frames), "--seed", str(seed))
    expected = longlive_reference(tiny_sana_video["pipe"], PROMPT, frames, seed, chunk=2)
    assert report["mode"] == "block_causal"
    assert [b["frames"] for b in report["blocks"]] == [1, 8, 8, 8]
    assert_same_frames(got, expected)


def test_full_sequence_progress_per_step_and_same_shape_jobs_share_a_forward(tiny_sana_video_configs):
    from sana_serve.engine import GenerationRequest, load_engine
    from sana_serve.engine.rollout import Rollout

    engine = load_engine(tiny_sana_video_configs["full_sequence"], device="cpu")
    requests = [GenerationRequest(PROMPT, None, seed=s, frames=9, num_inference_steps=3) for s in (1, 2)]
    alone = [np.concatenate([b.frames for b in engine.stream(r)]) for r in requests]
    rows, forward = [], engine.transformer.forward_chunk

    def counted(x, *args, **kwargs):  # the real forward, counting the rows of every call
        rows.append(x.shape[0])
        return forward(x, *args, **kwargs)

    engine.transformer.forward_chunk = counted
    rollouts = [Rollout(engine, r) for r in requests]
    frames, progress = [[], []], []
    while not all(r.done for r in rollouts):
        active = [i for i, r in enumerate(rollouts) if not r.done]
        for i, block in zip(active, engine.step([rollouts[i] for i in active])):
            if block is not None:
                frames[i].append(block.frames)
        progress.append(rollouts[0].progress)
    # 3 steps of both jobs in one forward each (cond + uncond rows of both), then decode-only steps
    assert rows == [4, 4, 4]
    # 3 latent frames in blocks of 1 + 2: the progress moves on every denoising step, then per block
    assert progress == pytest.approx([1 / 5, 2 / 5, 4 / 5, 1.0])
    for got, expected in zip(frames, alone):  # batch-invariant (the default): each job's frames as alone
        np.testing.assert_array_equal(np.concatenate(got), expected)


@pytest.mark.parametrize("mode,after", [("full_sequence", 1), ("block_causal", 1), ("block_causal", 2)])
def test_snapshot_between_blocks_resumes_identically(tiny_sana_video_configs, mode, after):
    """A server checkpoints after every block: full-sequence rollouts then hold clean latents not yet
    decoded, LongSANA's merged first chunk too (block 1 is its second half); resuming gives the same frames."""
    from sana_serve.engine import GenerationRequest, load_engine
    from sana_serve.engine.rollout import Rollout

    engine = load_engine(tiny_sana_video_configs[mode], device="cpu")
    request = GenerationRequest(PROMPT, None, seed=4, frames=25, num_inference_steps=2 if mode == "full_sequence" else None)
    whole = [b.frames for b in engine.stream(request)]
    rollout = Rollout(engine, request)
    for _ in range(after):
        rollout.next_block()
    snapshot = rollout.snapshot()
    assert (snapshot["ready"] is not None) == (mode == "full_sequence" or after == 1)
    # the Wan decoder's cache is not in it: restore rebuilds it by decoding the handed-out blocks' latents again
    assert snapshot["decoder_cache"] is None
    assert snapshot["decoded_latents"].shape[2] == sum(engine.plan_blocks(request)[:after])
    resumed = Rollout.restore(engine, request, snapshot)
    rest = []
    while not resumed.done:
        rest.append(resumed.next_block().frames)
    assert len(rest) == len(whole) - after
    for got, expected in zip(rest, whole[after:]):
        assert np.array_equal(got, expected)


def test_config_instruction_overrides_the_default(tiny_sana_video, tiny_sana_video_configs, tmp_path):
    """`text_instruction: []` in a config: prompts encoded without the pipeline's instruction, as
    SanaVideoPipeline(..., complex_human_instruction=[]) does."""
    import yaml

    data = yaml.safe_load(tiny_sana_video_configs["full_sequence"].read_text())
    config = tmp_path / "no-instruction.yaml"
    config.write_text(yaml.safe_dump({**data, "text_instruction": []}))
    got, _ = generate(tmp_path, "--config", str(config), "--frames", "5", "--seed", "2", "--steps", "2",
                      "--guidance", "3")
    pipe = tiny_sana_video["pipe"]
    out = pipe(PROMPT, height=tiny.HEIGHT, width=tiny.WIDTH, frames=5, num_inference_steps=2, guidance_scale=3.0,
               use_resolution_binning=False, complex_human_instruction=[], output_type="np",
               generator=torch.Generator("cpu").manual_seed(2)).frames[0]
    assert_same_frames(got, (out * 255).round().clip(0, 255).astype("uint8"))
    with_default = tiny.diffusers_frames(pipe, PROMPT, 5, 2, 2, 3.0)
    assert np.abs(with_default.astype(int) - got.astype(int)).max() > 2  # the instruction matters


def test_offline_hub_checkpoint_is_one_clear_line(tmp_path, capsys):
    repo = "Efficient-Large-Model/SANA-Video_2B_480p_diffusers"
    assert main(["generate", "--prompt", PROMPT, "--checkpoint", repo, "--frames", "81",
                 "--out", str(tmp_path / "x.mp4")]) == 2  # tests run with HF_HUB_OFFLINE=1 (tests/conftest.py)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"hf download {repo} --local-dir DIR" in err and "--checkpoint DIR" in err

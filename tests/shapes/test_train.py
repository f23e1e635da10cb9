"""Training: short runs really lower the loss, resume continues, gradients reach the state."""
import csv

import numpy as np
import pytest
import torch
import yaml

from sana_serve.shapes import train
from sana_serve.engine.model.transformer import SanaVideoTransformer

TINY_TRANSFORMER = dict(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                        num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
                        caption_channels=384, patch_size=[1, 2, 2])


def tiny_config(tmp_path):
    cfg = {"name": "tiny", "random_init": {"seed": 0, "transformer": TINY_TRANSFORMER,
                                           "vae": {"base_channels": 8, "latent_channels": 8}},
           "sampling": {"chunk_frames": 2, "steps": 2, "window_chunks": 1}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def losses(path):
    with open(path) as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_cooldown_takes_the_learning_rate_to_zero():
    plain = [train.cosine_lr(s, 1000, 1e-3) for s in range(1000)]
    cooled = [train.cosine_lr(s, 1000, 1e-3, cooldown=200) for s in range(1000)]
    assert cooled[:800] == plain[:800]  # untouched before the cooldown
    assert cooled[800] == plain[800] and cooled[900] == 0.5 * plain[900]
    assert all(b < a for a, b in zip(cooled[800:], cooled[801:])) and cooled[-1] < 1e-6
    assert plain[-1] > 9e-5  # the cosine alone stops at base / 10


def test_vae_training_lowers_loss_and_resumes(tmp_path):
    config = tiny_config(tmp_path)
    work = tmp_path / "work"
    train.train_vae(work, config, steps=40, batch=2, frames=8, lr=3e-3, save_every=20)
    log = losses(work / "vae_loss.csv")
    assert len(log) == 4
    assert log[-1] < 0.85 * log[0], log  # interval means: 1.34 -> 0.99 measured
    # resuming from the checkpoint continues at step 40 instead of starting over
    train.train_vae(work, config, steps=50, batch=2, frames=8, lr=3e-3, save_every=20)
    with open(work / "vae_loss.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [10, 20, 30, 40, 50]


def test_latent_noise_scales_with_each_channels_spread_and_is_off_by_default():
    torch.manual_seed(0)
    mean = torch.randn(4, 3, 2, 8, 8) * torch.tensor([0.1, 1.0, 10.0]).view(1, 3, 1, 1, 1)
    logvar = torch.full_like(mean, -40.0)  # a (nearly) exact posterior: what is left is the added noise
    torch.manual_seed(1)
    plain = train.noisy_latents(mean, logvar)
    torch.manual_seed(1)
    assert torch.equal(train.noisy_latents(mean, logvar, 0.0), plain)  # off: the same draws as before
    torch.manual_seed(1)
    added = train.noisy_latents(mean, logvar, 0.2) - mean
    spread = mean.std(dim=(0, 2, 3, 4))
    ratio = added.std(dim=(0, 2, 3, 4)) / spread
    assert torch.allclose(ratio, torch.full((3,), 0.2), rtol=0.1), ratio  # 0.2 of every channel, 100x apart
    # scaling the code up scales the noise with it: the encoder cannot outgrow it
    torch.manual_seed(1)
    assert torch.allclose(train.noisy_latents(10 * mean, logvar, 0.2) - 10 * mean, 10 * added, rtol=1e-4, atol=1e-5)


def test_vae_training_with_latent_noise_lowers_loss(tmp_path):
    config = tiny_config(tmp_path)
    work = tmp_path / "work"
    train.train_vae(work, config, steps=40, batch=2, frames=8, lr=3e-3, save_every=20, latent_noise=0.2)
    log = losses(work / "vae_loss.csv")
    assert log[-1] < 0.85 * log[0], log


def test_a_decoder_only_fine_tune_keeps_the_code_and_sharpens_the_decoder(tmp_path):
    """--freeze-encoder resumes a trained VAE: the encoder (so the latent bank and its stats)
    stays bit-identical, the decoder's reconstructions improve, and resuming the fine-tune as a
    full run stops with a clear message (training the encoder would invalidate the latent bank)."""
    config = tiny_config(tmp_path)
    work = tmp_path / "work"
    train.train_vae(work, config, steps=20, batch=2, frames=8, lr=3e-3, save_every=20, latent_noise=0.5)
    before = torch.load(work / "vae.pt", weights_only=False)
    before["latent_stats"] = {"mean": [0.5] * 8, "std": [2.0] * 8}  # as `train latents` leaves it
    torch.save(before, work / "vae.pt")
    train.train_vae(work, config, steps=60, batch=2, frames=8, lr=3e-3, save_every=20, freeze_encoder=True)
    after = torch.load(work / "vae.pt", weights_only=False)
    encoder = [k for k in before["model"] if k.startswith("encoder.")]
    decoder = [k for k in before["model"] if k.startswith("decoder.")]
    assert encoder and decoder
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in encoder)
    assert any(not torch.equal(before["model"][k], after["model"][k]) for k in decoder)
    assert after["latent_stats"] == before["latent_stats"]
    log = losses(work / "vae_loss.csv")
    assert len(log) == 6
    assert np.mean(log[-2:]) < np.mean(log[:2]), log  # noise-free decoding of a fixed code: lower
    with pytest.raises(ValueError, match="decoder-only fine-tune: resume it with --freeze-encoder"):
        train.train_vae(work, config, steps=80, batch=2, frames=8, save_every=20)


def test_a_resume_after_a_kill_between_checkpoints_logs_each_step_once(tmp_path):
    """Killed after the log reached step 30 but the last checkpoint was at 20: the resumed run
    trains 21-30 again and the log must not carry those steps twice; killed before any save,
    the run starts over and so does its log."""
    config = tiny_config(tmp_path)
    work = tmp_path / "work"
    train.train_vae(work, config, steps=20, batch=2, frames=8, save_every=20)
    checkpointed = (work / "vae.pt").read_bytes()
    train.train_vae(work, config, steps=30, batch=2, frames=8, save_every=20)
    (work / "vae.pt").write_bytes(checkpointed)  # as if killed just before the step-30 save
    train.train_vae(work, config, steps=40, batch=2, frames=8, save_every=20)
    with open(work / "vae_loss.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [10, 20, 30, 40]
    (work / "vae.pt").unlink()  # as if killed before the first save: the run starts over
    train.train_vae(work, config, steps=10, batch=2, frames=8, save_every=20)
    with open(work / "vae_loss.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [10]


def test_teacher_forced_loss_decreases_and_trains_what_goes_into_the_state():
    torch.manual_seed(0)
    model = SanaVideoTransformer(**TINY_TRANSFORMER)
    recipe = train.FlowRecipe(chunk_frames=2, window_chunks=1, flow_shift=3.0)
    latents = torch.randn(4, 8, 6, 8, 8)
    text = torch.randn(4, 5, 384)

    # gradient reaches the first chunk's clean pass only through the state
    x = latents.clone().requires_grad_(True)
    ctx = model.encode_text(text)
    loss = train.teacher_forced_loss(model, x, ctx, recipe, torch.Generator().manual_seed(0))
    loss.backward()
    assert x.grad[:, :, :2].abs().sum() > 0

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for step in range(40):
        ctx = model.encode_text(text)
        loss = train.teacher_forced_loss(model, latents, ctx, recipe, torch.Generator().manual_seed(step % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert sum(history[-4:]) < 0.8 * sum(history[:4]), history


def test_a_lone_first_chunk_trains_from_the_empty_state():
    """--first-chunk-batch passes clips of one (possibly short) chunk: no context pass, no empty
    second chunk, and the loss is the flow loss of that chunk alone."""
    torch.manual_seed(0)
    model = SanaVideoTransformer(**TINY_TRANSFORMER)
    recipe = train.FlowRecipe(chunk_frames=2, window_chunks=1, flow_shift=3.0)
    ctx = model.encode_text(torch.randn(3, 5, 384))
    for frames in (2, 1):
        x = torch.randn(3, 8, frames, 8, 8)
        loss = train.teacher_forced_loss(model, x, ctx, recipe, torch.Generator().manual_seed(1))
        gen = torch.Generator().manual_seed(1)  # the same draws, by hand
        sigma = train.shift_sigmas(torch.sigmoid(torch.randn(3, generator=gen)), 3.0).view(3, 1, 1, 1, 1)
        eps = torch.randn(x.shape, generator=gen)
        pred = model.forward_chunk((1 - sigma) * x + sigma * eps, 1000 * sigma.flatten(), ctx, model.new_state(3, 1))
        assert torch.allclose(loss, torch.nn.functional.mse_loss(pred, eps - x), atol=1e-6), frames


def test_own_context_feeds_the_state_the_models_one_step_estimate_of_the_chunk():
    """--own-context: the context pass that builds the state gets x_s - s * v(x_s, s), the
    model's own estimate of the clean chunk from a noised copy (a rollout's blocks are such
    estimates), computed without gradient; with the share at 0 it gets the real chunk."""
    torch.manual_seed(0)
    model = SanaVideoTransformer(**TINY_TRANSFORMER)
    latents = torch.randn(3, 8, 4, 8, 8)
    ctx = model.encode_text(torch.randn(3, 5, 384))
    calls = []
    forward = model.forward_chunk

    def recording(latents, timestep, text, state, update_state=False):
        out = forward(latents, timestep, text, state, update_state=update_state)
        calls.append((latents.detach().clone(), timestep.detach().clone(), out.detach().clone(),
                      update_state, torch.is_grad_enabled()))
        return out

    model.forward_chunk = recording
    for share in (0.0, 1.0):
        calls.clear()
        recipe = train.FlowRecipe(chunk_frames=2, window_chunks=1, flow_shift=3.0, context_noise=0.0,
                                  own_context=share)
        train.teacher_forced_loss(model, latents, ctx, recipe, torch.Generator().manual_seed(0))
        (context, *_), = [c for c in calls if c[3]]
        if share == 0:
            assert len(calls) == 3 and torch.equal(context, latents[:, :, :2])
            continue
        assert len(calls) == 4
        noisy, timestep, velocity, _, grad = calls[1]  # after the first chunk's loss pass
        assert not grad
        s = (timestep / 1000).view(3, 1, 1, 1, 1)
        assert ((s >= 0.1) & (s <= 0.6)).all()
        assert torch.allclose(context, noisy - s * velocity, atol=1e-6)
        assert (context - latents[:, :, :2]).abs().mean() > 0.05  # a random model's estimate is off


def test_all_phases_resume_and_export_a_checkpoint_the_engine_runs(tmp_path):
    """vae -> latent bank -> transformer (stopped and resumed) -> export -> load_engine -> a video."""
    from sana_serve.engine import GenerationRequest, load_engine

    config = tiny_config(tmp_path)
    work = tmp_path / "work"
    train.train_vae(work, config, steps=4, batch=2, frames=8, crop=32, save_every=2)
    train.build_latent_bank(work, config, clips=12)
    bank = torch.load(work / "latents.pt", weights_only=False)
    assert bank["latents"].shape == (12, 8, 4, 8, 8)  # 2 chunks of 2 latent frames, 64x64 / 8
    stats = torch.load(work / "vae.pt", weights_only=False)["latent_stats"]
    assert len(stats["mean"]) == len(stats["std"]) == 8

    train.train_transformer(work, config, steps=30, batch=4, lr=2e-3, save_every=10)
    # resumes at 30, now also training first chunks alone (--first-chunk-batch)
    # and feeding the state the model's own estimate of half the context chunks (--own-context)
    train.train_transformer(work, config, steps=40, batch=4, lr=2e-3, save_every=10, first_chunk_batch=2,
                            own_context=0.5)
    # and ends with a cooldown: the lr falls from the schedule's floor to zero over the last 10 steps
    train.train_transformer(work, config, steps=50, batch=4, lr=2e-3, save_every=10, cooldown=10)
    with open(work / "transformer_loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(5, 55, 5))
    lrs = [float(r["lr"]) for r in rows]  # interval means; still warming up (100 steps) without it
    assert lrs[-1] < lrs[-2] < lrs[-3] and lrs[-1] < 0.5 * lrs[-3], lrs
    log = losses(work / "transformer_loss.csv")
    assert min(log[-3:]) < log[0], log  # noisy at batch 4, but the trend is down
    ck = torch.load(work / "transformer.pt", weights_only=False)
    assert ck["step"] == 50 and set(ck["ema"]) == set(ck["model"])
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["model"])

    out = tmp_path / "model"
    train.export(work, config, out)
    assert (out / "model_index.json").is_file() and (out / "loss.png").stat().st_size > 0
    assert (out / "samples.png").stat().st_size > 0
    engine = load_engine(config, checkpoint=out, device="cpu")
    for k, v in engine.transformer.state_dict().items():  # the export ships the EMA weights
        assert torch.equal(v, ck["ema"][k]), k
    blocks = list(engine.stream(GenerationRequest("a red circle moving left on a black background", seconds=1)))
    frames = sum(b.frame_count for b in blocks)
    assert frames == 16 and blocks[0].frames.shape[1:] == (64, 64, 3)

"""Samplers on a problem with a known answer: Gaussian data, whose exact flow velocity is closed-form."""
import pytest
import torch

from sana_serve.engine.sampler import guided, make_sigmas, sample_chunk

MU, STD = 1.5, 0.5


def exact_velocity(x, t):
    """For x0 ~ N(MU, STD²) and x_σ = (1-σ)x0 + σε: v = (x - E[x0 | x_σ]) / σ."""
    s = (t / 1000.0).view(-1, *([1] * (x.ndim - 1))).double()
    a = 1 - s
    x0_hat = MU + a * STD**2 / (a**2 * STD**2 + s**2) * (x - a * MU)
    return ((x - x0_hat) / s).to(x.dtype)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_ode_samplers_reach_the_data_distribution(sampler):
    noise = torch.randn(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = sample_chunk(exact_velocity, noise, make_sigmas(100, 3.0), sampler)
    assert abs(x.mean().item() - MU) < 0.02 and abs(x.std().item() - STD) < 0.02


def test_second_order_solver_is_more_accurate_than_euler_at_equal_steps():
    noise = torch.randn(4096, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    truth = sample_chunk(exact_velocity, noise, make_sigmas(4000, 3.0), "euler")
    err = {s: (sample_chunk(exact_velocity, noise, make_sigmas(24, 3.0), s) - truth).abs().max().item()
           for s in ("euler", "dpmpp_2m")}
    assert err["dpmpp_2m"] < 0.3 * err["euler"], err


def test_renoise_sampler_uses_fresh_noise_and_ends_clean():
    calls = []

    def renoise(i):
        calls.append(i)
        return torch.zeros(8, dtype=torch.float64)

    noise = torch.randn(8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sig = make_sigmas(4, 1.0, timesteps=[1000, 960, 889, 727])
    x = sample_chunk(exact_velocity, noise, sig, "renoise", renoise)
    assert calls == [0, 1, 2]  # no fresh noise after the last step
    assert torch.isfinite(x).all()


def test_shift_and_explicit_timesteps():
    sig = make_sigmas(4, 3.0)
    assert sig[0] == 1 and sig[-1] == 0 and torch.all(sig[1:] < sig[:-1])
    assert sig[2] > 0.5  # shifted toward high noise
    assert make_sigmas(1, 1.0, timesteps=[1000, 500]).tolist() == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="decreasing"):
        make_sigmas(1, 1.0, timesteps=[500, 900])
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_chunk(exact_velocity, torch.zeros(1), sig, "ddim")


def test_guidance_batches_cond_and_uncond_and_skips_uncond_at_one():
    seen = []

    def velocity(x, t):
        seen.append(x.shape[0])
        # rows: cond returns +1, uncond returns -1 (cond rows come first)
        half = x.shape[0] // 2 if x.shape[0] > 1 else 1
        return torch.cat([torch.ones(half), -torch.ones(x.shape[0] - half)]) if x.shape[0] > 1 else torch.ones(1)

    assert guided(velocity, 1.0)(torch.zeros(1), torch.zeros(1)).item() == 1.0
    assert seen == [1]
    out = guided(velocity, 4.0)(torch.zeros(1), torch.zeros(1))
    assert seen == [1, 2]  # one batched forward for cond + uncond
    assert out.item() == -1 + 4.0 * (1 - -1)

"""Flow-matching samplers for one chunk of latent frames.

Convention (SANA / rectified flow): x_σ = (1-σ)·x0 + σ·ε, the model predicts the velocity
v = ε - x0, and its timestep input is 1000·σ. A flow shift s warps the schedule towards high noise:
σ' = s·σ / (1 + (s-1)·σ), which matters more the more tokens a sample has.

Samplers:
- "euler": first-order ODE step, x ← x + (σ_next - σ)·v.
- "dpmpp_2m": DPM-Solver++(2M), second order from one model call per step (reuses the
  previous step's x0 prediction), first order on the first and last step.
- "renoise": the few-step LongSANA/consistency recipe: predict x0, then re-noise it to the next
  σ with fresh seeded noise. Meant for models trained (or distilled) for few steps.

Classifier-free guidance: cond and uncond rows are batched into one forward; guidance 1 skips
the uncond rows entirely.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

SAMPLERS = ("euler", "dpmpp_2m", "renoise")


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def make_sigmas(steps: int, shift: float, timesteps: list[float] | None = None) -> torch.Tensor:
    """steps+1 noise levels from 1 to 0 (fp64). `timesteps` (0..1000, descending) overrides the grid."""
    if timesteps is not None:
        sig = torch.tensor([t / 1000.0 for t in timesteps] + [0.0], dtype=torch.float64)
        if not torch.all(sig[1:] < sig[:-1]):
            raise ValueError(f"timesteps must be strictly decreasing, got {timesteps}")
        return sig
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


def sample_chunk(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "euler",
    renoise: Callable[[int], torch.Tensor] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Integrate from pure noise (sigmas[0] is normally 1) to a clean x0.

    velocity(x, t) returns the (guided) velocity for x at model timestep t = 1000·σ (shape (B,)).
    renoise(i) returns fresh noise for step i (only the "renoise" sampler uses it).
    on_step(i) is called before each model call: cancellation and progress hook.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    x = noise  # at σ=1 the sample is pure noise
    b = x.shape[0]
    prev_x0 = None
    steps = len(sigmas) - 1
    for i in range(steps):
        if on_step is not None:
            on_step(i)
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        t = torch.full((b,), 1000.0 * s, dtype=torch.float32, device=x.device)
        v = velocity(x, t)
        x0 = x - s * v
        if sampler == "euler":
            x = x + (s_next - s) * v
        elif sampler == "renoise":
            x = x0 if s_next == 0 else (1 - s_next) * x0 + s_next * renoise(i)
        else:  # dpmpp_2m in data prediction, α = 1-σ
            if s_next == 0:
                x = x0
            elif prev_x0 is None or i == steps - 1:
                x = (s_next / s) * x + (1 - s_next) * (1 - math.exp(-_h(s, s_next))) * x0
            else:
                h = _h(s, s_next)
                r = _h(sigmas[i - 1].item(), s) / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
                x = (s_next / s) * x + (1 - s_next) * (1 - math.exp(-h)) * d
        prev_x0 = x0
    return x


def _h(s: float, s_next: float) -> float:
    """Step size in log-SNR λ = log(α/σ)."""
    lam = lambda sig: math.log((1 - sig) / sig) if sig < 1 else -math.inf  # noqa: E731
    a, b = lam(s), lam(s_next)
    return b - a if a != -math.inf else math.inf


def guided(velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], guidance_scale: float):
    """Wrap a batched cond(+uncond) velocity into the CFG velocity of the cond rows.

    With guidance != 1, velocity_fn receives [x; x] (cond rows first) and returns [v_c; v_u].
    """
    if guidance_scale == 1.0:
        return velocity_fn

    def fn(x, t):
        v = velocity_fn(torch.cat([x, x]), torch.cat([t, t]))
        v_c, v_u = v.chunk(2)
        return v_u + guidance_scale * (v_c - v_u)

    return fn

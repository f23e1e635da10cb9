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


def snapped_sigmas(timesteps: list[float], shift: float) -> tuple[torch.Tensor, list[float]]:
    """LongSANA's few-step schedule as its reference sampler runs it (NVlabs/Sana
    longlive_flow_euler_sampler.py): the model is called at the listed timesteps (1000, 960, 889,
    727), while predicting x0 and re-noising use the noise level of the nearest point of the 1000-step
    shifted training grid (`FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)`, float32).
    Returns (sigmas + [0] in fp64, model timesteps)."""
    grid = torch.linspace(1.0, 0.0, 1001)[:-1]  # float32, as the reference builds it
    grid = shift * grid / (1 + (shift - 1) * grid)
    grid_t = grid * 1000
    snapped = [grid[torch.argmin((grid_t - float(t)).abs())].item() for t in timesteps]
    sig = torch.tensor(snapped + [0.0], dtype=torch.float64)
    if not torch.all(sig[1:] < sig[:-1]):
        raise ValueError(f"timesteps must be strictly decreasing, got {timesteps}")
    return sig, [float(t) for t in timesteps]


class ChunkSampler:
    """One chunk's integration from noise to x0, one model call at a time.

    `timestep()` is the model input for the current step and `advance(v)` takes the (guided)
    velocity for `x`; the scheduler calls these so that many requests can share one batched
    forward per step. `sample_chunk` is the plain loop over it.
    """

    def __init__(self, noise: torch.Tensor, sigmas: torch.Tensor, sampler: str = "euler",
                 renoise: Callable[[int], torch.Tensor] | None = None, model_timesteps: list[float] | None = None):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        self.x = noise  # at σ=1 the sample is pure noise
        self.sigmas, self.sampler, self.renoise = sigmas, sampler, renoise
        self.model_timesteps = model_timesteps  # the model's t per step, when it is not 1000·σ (snapped_sigmas)
        self.step = 0
        self.steps = len(sigmas) - 1
        self._prev_x0: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    def timestep(self) -> torch.Tensor:
        """Model timestep 1000·σ for every row of x, shape (B,)."""
        t = 1000.0 * self.sigmas[self.step].item() if self.model_timesteps is None else self.model_timesteps[self.step]
        return torch.full((self.x.shape[0],), t, dtype=torch.float32, device=self.x.device)

    def advance(self, v: torch.Tensor) -> None:
        i, x, sigmas = self.step, self.x, self.sigmas
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        x0 = x - s * v
        if self.sampler == "euler":
            x = x + (s_next - s) * v
        elif self.sampler == "renoise":
            x = x0 if s_next == 0 else (1 - s_next) * x0 + s_next * self.renoise(i)
        else:  # dpmpp_2m in data prediction, α = 1-σ
            if s_next == 0:
                x = x0
            elif self._prev_x0 is None or i == self.steps - 1:
                x = (s_next / s) * x + (1 - s_next) * (1 - math.exp(-_h(s, s_next))) * x0
            else:
                h = _h(s, s_next)
                r = _h(sigmas[i - 1].item(), s) / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * self._prev_x0
                x = (s_next / s) * x + (1 - s_next) * (1 - math.exp(-h)) * d
        self._prev_x0 = x0
        self.x = x
        self.step += 1


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
    run = ChunkSampler(noise, sigmas, sampler, renoise)
    while not run.done:
        if on_step is not None:
            on_step(run.step)
        run.advance(velocity(run.x, run.timestep()))
    return run.x


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
        return combine_guidance(velocity_fn(torch.cat([x, x]), torch.cat([t, t])), guidance_scale)

    return fn


def combine_guidance(v: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """[v_cond; v_uncond] -> the CFG velocity v_u + g·(v_c - v_u); identity at guidance 1."""
    if guidance_scale == 1.0:
        return v
    v_c, v_u = v.chunk(2)
    return v_u + guidance_scale * (v_c - v_u)

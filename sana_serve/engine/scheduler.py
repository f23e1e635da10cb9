"""The schedulers of diffusers-format checkpoints, read from `scheduler/scheduler_config.json`.

Two classes, each matching its diffusers counterpart timestep for timestep and update for update
(same float32/float64 arithmetic in the same order, so the samples are bit-identical on CPU):

- `DPMSolverMultistep` = `DPMSolverMultistepScheduler` with `use_flow_sigmas` (the released
  SANA-Video 2B/480p: DPM-Solver++(2M), `prediction_type="flow_prediction"`, flow shift 8,
  `final_sigmas_type="zero"`, `lower_order_final`). Model timesteps are the int64 values diffusers
  hands the transformer (`int(1000 * sigma)`), sigmas stay float32.
- `FlowMatchEuler` = `FlowMatchEulerDiscreteScheduler` (first-order Euler; `stochastic_sampling`
  re-noises the x0 prediction with fresh noise instead, as LongSANA-style few-step samplers do).

Both give a `SchedulerRun` per sample with the `ChunkSampler` shape (`x`, `step`, `steps`, `done`,
`timestep()`, `advance(model_output)`), so a loop or a batching scheduler can drive either:

    scheduler = load_scheduler(checkpoint_dir)
    run = scheduler.start(noise, num_inference_steps=50)
    while not run.done:
        run.advance(guided_velocity(run.x, run.timestep()))
    latents = run.x

Options these classes do not implement (Karras/exponential/beta sigmas, SDE or third-order solvers,
thresholding, dynamic shifting, ...) are refused with a ValueError that names them, never ignored.
The config file contains the literal `-Infinity` (`lambda_min_clipped`); Python's json reads it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

SCHEDULER_CONFIG = "scheduler_config.json"


def read_scheduler_config(path: str | os.PathLike) -> dict:
    """A scheduler_config.json (or the folder holding it) -> dict. Accepts JSON's non-standard
    `Infinity` / `-Infinity` / `NaN`, which diffusers writes for `lambda_min_clipped=-inf`."""
    path = Path(path)
    if path.is_dir():
        path = path / SCHEDULER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no scheduler config at {path}")
    try:
        return json.loads(path.read_text())  # json.loads maps -Infinity to float("-inf")
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _check_options(name: str, config: dict, defaults: dict, required: dict) -> dict:
    """Merge `config` over `defaults`; every key in `required` must hold one of its allowed values.

    Unknown keys: ignored when falsy (options added by newer diffusers default to off), refused when
    set, because an option we do not implement must not be silently dropped."""
    given = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(k for k, v in given.items() if k not in defaults and v)
    if unknown:
        raise ValueError(f"{name}: unsupported options {', '.join(f'{k}={given[k]!r}' for k in unknown)}")
    cfg = {**defaults, **{k: v for k, v in given.items() if k in defaults}}
    for key, allowed in required.items():
        if cfg[key] not in allowed:
            raise ValueError(f"{name}: {key}={cfg[key]!r} is not supported (supported: "
                             f"{', '.join(repr(a) for a in allowed)})")
    return cfg


class SchedulerRun:
    """One sample's integration, one model call at a time: `timestep()` is the model's input for the
    current step (float32, shape (B,)), `advance(model_output)` applies the update to `x`."""

    def __init__(self, sample: torch.Tensor, timesteps: torch.Tensor, sigmas: torch.Tensor):
        self.x = sample
        self.timesteps, self.sigmas = timesteps, sigmas  # (steps,), (steps + 1,) float32 on CPU
        self.step = 0
        self.steps = len(timesteps)

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    def timestep(self) -> torch.Tensor:
        """The model timestep of the current step for every row of x: what diffusers' pipelines pass
        (`t.expand(B)`), as float32 (int64 values are exact in float32)."""
        t = self.timesteps[self.step].to(torch.float32)
        return t.expand(self.x.shape[0]).to(self.x.device)

    def advance(self, model_output: torch.Tensor) -> None:
        if self.done:
            raise RuntimeError("the schedule is finished")
        self.x = self._update(model_output, self.x)
        self.step += 1

    def _update(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# DPM-Solver++ (multistep) with flow sigmas
# --------------------------------------------------------------------------------------

DPM_DEFAULTS = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "solver_order": 2, "prediction_type": "epsilon", "thresholding": False,
    "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": False,
    "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
    "flow_shift": 1.0, "final_sigmas_type": "zero", "lambda_min_clipped": -math.inf, "variance_type": None,
    "timestep_spacing": "linspace", "steps_offset": 0, "rescale_betas_zero_snr": False,
    "use_dynamic_shifting": False, "time_shift_type": "exponential",
}


class DPMSolverMultistep:
    """diffusers' DPMSolverMultistepScheduler, flow-sigma variant (the keywords of its config.json).

    Supported: `algorithm_type="dpmsolver++"`, `solver_order` 1 or 2, `solver_type` midpoint or heun,
    `prediction_type="flow_prediction"`, `use_flow_sigmas=True`, `final_sigmas_type="zero"`,
    `lower_order_final`, `euler_at_final`, any `flow_shift`. The beta-schedule keys are accepted and
    unused (flow sigmas do not depend on them).
    """

    class_name = "DPMSolverMultistepScheduler"

    def __init__(self, **config):
        self.config = _check_options(self.class_name, config, DPM_DEFAULTS, {
            "algorithm_type": ("dpmsolver++",), "solver_order": (1, 2), "solver_type": ("midpoint", "heun"),
            "prediction_type": ("flow_prediction",), "use_flow_sigmas": (True,), "final_sigmas_type": ("zero",),
            "thresholding": (False,), "use_karras_sigmas": (False,), "use_exponential_sigmas": (False,),
            "use_beta_sigmas": (False,), "use_lu_lambdas": (False,), "use_dynamic_shifting": (False,),
            "variance_type": (None,),
        })
        self.flow_shift = float(self.config["flow_shift"])

    def schedule(self, num_inference_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps int64 (n,), sigmas float32 (n + 1,), ending at 0): diffusers' `set_timesteps`."""
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        n_train, shift = self.config["num_train_timesteps"], self.flow_shift
        alphas = np.linspace(1, 1 / n_train, num_inference_steps + 1)
        sigmas = 1.0 - alphas
        sigmas = np.flip(shift * sigmas / (1 + (shift - 1) * sigmas))[:-1].copy()
        timesteps = (sigmas * n_train).copy()
        sigmas = np.concatenate([sigmas, [0]]).astype(np.float32)
        return torch.from_numpy(timesteps).to(torch.int64), torch.from_numpy(sigmas)

    def start(self, sample: torch.Tensor, num_inference_steps: int) -> DPMSolverRun:
        """A run from `sample` (the initial noise; flow sigmas need no scaling of it)."""
        return DPMSolverRun(self.config, sample, *self.schedule(num_inference_steps))


class DPMSolverRun(SchedulerRun):
    def __init__(self, config: dict, sample, timesteps, sigmas):
        super().__init__(sample, timesteps, sigmas)
        self.order, self.solver_type = config["solver_order"], config["solver_type"]
        n = self.steps
        # The step that goes first order: the last one when the final sigma is 0 (always, here).
        self._first_order_last = (config["euler_at_final"] or (config["lower_order_final"] and n < 15)
                                  or config["final_sigmas_type"] == "zero")
        self._previous_x0: torch.Tensor | None = None

    def _lambda(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha = 1 - sigma  # flow sigmas: x_sigma = (1 - sigma) x0 + sigma noise
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def _update(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i, sig = self.step, self.sigmas
        x0 = sample - sig[i] * model_output  # flow prediction -> data prediction
        previous, self._previous_x0 = self._previous_x0, x0
        sample = sample.to(torch.float32)
        alpha_t, sigma_t, lambda_t = self._lambda(sig[i + 1])
        _, sigma_s0, lambda_s0 = self._lambda(sig[i])
        h = lambda_t - lambda_s0
        first_order = self.order == 1 or previous is None or (i == self.steps - 1 and self._first_order_last)
        if first_order:
            x = (sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * x0
        else:
            _, _, lambda_s1 = self._lambda(sig[i - 1])
            r0 = (lambda_s0 - lambda_s1) / h
            d0, d1 = x0, (1.0 / r0) * (x0 - previous)
            if self.solver_type == "midpoint":
                x = ((sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * d0
                     - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1)
            else:  # heun
                x = ((sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * d0
                     + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1)
        return x.to(model_output.dtype)


# --------------------------------------------------------------------------------------
# FlowMatch Euler
# --------------------------------------------------------------------------------------

EULER_DEFAULTS = {
    "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False, "base_shift": 0.5,
    "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096, "invert_sigmas": False,
    "shift_terminal": None, "use_karras_sigmas": False, "use_exponential_sigmas": False,
    "use_beta_sigmas": False, "time_shift_type": "exponential", "stochastic_sampling": False,
}


class FlowMatchEuler:
    """diffusers' FlowMatchEulerDiscreteScheduler (the keywords of its config.json): static `shift`,
    optional `shift_terminal` and `stochastic_sampling`; no dynamic shifting, no Karras/exp/beta sigmas."""

    class_name = "FlowMatchEulerDiscreteScheduler"

    def __init__(self, **config):
        self.config = _check_options(self.class_name, config, EULER_DEFAULTS, {
            "use_dynamic_shifting": (False,), "invert_sigmas": (False,), "use_karras_sigmas": (False,),
            "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,),
        })
        n, shift = self.config["num_train_timesteps"], float(self.config["shift"])
        self.shift = shift
        # The training grid, shifted once (diffusers' __init__); set_timesteps spans its ends.
        timesteps = torch.from_numpy(np.linspace(1, n, n, dtype=np.float32)[::-1].copy()).to(torch.float32)
        sigmas = timesteps / n
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.sigma_min, self.sigma_max = sigmas[-1].item(), sigmas[0].item()

    def schedule(self, num_inference_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps float32 (n,), sigmas float32 (n + 1,), ending at 0): diffusers' `set_timesteps`."""
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        n_train, shift = self.config["num_train_timesteps"], self.shift
        timesteps = np.linspace(self.sigma_max * n_train, self.sigma_min * n_train, num_inference_steps)
        sigmas = timesteps / n_train
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)  # diffusers shifts again here, on purpose or not
        if self.config["shift_terminal"]:
            one_minus_z = 1 - sigmas
            sigmas = 1 - (one_minus_z / (one_minus_z[-1] / (1 - self.config["shift_terminal"])))
        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32)
        timesteps = sigmas * n_train
        return timesteps, torch.cat([sigmas, torch.zeros(1)])

    def start(self, sample: torch.Tensor, num_inference_steps: int,
              generator: torch.Generator | None = None) -> EulerRun:
        """A run from `sample`. `generator` draws the fresh noise of `stochastic_sampling` (as diffusers'
        `step(..., generator=)`: a CPU generator draws on the CPU, then moves to the sample's device)."""
        return EulerRun(self.config["stochastic_sampling"], generator, sample, *self.schedule(num_inference_steps))


class EulerRun(SchedulerRun):
    def __init__(self, stochastic: bool, generator, sample, timesteps, sigmas):
        super().__init__(sample, timesteps, sigmas)
        self.stochastic, self.generator = stochastic, generator

    def _update(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        sample = sample.to(torch.float32)
        sigma, sigma_next = self.sigmas[self.step], self.sigmas[self.step + 1]
        if self.stochastic:
            x0 = sample - sigma * model_output
            device = sample.device
            draw_on = self.generator.device if self.generator is not None and self.generator.device.type == "cpu" else device
            noise = torch.randn(sample.shape, generator=self.generator, device=draw_on, dtype=sample.dtype).to(device)
            x = (1.0 - sigma_next) * x0 + sigma_next * noise
        else:
            x = sample + (sigma_next - sigma) * model_output
        return x.to(model_output.dtype)


# --------------------------------------------------------------------------------------

SCHEDULER_CLASSES = {cls.class_name: cls for cls in (DPMSolverMultistep, FlowMatchEuler)}


def scheduler_from_config(config: dict) -> DPMSolverMultistep | FlowMatchEuler:
    """Build the scheduler a config dict names in `_class_name`."""
    name = config.get("_class_name")
    if name not in SCHEDULER_CLASSES:
        raise ValueError(f"unknown scheduler class {name!r}; supported: {', '.join(SCHEDULER_CLASSES)}")
    return SCHEDULER_CLASSES[name](**config)


def load_scheduler(checkpoint_dir: str | os.PathLike) -> DPMSolverMultistep | FlowMatchEuler:
    """The scheduler of a diffusers checkpoint: `checkpoint_dir/scheduler/scheduler_config.json`
    (a `scheduler/` folder or the config file itself are accepted too)."""
    path = Path(checkpoint_dir)
    if path.is_dir() and (path / "scheduler").is_dir():
        path = path / "scheduler"
    config = read_scheduler_config(path)
    try:
        return scheduler_from_config(config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None

"""Our checkpoint schedulers against diffusers': timesteps, sigmas and every intermediate sample equal
(bit for bit on CPU) for several step counts and shifts; the real config (with `-Infinity`) parses."""
import json

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from sana_serve.engine.scheduler import DPMSolverMultistep, FlowMatchEuler, load_scheduler, read_scheduler_config

# scheduler/scheduler_config.json of Efficient-Large-Model/SANA-Video_2B_480p_diffusers, as diffusers
# writes it: note the bare -Infinity (not valid strict JSON).
RELEASED_CONFIG = """{
  "_class_name": "DPMSolverMultistepScheduler",
  "_diffusers_version": "0.36.0.dev0",
  "algorithm_type": "dpmsolver++",
  "beta_end": 0.02,
  "beta_schedule": "linear",
  "beta_start": 0.0001,
  "dynamic_thresholding_ratio": 0.995,
  "euler_at_final": false,
  "final_sigmas_type": "zero",
  "flow_shift": 8.0,
  "lambda_min_clipped": -Infinity,
  "lower_order_final": true,
  "num_train_timesteps": 1000,
  "prediction_type": "flow_prediction",
  "rescale_betas_zero_snr": false,
  "sample_max_value": 1.0,
  "solver_order": 2,
  "solver_type": "midpoint",
  "steps_offset": 0,
  "thresholding": false,
  "timestep_spacing": "linspace",
  "trained_betas": null,
  "use_beta_sigmas": false,
  "use_dynamic_shifting": false,
  "use_exponential_sigmas": false,
  "use_flow_sigmas": true,
  "use_karras_sigmas": false,
  "use_lu_lambdas": false,
  "variance_type": null
}
"""


def fake_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic, non-linear stand-in for the transformer's velocity (depends on x and t)."""
    return torch.tanh(x * 0.7 + t.view(-1, 1, 1, 1, 1) / 500.0) - 0.3 * x


def noise(seed=0):
    return torch.randn(2, 4, 3, 5, 6, generator=torch.Generator().manual_seed(seed))


def run_ours(scheduler, steps, **start):
    run = scheduler.start(noise(), steps, **start)
    samples = []
    while not run.done:
        run.advance(fake_model(run.x, run.timestep()))
        samples.append(run.x)
    return run, samples


def run_diffusers(scheduler, steps, **step_kwargs):
    scheduler.set_timesteps(steps)
    x, samples = noise(), []
    for t in scheduler.timesteps:
        v = fake_model(x, t.expand(x.shape[0]).to(torch.float32))
        x = scheduler.step(v, t, x, return_dict=False, **step_kwargs)[0]
        samples.append(x)
    return samples


def test_released_config_with_minus_infinity_parses(tmp_path):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(RELEASED_CONFIG)
    config = read_scheduler_config(tmp_path / "scheduler")
    assert config["lambda_min_clipped"] == float("-inf")
    scheduler = load_scheduler(tmp_path)
    assert isinstance(scheduler, DPMSolverMultistep) and scheduler.flow_shift == 8.0
    reference = DPMSolverMultistepScheduler.from_config(json.loads(RELEASED_CONFIG))
    assert run_diffusers(reference, 50)[-1].equal(run_ours(scheduler, 50)[1][-1])


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 14, 15, 20, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 8.0])
def test_dpm_solver_matches_diffusers_step_for_step(steps, shift):
    config = {**json.loads(RELEASED_CONFIG), "flow_shift": shift}
    reference = DPMSolverMultistepScheduler.from_config(config)
    ours = DPMSolverMultistep(**config)
    reference.set_timesteps(steps)
    timesteps, sigmas = ours.schedule(steps)
    assert timesteps.dtype == torch.int64 and torch.equal(timesteps, reference.timesteps)
    assert torch.equal(sigmas, reference.sigmas) and sigmas[-1] == 0
    run, samples = run_ours(ours, steps)
    expected = run_diffusers(DPMSolverMultistepScheduler.from_config(config), steps)
    assert len(samples) == len(expected) == steps
    for i, (a, b) in enumerate(zip(samples, expected)):
        assert torch.equal(a, b), f"step {i}: max diff {(a - b).abs().max().item()}"


@pytest.mark.parametrize("variant", [
    {"solver_type": "heun"},
    {"solver_order": 1},
    {"lower_order_final": False},
    {"euler_at_final": True, "flow_shift": 7.0},
])
@pytest.mark.parametrize("steps", [4, 16])
def test_dpm_solver_variants_match_diffusers(variant, steps):
    config = {**json.loads(RELEASED_CONFIG), **variant}
    _, samples = run_ours(DPMSolverMultistep(**config), steps)
    expected = run_diffusers(DPMSolverMultistepScheduler.from_config(config), steps)
    assert all(torch.equal(a, b) for a, b in zip(samples, expected))


# (shift_terminal with one step divides 0 by 0 in diffusers too: not a schedule anyone runs.)
@pytest.mark.parametrize("steps, config", [(n, c) for n in (1, 4, 10, 50) for c in ({"shift": 1.0}, {"shift": 7.0})]
                         + [(n, {"shift": 3.0, "shift_terminal": 0.1}) for n in (4, 10)])
def test_flow_match_euler_matches_diffusers_step_for_step(steps, config):
    reference = FlowMatchEulerDiscreteScheduler(**config)
    ours = FlowMatchEuler(_class_name="FlowMatchEulerDiscreteScheduler", **config)
    reference.set_timesteps(steps)
    timesteps, sigmas = ours.schedule(steps)
    assert torch.equal(timesteps, reference.timesteps) and torch.equal(sigmas, reference.sigmas)
    _, samples = run_ours(ours, steps)
    expected = run_diffusers(FlowMatchEulerDiscreteScheduler(**config), steps)
    assert all(torch.equal(a, b) for a, b in zip(samples, expected))


def test_flow_match_euler_stochastic_sampling_matches_diffusers():
    config = {"shift": 7.0, "stochastic_sampling": True}
    _, samples = run_ours(FlowMatchEuler(**config), 4, generator=torch.Generator().manual_seed(5))
    expected = run_diffusers(FlowMatchEulerDiscreteScheduler(**config), 4, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(samples, expected))


def test_timestep_is_what_the_pipeline_feeds_the_model():
    ours = DPMSolverMultistep(**json.loads(RELEASED_CONFIG))
    run = ours.start(noise(), 50)
    t = run.timestep()
    assert t.shape == (2,) and t.dtype == torch.float32 and t[0].item() == 999.0  # int(1000 * 0.99987...)


@pytest.mark.parametrize("change, message", [
    ({"use_karras_sigmas": True}, "use_karras_sigmas"),
    ({"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    ({"solver_order": 3}, "solver_order"),
    ({"prediction_type": "epsilon"}, "prediction_type"),
    ({"use_flow_sigmas": False}, "use_flow_sigmas"),
    ({"final_sigmas_type": "sigma_min"}, "final_sigmas_type"),
    ({"some_future_option": True}, "some_future_option"),
])
def test_unsupported_dpm_options_are_refused(tmp_path, change, message):
    (tmp_path / "scheduler_config.json").write_text(json.dumps({**json.loads(RELEASED_CONFIG), **change}))
    with pytest.raises(ValueError, match=message):
        load_scheduler(tmp_path)


def test_unknown_or_missing_scheduler_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no scheduler config"):
        load_scheduler(tmp_path)
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "UniPCMultistepScheduler"}))
    with pytest.raises(ValueError, match="UniPCMultistepScheduler"):
        load_scheduler(tmp_path)
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        FlowMatchEuler(use_dynamic_shifting=True)
    with pytest.raises(RuntimeError, match="finished"):
        run = FlowMatchEuler().start(noise(), 1)
        run.advance(run.x)
        run.advance(run.x)

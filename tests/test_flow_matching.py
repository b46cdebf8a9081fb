"""FlowMatchScheduler: the official shifted flow-matching schedule and its dtypes."""

from __future__ import annotations

import json

import pytest
import torch
from parity_sets import PARITY_SETS

from memrope.flow_matching import FlowMatchScheduler


def test_tables_follow_the_shift_formula() -> None:
    scheduler = FlowMatchScheduler(shift=5.0)
    base = torch.linspace(1, 0, 1001, dtype=torch.float64)[:-1]
    expected = 5 * base / (1 + 4 * base)
    assert scheduler.sigmas.dtype == scheduler.timesteps.dtype == torch.float32
    assert scheduler.sigmas.shape == (1000,)
    torch.testing.assert_close(scheduler.sigmas.double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(scheduler.timesteps, scheduler.sigmas * 1000)
    assert scheduler.timesteps[0].item() == 1000.0


def test_warp_default_steps() -> None:
    warped = FlowMatchScheduler(shift=5.0).warp([1000, 750, 500, 250])
    assert warped.dtype == torch.float32
    torch.testing.assert_close(warped, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]))
    assert FlowMatchScheduler().warp([0]).item() == 0.0


def test_warp_matches_parity_vectors() -> None:
    assert PARITY_SETS
    for path in PARITY_SETS:
        pipeline = json.loads(path.read_text())["pipeline"]
        if not pipeline["warp_denoising_step"]:
            continue
        warped = FlowMatchScheduler(shift=pipeline["timestep_shift"]).warp(pipeline["denoising_step_list"])
        expected = torch.tensor(pipeline["warped_timesteps"], dtype=torch.float32)
        torch.testing.assert_close(warped, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("steps", [[], [1001], [-1], [500.0], [[1000, 500]]])
def test_warp_rejects_bad_steps(steps: list) -> None:
    with pytest.raises(ValueError, match="denoising_steps"):
        FlowMatchScheduler().warp(steps)


def test_sigma_is_nearest_table_entry() -> None:
    scheduler = FlowMatchScheduler()
    t = torch.tensor([[1000.0, 937.6], [0.0, 625.0]])
    sigma = scheduler.sigma(t)
    assert sigma.shape == (2, 2) and sigma.dtype == torch.float32
    torch.testing.assert_close(sigma, torch.tensor([[1.0, 0.9375], [scheduler.sigmas[-1].item(), 0.625]]))
    assert scheduler.sigma(t, torch.float64).dtype == torch.float64


def test_to_x0_runs_in_float64_and_keeps_dtype() -> None:
    scheduler = FlowMatchScheduler()
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 3, 4, 5, 6, generator=generator)
    flow = torch.randn(2, 3, 4, 5, 6, generator=generator)
    t = torch.full((2, 3), 937.5)
    x0 = scheduler.to_x0(flow, x_t, t)
    expected = (x_t.double() - 0.9375 * flow.double()).float()
    assert x0.dtype == torch.float32
    assert torch.equal(x0, expected)
    assert scheduler.to_x0(flow.bfloat16(), x_t.bfloat16(), t).dtype == torch.bfloat16


def test_add_noise_interpolates_and_returns_noise_dtype() -> None:
    scheduler = FlowMatchScheduler()
    x0 = torch.ones(1, 2, 3, 2, 2)
    noise = torch.zeros(1, 2, 3, 2, 2, dtype=torch.bfloat16)
    t = torch.tensor([[1000.0, 625.0]])
    out = scheduler.add_noise(x0, noise, t)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out[0, 0].float(), torch.zeros(3, 2, 2))
    torch.testing.assert_close(out[0, 1].float(), torch.full((3, 2, 2), 0.375))


def test_timestep_shape_must_prefix_latents() -> None:
    with pytest.raises(ValueError, match="prefix"):
        FlowMatchScheduler().add_noise(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(3))


@pytest.mark.parametrize("kwargs", [{"num_train_timesteps": 0}, {"shift": 0.0}, {"sigma_min": 1.0}])
def test_rejects_bad_construction(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FlowMatchScheduler(**kwargs)


def test_old_module_name_still_works_with_a_deprecation_warning() -> None:
    import importlib
    import sys

    sys.modules.pop("memrope.scheduler", None)
    with pytest.warns(
        DeprecationWarning,
        match="memrope.scheduler is deprecated: import FlowMatchScheduler from memrope.flow_matching",
    ):
        old = importlib.import_module("memrope.scheduler")
    assert old.FlowMatchScheduler is FlowMatchScheduler

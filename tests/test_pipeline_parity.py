"""Pipeline-level parity with the official implementation (parity README, level 2).

Every parity set (bundled in ``tests/data/parity``, plus those of ``$MEMROPE_PARITY_DIR``) is run twice:
* with a replay model returning the recorded flows, which checks the scheduler, the noise order
  and the call protocol (inputs, timesteps and start frames of every call);
* with the real :class:`CausalWanModel` and the set's weights, compared with ``output``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from parity_sets import PARITY_IDS, PARITY_SETS

from memrope.pipeline import CausalInferencePipeline
from memrope.testing.parity import ParitySet, load_parity_set

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=PARITY_SETS, ids=PARITY_IDS)
def parity_set(request: pytest.FixtureRequest) -> ParitySet:
    return load_parity_set(request.param)


def _pipeline(parity: ParitySet, model: Any) -> CausalInferencePipeline:
    settings = parity.pipeline
    return CausalInferencePipeline(
        model,
        parity.cache_config,
        denoising_steps=settings.denoising_steps,
        warp_denoising_step=settings.warp_denoising_step,
        shift=settings.shift,
        context_noise=settings.context_noise,
        dtype=torch.float32,
    )


class _ReplayModel:
    """Returns the recorded flows in order and records what the pipeline passed."""

    def __init__(self, parity: ParitySet) -> None:
        self.config = parity.model_config
        self.parity = parity
        self.calls: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def new_cache(self, cache_config: Any, batch_size: int, latent_hw: tuple[int, int], **_: Any) -> Any:
        assert cache_config == self.parity.cache_config
        assert latent_hw == self.parity.pipeline.latent_hw
        return SimpleNamespace(check_finite=lambda: None)  # replayed flows need no cache

    def encode_context(self, text_embeds: torch.Tensor) -> torch.Tensor:
        return text_embeds

    def __call__(
        self, latents: torch.Tensor, timesteps: torch.Tensor, context: Any, *, cache: Any, start_frame: int
    ) -> torch.Tensor:
        self.calls.append((latents.clone(), timesteps.clone(), start_frame))
        return self.parity.tensors[f"call{len(self.calls) - 1}.flow"]


def test_replayed_flows_reproduce_calls_and_output(parity_set: ParitySet) -> None:
    model = _ReplayModel(parity_set)
    generator, noise, context = parity_set.pipeline_inputs()
    torch.testing.assert_close(noise, parity_set.tensors["noise"], rtol=0, atol=0)
    torch.testing.assert_close(context, parity_set.tensors["context"], rtol=0, atol=0)
    output = _pipeline(parity_set, model).generate(
        context, num_frames=parity_set.pipeline.num_frames, noise=noise, generator=generator
    )
    assert len(model.calls) == len(parity_set.calls)
    for call, (latents, timesteps, start_frame) in zip(parity_set.calls, model.calls):
        assert start_frame == call.start_frame
        assert latents.shape[1] == call.num_frames
        torch.testing.assert_close(
            timesteps, parity_set.tensors[f"call{call.index}.t"].float(), rtol=0, atol=TOLERANCE
        )
        torch.testing.assert_close(latents, parity_set.tensors[f"call{call.index}.x"], rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(output, parity_set.tensors["output"], rtol=0, atol=TOLERANCE)


def test_real_model_reproduces_output(parity_set: ParitySet) -> None:
    model = parity_set.build_model()
    generator, noise, context = parity_set.pipeline_inputs()
    output = _pipeline(parity_set, model).generate(
        context, num_frames=parity_set.pipeline.num_frames, noise=noise, generator=generator
    )
    expected = parity_set.tensors["output"]
    error = (output - expected).abs().max().item()
    assert error <= TOLERANCE, f"{parity_set.name}: max abs error {error:.3g} > {TOLERANCE}"

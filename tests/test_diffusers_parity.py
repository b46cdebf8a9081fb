"""Every parity set (bundled and ``$MEMROPE_PARITY_DIR``) replayed through the diffusers path.

The set's weights are converted into a diffusers ``WanTransformer3DModel``
(:func:`memrope.adapters.diffusers_wan.diffusers_transformer`) and run through the diffusers adapter:
the recorded calls one by one (flows and layer-0 cache contents) and the whole pipeline (output).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from parity_sets import PARITY_IDS, PARITY_SETS, TOLERANCE, assert_replay_within_tolerance, replay_calls

pytest.importorskip("diffusers")

import memrope
from memrope.adapters.diffusers_wan import DiffusersAttachment, diffusers_transformer
from memrope.pipeline import CausalInferencePipeline
from memrope.testing.parity import ParitySet, load_parity_set

DIFFUSERS_IDS = [f"diffusers-{name}" for name in PARITY_IDS]


def _attach(parity: ParitySet) -> DiffusersAttachment:
    transformer = diffusers_transformer(parity.build_model(), parity.model_config)
    attachment = memrope.attach(transformer, parity.cache_config, text_len=parity.model_config.text_len)
    assert isinstance(attachment, DiffusersAttachment)
    return attachment


@pytest.mark.parametrize("path", PARITY_SETS, ids=DIFFUSERS_IDS)
def test_diffusers_call_replay_matches_official(path: Path) -> None:
    parity = load_parity_set(path)
    with _attach(parity) as attachment:
        cache = attachment.new_cache(parity.cache_config, parity.pipeline.batch, parity.pipeline.latent_hw)
        flow_errors, cache_errors = replay_calls(parity, attachment, cache)  # type: ignore[arg-type]
    assert_replay_within_tolerance(parity.name, len(parity.calls), flow_errors, cache_errors)


@pytest.mark.parametrize("path", PARITY_SETS, ids=DIFFUSERS_IDS)
def test_diffusers_pipeline_reproduces_output(path: Path) -> None:
    parity = load_parity_set(path)
    settings = parity.pipeline
    generator, noise, context = parity.pipeline_inputs()
    with _attach(parity) as attachment:
        pipeline = CausalInferencePipeline(
            attachment,
            parity.cache_config,
            denoising_steps=settings.denoising_steps,
            warp_denoising_step=settings.warp_denoising_step,
            shift=settings.shift,
            context_noise=settings.context_noise,
            dtype=torch.float32,
        )
        output = pipeline.generate(context, num_frames=settings.num_frames, noise=noise, generator=generator)
    error = (output - parity.tensors["output"]).abs().max().item()
    assert error <= TOLERANCE, f"{parity.name}: max abs error {error:.3g} > {TOLERANCE}"

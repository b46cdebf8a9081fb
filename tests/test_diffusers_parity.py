"""Every parity set (bundled and ``$MEMROPE_PARITY_DIR``) replayed through the diffusers path.

The set's weights are converted into a diffusers ``WanTransformer3DModel``
(:func:`memrope.adapters.diffusers_wan.diffusers_transformer`) and run through the diffusers adapter:
the recorded calls one by one (flows and layer-0 cache contents) and the whole pipeline (output).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from parity_sets import PARITY_IDS, PARITY_SETS, replay_calls

pytest.importorskip("diffusers")

import memrope
from memrope.adapters.diffusers_wan import DiffusersAttachment, diffusers_transformer
from memrope.pipeline import CausalInferencePipeline
from memrope.testing.parity import ParitySet, load_parity_set

TOLERANCE = 1e-4
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
    assert len(flow_errors) == len(parity.calls)
    worst_call = max(range(len(flow_errors)), key=flow_errors.__getitem__)
    assert flow_errors[worst_call] < TOLERANCE, (
        f"{parity.name} call {worst_call}: flow max abs error {flow_errors[worst_call]:.3g}"
    )
    for chunk, key_error, value_error in cache_errors:
        assert key_error < TOLERANCE and value_error < TOLERANCE, (
            f"{parity.name} chunk {chunk}: cache error k={key_error:.3g} v={value_error:.3g}"
        )


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

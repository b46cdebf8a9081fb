"""Parity through the drop-in adapter: every parity set, replayed on upstream-shaped stand-ins.

Each parity set (bundled in ``tests/data/parity``, plus those of ``$MEMROPE_PARITY_DIR``) is loaded into the stand-in model
of every upstream variant (Self-Forcing, LongLive with PEFT-wrapped LoRA layers whose deltas are
zero, official MemRoPE with ``kv_cache=True``), the pipeline is attached, and

1. every recorded call is fed through the generator wrapper with ``current_start = start_frame *
   frame_seqlen`` (flows compared at 1e-4);
2. the stand-in pipeline regenerates the set's video from its seed (``output`` compared at 1e-4).

The official-MemRoPE stand-in carries the set's cache settings the way the official code does (on
its attention modules: ``compression_method``, ``local_attn_size``, ``sink_size``, ``ema_alpha_*``,
``ema_adaptive``) and is attached *without* a ``cache_config``: the settings the adapter reads must
reproduce the vectors. The other variants are given the set's config.

Configurations the bundled sets do not cover (chunk 1 and 2 with a 3-frame sink, small caches, the
adaptive rate 0.3, 2-step schedules, the unbounded policy) reach this module as sets in
``$MEMROPE_PARITY_DIR``: ``tests/test_official_reference.py`` writes them with a literal model of
the official cache and replays them here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from parity_sets import PARITY_SETS

from memrope.adapters import attach
from memrope.testing.parity import ParitySet, load_parity_set
from memrope.testing.upstream import VARIANTS, LoraLinearStandin, build_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:alpha_short=0.3 with adaptive_short_rate=True:UserWarning")

TOLERANCE = 1e-4
CASES = [
    pytest.param(path, variant, id=f"{path.stem}-{variant}") for path in PARITY_SETS for variant in VARIANTS
]


# ------------------------------------------------------------------------------ stand-ins
def _standin_pipeline(parity: ParitySet, variant: str) -> Any:
    settings = parity.pipeline
    cache = parity.raw["cache_config"]
    pipe = build_pipeline(
        variant,
        parity.model_config.to_dict(),
        chunk_frames=settings.chunk_frames,
        latent_hw=settings.latent_hw,
        local_attn_size=int(cache["local_attn_size"]),
        sink_size=int(cache["sink_size"]),
        compression_method=cache["mode"],
        ema_alpha_long=float(cache.get("ema_alpha_long", 0.01)),
        ema_alpha_short=float(cache.get("ema_alpha_short", 0.1)),
        ema_adaptive=bool(cache.get("per_position_pooling_and_adaptive_alpha", False)),
        denoising_step_list=settings.denoising_steps,
        warp_denoising_step=settings.warp_denoising_step,
        shift=settings.shift,
        context_noise=settings.context_noise,
        state_dict=parity.weights,
    )
    assert pipe.frame_seq_length == parity.frame_seqlen
    with torch.no_grad():  # LoRA layers stay in the call path, with zero deltas so the weights are the set's
        for module in pipe.wan[0].modules():
            if isinstance(module, LoraLinearStandin):
                module.lora_B["default"].weight.zero_()
    return pipe


def _attach(pipe: Any, parity: ParitySet, variant: str) -> Any:
    """The official variant without a config (its own settings are read), the others with the set's."""
    attachment = attach(pipe) if variant == "official" else attach(pipe, parity.cache_config)
    assert attachment.cache_config == parity.cache_config
    return attachment


# ------------------------------------------------------------------------------ checks
@pytest.mark.parametrize(("path", "variant"), CASES)
def test_call_replay_through_the_adapter(path: Path, variant: str) -> None:
    parity = load_parity_set(path)
    pipe = _standin_pipeline(parity, variant)
    tensors = parity.tensors
    context = tensors["context"]
    batch = context.shape[0]
    errors = []
    with _attach(pipe, parity, variant) as attachment, torch.no_grad():
        pipe._initialize_kv_cache(batch_size=batch, dtype=torch.float32, device=torch.device("cpu"))
        pipe._initialize_crossattn_cache(batch_size=batch, dtype=torch.float32, device=torch.device("cpu"))
        pipe.wan[0]._kv_cache_attr = pipe.kv_cache1  # what the official pipeline does for kv_cache=True
        pipe.wan[0]._crossattn_cache_attr = pipe.crossattn_cache
        for call in parity.calls:
            flow, _ = pipe.generator(
                noisy_image_or_video=tensors[f"call{call.index}.x"],
                conditional_dict={"prompt_embeds": context},
                timestep=tensors[f"call{call.index}.t"],
                kv_cache=pipe.kv_cache1,
                crossattn_cache=pipe.crossattn_cache,
                current_start=call.start_frame * parity.frame_seqlen,
            )
            errors.append((flow - tensors[f"call{call.index}.flow"]).abs().max().item())
        assert attachment.cache is not None and attachment.cache.config == parity.cache_config
    worst = max(errors)
    assert worst <= TOLERANCE, (
        f"{parity.name}/{variant}: worst flow error {worst:.3e} at call {errors.index(worst)}"
    )


@pytest.mark.parametrize(("path", "variant"), CASES)
def test_pipeline_output_through_the_adapter(path: Path, variant: str) -> None:
    parity = load_parity_set(path)
    pipe = _standin_pipeline(parity, variant)
    generator, noise, context = parity.pipeline_inputs()
    with _attach(pipe, parity, variant), torch.no_grad():
        output = pipe.inference(noise, context, generator=generator)
    error = (output - parity.tensors["output"]).abs().max().item()
    assert error <= TOLERANCE, f"{parity.name}/{variant}: output error {error:.3e}"

"""Configurations the bundled official vectors do not cover, checked against a literal official model.

``official_reference.OfficialReferenceCache`` models the official cache logic call by call. It is
first held to the bundled official vectors; then it writes parity sets for chunk sizes 1 and 2 with
a 3-frame sink (where rewrite calls leave sink slots alone), small caches, a cache that is not a
multiple of the chunk, the adaptive rate above 1, a 2-step schedule and the unbounded policy, and
every parity test module replays them through ``$MEMROPE_PARITY_DIR``, exactly as unseen official
sets are replayed: call replay, the pipeline and the adapter, at 1e-4.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from official_reference import OfficialReferenceCache, write_reference_set
from parity_sets import BUNDLED_PARITY_DIR, replay_calls

from memrope.adapters import attach
from memrope.pipeline import CausalInferencePipeline
from memrope.testing.parity import PARITY_DIR_ENV, load_parity_set
from memrope.testing.upstream import build_pipeline

TOLERANCE = 1e-4
TESTS = Path(__file__).resolve().parent
BASE_SET = BUNDLED_PARITY_DIR / "ema.json"
PARITY_MODULES = (
    "test_parity_calls.py",
    "test_pipeline_parity.py",
    "test_adapter_parity.py",
    "test_diffusers_parity.py",
)


def _official(
    mode: str, size: int, sink: int = 3, *, adaptive: bool = False, alpha_short: float = 0.1
) -> dict:
    return {
        "mode": mode,
        "local_attn_size": size,
        "sink_size": sink,
        "recent_size": 0,
        "ema_alpha_long": 0.01,
        "ema_alpha_short": alpha_short,
        "per_position_pooling_and_adaptive_alpha": adaptive,
    }


REFERENCE_SETS: dict[str, tuple[dict, dict]] = {
    "reference_chunk1_sink3_ema": (_official("ema", 12), {"frames_per_block": 1, "num_frames": 18}),
    "reference_chunk1_sink3_eviction": (_official("eviction", 8), {"frames_per_block": 1, "num_frames": 14}),
    "reference_chunk2_sink3_ema": (_official("ema", 12), {"frames_per_block": 2, "num_frames": 20}),
    "reference_chunk2_sink3_eviction_small": (
        _official("eviction", 5),
        {"frames_per_block": 2, "num_frames": 14},
    ),
    "reference_chunk2_cache7_ema": (_official("ema", 7), {"frames_per_block": 2, "num_frames": 16}),
    "reference_chunk3_cache10_ema": (_official("ema", 10), {"num_frames": 21}),
    "reference_adaptive_alpha03": (
        _official("ema", 12, adaptive=True, alpha_short=0.3),
        {"frames_per_block": 2, "num_frames": 22},
    ),
    "reference_two_steps_chunk1": (
        _official("ema", 9),
        {"frames_per_block": 1, "num_frames": 14, "denoising_step_list": [1000, 500]},
    ),
    "reference_unwarped_two_steps_shift3": (
        _official("eviction", 9),
        {
            "frames_per_block": 2,
            "num_frames": 16,
            "denoising_step_list": [1000, 400],
            "warp_denoising_step": False,
            "timestep_shift": 3.0,
        },
    ),
    "reference_batch2_chunk1": (_official("ema", 8), {"frames_per_block": 1, "num_frames": 12, "batch": 2}),
    "reference_unbounded_chunk1": (_official("ema", -1), {"frames_per_block": 1, "num_frames": 10}),
    "reference_unbounded_chunk3_no_sink": (_official("eviction", -1, sink=0), {"num_frames": 12}),
}


@pytest.mark.parametrize("name", ["ema", "eviction"])
def test_the_reference_reproduces_the_official_vectors(name: str) -> None:
    parity = load_parity_set(BUNDLED_PARITY_DIR / f"{name}.json")
    model = parity.build_model()
    settings = parity.pipeline
    cache = OfficialReferenceCache(
        parity.raw["cache_config"],
        chunk_frames=settings.chunk_frames,
        num_frames=settings.num_frames,
        num_layers=parity.model_config.num_layers,
        batch_size=settings.batch,
        num_heads=parity.model_config.num_heads,
        head_dim=parity.model_config.head_dim,
        frame_shape=model.token_grid(settings.latent_hw),
    )
    flow_errors, cache_errors = replay_calls(parity, model, cache)
    assert len(flow_errors) == len(parity.calls) and max(flow_errors) < TOLERANCE, max(flow_errors)
    assert len(cache_errors) == settings.num_frames // settings.chunk_frames
    for chunk, key_error, value_error in cache_errors:
        assert key_error < TOLERANCE and value_error < TOLERANCE, (chunk, key_error, value_error)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("reference_parity")
    for name, (cache_config, pipeline) in REFERENCE_SETS.items():
        write_reference_set(BASE_SET, directory, name, cache_config, pipeline)
    return directory


@pytest.mark.parametrize("name", ["reference_chunk1_sink3_ema", "reference_chunk2_sink3_ema"])
def test_sink_protection_is_what_the_reference_sets_need(reference_dir: Path, name: str) -> None:
    """Frames 1 and 2 keep the first call's keys: a cache that writes every call misses the vectors."""
    parity = load_parity_set(reference_dir / f"{name}.json")
    tokens, tensors = parity.frame_seqlen, parity.tensors
    last = parity.pipeline.num_frames // parity.pipeline.chunk_frames - 1
    assert torch.equal(tensors[f"cache{last}.k0"][:, : 3 * tokens], tensors["cache2.k0"][:, : 3 * tokens])
    errors = {}
    for protect in (True, False):
        config = dataclasses.replace(parity.cache_config, protect_sink_on_rewrite=protect)
        model = parity.build_model()
        cache = model.new_cache(config, parity.pipeline.batch, parity.pipeline.latent_hw)
        errors[protect] = max(replay_calls(parity, model, cache)[0])
    assert errors[True] < TOLERANCE < 100 * TOLERANCE < errors[False], errors


def test_every_parity_level_replays_the_reference_sets(reference_dir: Path) -> None:
    """What happens to unseen official sets: the parity modules run with ``$MEMROPE_PARITY_DIR`` set."""
    environment = {**os.environ, PARITY_DIR_ENV: str(reference_dir)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rA",
        "-k",
        "reference_",
        *[str(TESTS / module) for module in PARITY_MODULES],
    ]
    result = subprocess.run(
        command, cwd=TESTS.parent, env=environment, capture_output=True, text=True, timeout=900, check=False
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-6000:]
    passed = re.findall(r"^PASSED (\S+)", result.stdout, flags=re.MULTILINE)
    for name in REFERENCE_SETS:
        for module in PARITY_MODULES:
            assert any(test.startswith(f"tests/{module}") and name in test for test in passed), (
                name,
                module,
                report[-3000:],
            )


# ------------------------------------------------------------------------------ a first block of 1 frame
FIRST_FRAME_SETS: dict[str, tuple[dict, dict]] = {
    "first_frame1_chunk3_ema": (_official("ema", 12), {"independent_first_frame": True, "num_frames": 16}),
    "first_frame1_chunk2_eviction": (
        _official("eviction", 8),
        {"independent_first_frame": True, "frames_per_block": 2, "num_frames": 13},
    ),
}


@pytest.fixture(scope="module")
def first_frame_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sets the literal official cache writes for Self-Forcing's [1, chunk, chunk, ...] block list.

    Kept out of :data:`REFERENCE_SETS`: the parity modules replay constant chunk sizes only.
    """
    directory = tmp_path_factory.mktemp("first_frame_parity")
    for name, (cache_config, pipeline) in FIRST_FRAME_SETS.items():
        write_reference_set(BASE_SET, directory, name, cache_config, pipeline)
    return directory


@pytest.mark.parametrize("name", sorted(FIRST_FRAME_SETS))
def test_first_chunk_frames_1_replays_the_reference(first_frame_dir: Path, name: str) -> None:
    """Calls, cache contents, pipeline output and the attached Self-Forcing stand-in, all at 1e-4."""
    parity = load_parity_set(first_frame_dir / f"{name}.json")
    settings = parity.pipeline
    config = dataclasses.replace(parity.cache_config, first_chunk_frames=1)
    model = parity.build_model()
    flow_errors, cache_errors = replay_calls(
        parity, model, model.new_cache(config, settings.batch, settings.latent_hw)
    )
    assert max(flow_errors) < TOLERANCE, max(flow_errors)
    assert len(cache_errors) == 1 + (settings.num_frames - 1) // settings.chunk_frames
    assert max(max(key, value) for _, key, value in cache_errors) < TOLERANCE, cache_errors
    if config.sink_frames > 1:  # the chunk at frame 1 covers sink slots: its rewrites must leave them alone
        unprotected = dataclasses.replace(config, protect_sink_on_rewrite=False)
        cache = model.new_cache(unprotected, settings.batch, settings.latent_hw)
        assert max(replay_calls(parity, model, cache)[0]) > 100 * TOLERANCE

    generator, noise, context = parity.pipeline_inputs()
    pipeline = CausalInferencePipeline(
        model,
        config,
        denoising_steps=settings.denoising_steps,
        warp_denoising_step=settings.warp_denoising_step,
        shift=settings.shift,
        context_noise=settings.context_noise,
    )
    output = pipeline.generate(context, num_frames=settings.num_frames, noise=noise, generator=generator)
    assert (output - parity.tensors["output"]).abs().max().item() < TOLERANCE

    generator, noise, context = parity.pipeline_inputs()
    standin = build_pipeline(
        "self_forcing",
        parity.model_config.to_dict(),
        chunk_frames=settings.chunk_frames,
        latent_hw=settings.latent_hw,
        local_attn_size=int(parity.raw["cache_config"]["local_attn_size"]),
        sink_size=int(parity.raw["cache_config"]["sink_size"]),
        denoising_step_list=settings.denoising_steps,
        warp_denoising_step=settings.warp_denoising_step,
        shift=settings.shift,
        context_noise=settings.context_noise,
        state_dict=parity.weights,
        independent_first_frame=True,
    )
    with attach(standin, parity.cache_config) as attachment, torch.no_grad():
        assert attachment.cache_config == config
        attached = standin.inference(noise, context, generator=generator)
    assert (attached - parity.tensors["output"]).abs().max().item() < TOLERANCE

"""NaN and infinity never pass silently: checkpoint weights, LoRA factors and merges, text embeddings,
initial noise, each chunk's latents and cache writes, the EMA memory, decoded frames and resumed
checkpoints each raise NonFiniteError naming the tensor and where it is; a finite run is unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from memrope import pipeline as pipeline_module
from memrope.cache import MemRoPECache
from memrope.config import MemRoPEConfig
from memrope.errors import NonFiniteError
from memrope.loading import load_wan_weights, merge_lora, nonfinite_summary
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.pipeline import CausalInferencePipeline, ChunkResult

TINY = WanConfig(
    dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=8, text_len=6, freq_dim=16
)
LATENT_HW = (4, 6)
CACHE = MemRoPEConfig(cache_frames=8, sink_frames=1, chunk_frames=2)  # memory from chunk 4 on
STEPS = (1000, 500)
CALLS_PER_CHUNK = len(STEPS) + 1  # the denoising steps, then the clean context call
NUM_FRAMES = 14  # 7 chunks
POISONED_KEY = "blocks.1.self_attn.q.weight"


@pytest.fixture(scope="module")
def model() -> CausalWanModel:
    torch.manual_seed(0)
    return CausalWanModel(TINY).eval()


def _prompt(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, TINY.text_dim, generator=torch.Generator().manual_seed(1))


def _stream(model: Any, **kwargs: Any) -> Iterator[ChunkResult]:
    options: dict[str, Any] = {"num_frames": NUM_FRAMES, "seed": 3, "latent_hw": LATENT_HW, **kwargs}
    return CausalInferencePipeline(model, CACHE, denoising_steps=STEPS).stream(_prompt(), **options)


def _collect(chunks: Iterator[ChunkResult], into: list[ChunkResult]) -> None:
    into.extend(chunks)


@contextmanager
def _poisoned_key(model: CausalWanModel, call: int) -> Iterator[None]:
    """Model call number ``call`` (from 0) writes one NaN element into the keys of layer 0's self-attention."""
    calls = 0

    def poison(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls - 1 != call:
            return output
        poisoned = output.clone()
        poisoned.view(-1)[7] = float("nan")
        return poisoned

    handle = model.blocks[0].self_attn.norm_k.register_forward_hook(poison)
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------- weights and LoRA
def _weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(t.shape, generator=generator)
        for name, t in CausalWanModel(TINY).state_dict().items()
    }


def test_nan_in_one_checkpoint_weight_names_the_key_and_the_file(tmp_path: Path) -> None:
    weights = _weights(0)
    weights[POISONED_KEY][3, 4] = float("nan")
    weights["blocks.0.ffn.0.bias"][0] = float("inf")
    path = tmp_path / "weights.safetensors"
    save_file(weights, path)
    target = CausalWanModel(TINY)
    before = {name: tensor.clone() for name, tensor in target.state_dict().items()}
    with pytest.raises(
        NonFiniteError,
        match=(
            rf"checkpoint {path}: 2 tensors with NaN or infinite values: 'blocks\.0\.ffn\.0\.bias' \(1 inf of 64 "
            rf"elements\), '{POISONED_KEY}' \(1 NaN of 1024 elements\); the file is damaged"
        ),
    ):
        load_wan_weights(target, path)
    assert all(torch.equal(before[name], tensor) for name, tensor in target.state_dict().items())


def _lora(rank: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return {
        "base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.randn(
            rank, TINY.dim, generator=generator
        ),
        "base_model.model.blocks.0.self_attn.q.lora_B.weight": torch.randn(
            TINY.dim, rank, generator=generator
        ),
    }


def test_nan_in_a_lora_factor_names_the_factor_and_the_file(tmp_path: Path) -> None:
    base_path, lora_path = tmp_path / "base.pt", tmp_path / "lora.pt"
    torch.save({"generator": _weights(1)}, base_path)
    lora = _lora()
    lora["base_model.model.blocks.0.self_attn.q.lora_B.weight"][5, 1] = float("nan")
    torch.save({"generator_lora": lora}, lora_path)
    with pytest.raises(
        NonFiniteError,
        match=(
            rf"LoRA {lora_path}: 1 tensor with NaN or infinite values: "
            r"'base_model\.model\.blocks\.0\.self_attn\.q\.lora_B\.weight' \(1 NaN of 64 elements\)"
        ),
    ):
        load_wan_weights(CausalWanModel(TINY), base_path, lora=lora_path, use_ema=False)
    with pytest.raises(
        NonFiniteError,
        match=(
            r"merging the LoRA into blocks\.0\.self_attn\.q\.weight gives 32 NaN of 1024 elements: LoRA factor "
            r"'base_model\.model\.blocks\.0\.self_attn\.q\.lora_B\.weight' holds 1 NaN of 64 elements"
        ),
    ):
        merge_lora(_weights(1), lora)


def test_a_merge_that_overflows_the_weight_dtype_is_named() -> None:
    base = {name: tensor.to(torch.float16) for name, tensor in _weights(2).items()}
    lora = {name: tensor * 300 for name, tensor in _lora().items()}  # B @ A reaches ~1e5 > float16's 65504
    with pytest.raises(
        NonFiniteError,
        match=(
            r"merging the LoRA into blocks\.0\.self_attn\.q\.weight gives \d+ inf of 1024 elements: the weight and "
            r"the factors are finite, but W \+ 1 \* B @ A overflows torch\.float16"
        ),
    ):
        merge_lora(base, lora)


def test_nonfinite_summary_counts_nan_and_inf() -> None:
    assert nonfinite_summary(torch.ones(3)) is None
    assert nonfinite_summary(torch.arange(3)) is None
    values = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")], dtype=torch.bfloat16)
    assert nonfinite_summary(values) == "1 NaN and 2 inf of 4 elements"


# ---------------------------------------------------------------- pipeline inputs
def test_nan_text_embeddings_are_refused_when_the_run_starts(model: CausalWanModel) -> None:
    prompt = _prompt(batch=3)
    prompt[1, 2, 0] = float("nan")
    pipe = CausalInferencePipeline(model, CACHE)
    with pytest.raises(
        NonFiniteError,
        match=r"text_embeds holds 1 NaN of 72 elements \(batch items \[1\]\); "
        r"check the text encoder",
    ):
        pipe.stream(prompt, num_frames=4, seed=0, latent_hw=LATENT_HW)
    switch = _prompt(batch=1)
    switch[0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"prompt_switches\[0\] text_embeds holds 1 inf"):
        pipe.stream(_prompt(), num_frames=4, seed=0, latent_hw=LATENT_HW, prompt_switches=[(2, switch)])
    noise = torch.randn(1, 4, TINY.in_dim, *LATENT_HW)
    noise[0, 3, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="noise holds 1 NaN"):
        pipe.stream(_prompt(), num_frames=4, noise=noise)


# ---------------------------------------------------------------- the streaming loop
def test_a_nan_key_in_a_denoising_step_stops_at_that_chunk_before_it_is_checkpointed(
    model: CausalWanModel, tmp_path: Path
) -> None:
    clean = list(_stream(model))
    path = tmp_path / "run.safetensors"
    yielded: list[ChunkResult] = []
    with (
        _poisoned_key(model, call=2 * CALLS_PER_CHUNK + 1),
        pytest.raises(
            NonFiniteError,
            match=r"the clean latents \(x0\) of chunk 2 \(latent frames 4-5\) holds \d+ NaN of 192 elements; nothing "
            r"of this chunk was yielded or checkpointed",
        ),
    ):
        _collect(_stream(model, save_every=1, checkpoint_path=path), yielded)
    assert [chunk.index for chunk in yielded] == [0, 1]
    resumed = list(CausalInferencePipeline(model, CACHE, denoising_steps=STEPS).stream(resume_from=path))
    assert [chunk.index for chunk in resumed] == [2, 3, 4, 5, 6]  # the checkpoint is the one after chunk 1
    assert all(torch.equal(got.latents, want.latents) for got, want in zip(resumed, clean[2:], strict=True))


def test_a_nan_key_written_by_the_clean_context_call_stops_that_chunk(
    model: CausalWanModel, tmp_path: Path
) -> None:
    path = tmp_path / "run.safetensors"
    yielded: list[ChunkResult] = []
    context_call_of_chunk_1 = 2 * CALLS_PER_CHUNK - 1
    with (
        _poisoned_key(model, call=context_call_of_chunk_1),
        pytest.raises(
            NonFiniteError,
            match=r"the output of the clean context call of chunk 1 \(latent frames 2-3\) .* holds \d+ NaN .*the "
            r"cache now holds non-finite keys or values",
        ),
    ):
        _collect(_stream(model, save_every=1, checkpoint_path=path), yielded)
    assert [chunk.index for chunk in yielded] == [0]
    state = load_file(path)
    assert all(torch.isfinite(tensor).all() for name, tensor in state.items() if tensor.is_floating_point())


class _MemoryPoisoner:
    """Delegates to the model; after the clean context call of chunk ``chunk``, one element of layer 1's
    long key memory becomes infinite (what a value overflowing the memory dtype would do)."""

    def __init__(self, inner: CausalWanModel, chunk: int) -> None:
        self.inner, self.chunk, self.config = inner, chunk, inner.config

    def new_cache(self, *args: Any, **kwargs: Any) -> MemRoPECache:
        return self.inner.new_cache(*args, **kwargs)

    def encode_context(self, text_embeds: torch.Tensor) -> Any:
        return self.inner.encode_context(text_embeds)

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.inner.parameters()

    def __call__(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        context: Any,
        *,
        cache: MemRoPECache,
        start_frame: int,
    ) -> torch.Tensor:
        output = self.inner(latents, timesteps, context, cache=cache, start_frame=start_frame)
        if start_frame == self.chunk * CACHE.chunk_frames and bool((timesteps == 0).all()):
            cache.layers[1].memory["long_keys"].view(-1)[0] = float("inf")
        return output


def test_a_nonfinite_memory_stops_the_chunk_that_made_it(model: CausalWanModel) -> None:
    yielded: list[ChunkResult] = []
    with pytest.raises(
        NonFiniteError,
        match=r"after chunk 5 \(latent frames 10-11\): the long keys memory of "
        r"cache layer 1 holds NaN or infinity",
    ):
        _collect(_stream(_MemoryPoisoner(model, chunk=5)), yielded)
    assert [chunk.index for chunk in yielded] == [0, 1, 2, 3, 4]


def test_nonfinite_decoded_frames_are_refused(model: CausalWanModel) -> None:
    class BrokenDecoder:
        def reset(self) -> None:
            pass

        def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
            return torch.full_like(latents, float("nan"))

    pipe = CausalInferencePipeline(model, CACHE, decoder=BrokenDecoder())
    with pytest.raises(
        NonFiniteError,
        match=r"the decoded frames of chunk 0 \(latent frames 0-1\) .*check the "
        r"decoder",
    ):
        next(pipe.stream(_prompt(), num_frames=4, seed=0, latent_hw=LATENT_HW))


def test_a_checkpoint_with_a_nonfinite_memory_is_not_resumed(model: CausalWanModel, tmp_path: Path) -> None:
    path = tmp_path / "run.safetensors"
    for chunk in _stream(model, save_every=6, checkpoint_path=path):
        if chunk.index == 5:
            break
    tensors = load_file(path)
    tensors["cache.layers.0.short_values"].view(-1)[3] = float("nan")
    save_file(tensors, path, metadata=_metadata(path))
    with pytest.raises(NonFiniteError, match="the short values memory of cache layer 0 holds NaN"):
        CausalInferencePipeline(model, CACHE, denoising_steps=STEPS).stream(resume_from=path)


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata())


def test_the_checks_do_not_change_a_finite_run(
    model: CausalWanModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = [chunk.latents for chunk in _stream(model)]
    monkeypatch.setattr(pipeline_module, "_check_finite", lambda *args, **kwargs: None)
    monkeypatch.setattr(MemRoPECache, "check_finite", lambda self: None)
    unchecked = [chunk.latents for chunk in _stream(model)]
    assert all(torch.equal(a, b) for a, b in zip(checked, unchecked, strict=True))

"""8-bit keys and values in MemRoPECache (``kv_dtype``): the error bounds of memrope.kv_storage, every
policy and workspace, state round trips and conversions, devices, reset, hooks, non-finite checks,
torch.compile, the Wan-1.3B resident-bytes budget and the tiny model's flow predictions over 100 chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch._dynamo.testing import CompileCounterWithBackend

from memrope import MemRoPECache, MemRoPEConfig, rope_on_the_fly
from memrope.cache import CacheContext
from memrope.errors import NonFiniteError
from memrope.kv_storage import KVFormat, kv_format
from memrope.pipeline import CausalInferencePipeline
from memrope.presets import tiny_model, tiny_text_encoder

KV_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2, torch.int8)
FORMATS = {dtype: kv_format(dtype, torch.float32) for dtype in KV_DTYPES}
CONFIG = MemRoPEConfig(cache_frames=8, sink_frames=1, chunk_frames=2)  # memory from chunk 4 on
FRAME_SHAPE = (2, 3)
TOKENS = 2 * 6
HEADS = 2
HEAD_DIM = 32
WAN_1_3B = {"num_layers": 30, "num_heads": 12, "head_dim": 128, "frame_shape": (30, 52)}


def make_cache(
    kv_dtype: Any = None, *, layers: int = 2, config: MemRoPEConfig = CONFIG, **kwargs: Any
) -> MemRoPECache:
    return MemRoPECache(
        config,
        num_layers=layers,
        batch_size=1,
        num_heads=HEADS,
        head_dim=HEAD_DIM,
        frame_shape=FRAME_SHAPE,
        kv_dtype=kv_dtype,
        **kwargs,
    )


def chunk_inputs(chunk: int, call: int, layer: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed((chunk * 5 + call) * 3 + layer)
    return [torch.randn(1, TOKENS, HEADS, HEAD_DIM, generator=gen).to(dtype) for _ in "qkv"]


def play(caches: list[MemRoPECache], chunks: range, calls: int = 2) -> list[list[torch.Tensor]]:
    """The same calls on every cache (each chunk: ``calls`` calls per layer); outputs per cache."""
    outputs: list[list[torch.Tensor]] = [[] for _ in caches]
    for chunk in chunks:
        for call in range(calls):
            for layer in range(caches[0].num_layers):
                q, k, v = chunk_inputs(chunk, call, layer, caches[0].dtype)
                for out, cache in zip(outputs, caches):
                    out.append(rope_on_the_fly(q, k, v, cache=cache, layer=layer, start_frame=2 * chunk))
    return outputs


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert tensor.dtype == b[name].dtype, name
        left, right = (t.view(torch.uint8) if t.element_size() == 1 else t for t in (tensor, b[name]))
        assert torch.equal(left, right), name


# ---------------------------------------------------------------- the format bounds (kv_storage)
@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(KV_DTYPES),
    seed=st.integers(0, 2**16),
    log_spread=st.floats(-6.0, 6.0),
)
def test_round_trip_error_is_within_the_format_bound(
    dtype: torch.dtype, seed: int, log_spread: float
) -> None:
    fmt = FORMATS[dtype]
    assert fmt is not None
    gen = torch.Generator().manual_seed(seed)
    # tokens of very different magnitudes, channels spanning a few decades, some exact zeros
    x = torch.randn(2, 5, 3, HEAD_DIM, generator=gen, dtype=torch.float64)
    x = x * torch.logspace(-3, 3, 5, dtype=torch.float64)[None, :, None, None] * 10.0**log_spread
    x[0, 0, 0] = 0.0
    codes, scales = fmt.quantise(x.float())
    assert codes.dtype == dtype and scales.shape == (2, 5, 3, 1)
    restored = fmt.decode(codes, scales, torch.float64)
    amax = x.abs().amax(dim=-1, keepdim=True)
    bound = fmt.relative_error * x.abs() + fmt.absolute_error * amax
    # float32 input and the division by the scale add a few float32 roundings
    assert ((restored - x).abs() <= bound * (1 + 1e-5) + 1e-6 * amax).all()
    assert torch.equal(restored[0, 0, 0], torch.zeros(HEAD_DIM, dtype=torch.float64))


@pytest.mark.parametrize(
    ("given_dtype", "expected"),
    [
        (None, None),
        (torch.float32, None),  # the cache dtype: stored as today
        ("float32", None),
        ("fp32", None),
        (torch.float8_e4m3fn, torch.float8_e4m3fn),
        ("fp8", torch.float8_e4m3fn),
        ("E4M3", torch.float8_e4m3fn),
        ("torch.float8_e5m2", torch.float8_e5m2),
        ("e5m2", torch.float8_e5m2),
        (torch.int8, torch.int8),
        ("int8", torch.int8),
    ],
)
def test_kv_dtype_accepts_dtypes_and_names(given_dtype: Any, expected: torch.dtype | None) -> None:
    cache = make_cache(given_dtype)
    assert cache.kv_dtype == (torch.float32 if expected is None else expected)
    fmt = cache.kv_format
    assert cache.layers[0].keys.dtype == (torch.float32 if fmt is None else fmt.storage_dtype)
    assert (cache.layers[0].key_scales is None) == (expected is None)


@pytest.mark.parametrize(
    "bad", [torch.bfloat16, torch.float16, torch.uint8, torch.float8_e4m3fnuz, "fp4", "int4"]
)
def test_unsupported_kv_dtype_is_refused_with_the_choices(bad: Any) -> None:
    with pytest.raises(
        ValueError, match=r"kv_dtype must be None or torch.float32 \(the cache dtype\), torch.float8_e4m3fn"
    ):
        make_cache(bad)


def test_kv_dtype_of_the_wrong_type_and_missing_float8_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="kv_dtype must be a torch.dtype, a name or None, got int"):
        make_cache(8)
    monkeypatch.delattr(torch, "float8_e5m2")
    with pytest.raises(ValueError, match=r"needs torch.float8_e5m2, which this torch .* lacks"):
        make_cache("e5m2")
    with pytest.raises(ValueError, match="needs torch.float8_e5m2"):
        CausalInferencePipeline(tiny_model(), CONFIG, kv_dtype="e5m2")
    with pytest.raises(ValueError, match="kv_dtype must be"):
        CausalInferencePipeline(tiny_model(), CONFIG, kv_dtype="fp4")


# ---------------------------------------------------------------- attention error, every policy and workspace
@pytest.mark.parametrize("policy", ["memrope", "sink", "full"])
@pytest.mark.parametrize("workspace", ["per_layer", "shared"])
@pytest.mark.parametrize("dtype", KV_DTYPES)
def test_attention_error_is_within_the_bound(dtype: torch.dtype, workspace: str, policy: str) -> None:
    """Per call: RMS(o' - o) <= 2 eps RMS(o) and max |o' - o| <= 2 eps max |v| (memrope.kv_storage)."""
    config = MemRoPEConfig(cache_frames=8, sink_frames=1, chunk_frames=2, policy=policy)
    exact = make_cache(None, config=config, key_workspace=workspace)
    low = make_cache(dtype, config=config, key_workspace=workspace)
    eps = low.kv_format.precision  # type: ignore[union-attr]
    outputs = play([exact, low], range(7), calls=2)
    assert exact.slot_layout() == low.slot_layout()
    max_value = max(v.abs().max() for _, _, v in (chunk_inputs(c, 0, 0) for c in range(7)))
    for reference, got in zip(*outputs):
        error = got - reference
        assert error.pow(2).mean().sqrt() <= 2 * eps * reference.pow(2).mean().sqrt()
        assert error.abs().max() <= 2 * eps * max_value


@pytest.mark.parametrize("dtype", KV_DTYPES)
def test_contents_memories_and_hooks_see_dequantised_values(dtype: torch.dtype) -> None:
    cache = make_cache(dtype, key_workspace="shared")
    seen: list[CacheContext] = []
    cache.register_attention_hook(lambda c, layer, q, context: seen.append(context))
    play([cache], range(6))
    fmt = cache.kv_format
    assert fmt is not None
    state = cache.layers[1]
    keys, values = cache.layer_contents(1)
    assert keys.dtype == values.dtype == torch.float32
    assert state.key_scales is not None and state.value_scales is not None
    assert torch.equal(keys, fmt.decode(state.keys, state.key_scales, torch.float32))
    assert torch.equal(values, fmt.decode(state.values, state.value_scales, torch.float32))
    assert torch.equal(seen[-1].values, values)  # the last call was layer 1's
    # EMA memories stay float32; the memory slots hold them, quantised
    memory = state.memory["long_values"]
    assert memory.dtype == torch.float32
    slot = values[:, 6:12]  # slot 1: the long memory
    assert ((slot - memory).abs() <= fmt.precision * memory.abs().amax(dim=-1, keepdim=True)).all()


def test_resident_bytes_at_the_wan_1_3b_shape_with_a_shared_workspace() -> None:
    """Shared workspace, bf16, default 12-frame cache, batch 1: 8-bit storage holds at most 0.55x the bytes."""
    bf16, *low = (
        MemRoPECache(
            MemRoPEConfig(),
            batch_size=1,
            device="meta",
            dtype=torch.bfloat16,
            key_workspace="shared",
            kv_dtype=kv,
            **WAN_1_3B,
        ).resident_bytes()
        for kv in (None, *KV_DTYPES)
    )
    layers, tokens, channels = 30, 12 * 30 * 52, 12 * 128
    tables = 2 * tokens * 128 * 4  # float32 cos and sin
    workspace = tokens * channels * 2  # one layer's roped keys (or values) in bf16
    assert bf16 == 2 * layers * tokens * channels * 2 + workspace + tables
    scales = 2 * layers * tokens * 12 * 4  # float32, one per token and head
    for resident in low:
        assert resident == 2 * layers * tokens * channels + scales + 2 * workspace + tables
        assert resident <= 0.55 * bf16, resident / bf16  # 0.542


# ---------------------------------------------------------------- state, devices, reset
@pytest.mark.parametrize("dtype", KV_DTYPES)
def test_quantised_state_round_trips_exactly_through_safetensors(dtype: torch.dtype, tmp_path: Path) -> None:
    original = make_cache(dtype)
    play([original], range(6))
    state = original.state_dict()
    assert state["layers.0.keys"].dtype == dtype and state["layers.0.key_scales"].dtype == torch.float32
    assert b'"kv_dtype": "' + str(dtype).removeprefix("torch.").encode() in bytes(
        state["meta.layout"].tolist()
    )
    save_file(state, tmp_path / "cache.safetensors")
    resumed = make_cache(dtype)
    resumed.load_state_dict(load_file(tmp_path / "cache.safetensors"))
    assert_state_equal(resumed.state_dict(), state)
    later = play([original, resumed], range(6, 10))
    for a, b in zip(*later):
        assert torch.equal(a, b)
    assert_state_equal(resumed.state_dict(), original.state_dict())


def test_default_state_has_no_scales_or_kv_dtype_in_its_layout() -> None:
    cache = make_cache(None)
    play([cache], range(5))
    state = cache.state_dict()
    assert not any("scales" in name for name in state)
    assert b"kv_dtype" not in bytes(state["meta.layout"].tolist())


@pytest.mark.parametrize("dtype", KV_DTYPES)
def test_states_of_another_storage_are_converted_with_a_warning(dtype: torch.dtype) -> None:
    plain, low = make_cache(None), make_cache(dtype)
    play([plain, low], range(6))
    fmt = low.kv_format
    assert fmt is not None
    into_low = make_cache(dtype)
    with pytest.warns(UserWarning, match=f"stored as float; quantised to this cache's kv_dtype={fmt.name}"):
        into_low.load_state_dict(plain.state_dict())
    keys = plain.layer_contents(0)[0]
    state = into_low.layers[0]
    assert state.key_scales is not None
    expected_codes, expected_scales = fmt.quantise(keys)
    assert torch.equal(state.keys[:, : keys.shape[1]].view(dtype), expected_codes)
    assert torch.equal(state.key_scales[:, : keys.shape[1]], expected_scales)
    into_plain = make_cache(None)
    with pytest.warns(UserWarning, match=f"stored as {fmt.name}; dequantised to this cache's float32"):
        into_plain.load_state_dict(low.state_dict())
    for a, b in zip(into_plain.layer_contents(1), low.layer_contents(1)):
        assert torch.equal(a, b)
    other = KV_DTYPES[(KV_DTYPES.index(dtype) + 1) % len(KV_DTYPES)]
    with pytest.warns(UserWarning, match=f"stored as {fmt.name}; quantised"):
        make_cache(other).load_state_dict(low.state_dict())


def test_codes_without_scales_and_misshapen_scales_are_refused() -> None:
    low = make_cache(torch.int8)
    play([low], range(3))
    state = low.state_dict()
    without = {
        name: t for name, t in state.items() if not name.startswith("layers.0.") or "scales" not in name
    }
    with pytest.raises(TypeError, match="layers.0.keys holds torch.int8 without layers.0.key_scales"):
        make_cache(torch.int8).load_state_dict(without)
    half = {name: t for name, t in state.items() if name != "layers.1.value_scales"}
    with pytest.raises(ValueError, match="has layers.1.key_scales but not the other 8-bit scales"):
        make_cache(torch.int8).load_state_dict(half)
    bad = dict(state, **{"layers.0.key_scales": state["layers.0.key_scales"][:, :-1]})
    with pytest.raises(ValueError, match=r"layers.0.key_scales must have shape \[1, 36, 2, 1\]"):
        make_cache(torch.int8).load_state_dict(bad)


@pytest.mark.parametrize("workspace", ["per_layer", "shared"])
def test_reset_replays_like_a_fresh_cache(workspace: str) -> None:
    used, fresh = (
        make_cache(torch.float8_e4m3fn, key_workspace=workspace),
        make_cache(torch.float8_e4m3fn, key_workspace=workspace),
    )
    play([used], range(6))
    used.reset()
    assert all(float(s.key_scales.abs().sum()) == 0 for s in used.layers if s.key_scales is not None)
    for a, b in zip(*play([used, fresh], range(6))):
        assert torch.equal(a, b)


def test_split_devices_and_to_keep_codes_scales_and_value_workspace_together() -> None:
    cache = MemRoPECache(
        CONFIG,
        num_layers=2,
        batch_size=1,
        num_heads=HEADS,
        head_dim=HEAD_DIM,
        frame_shape=FRAME_SHAPE,
        layer_devices=["cpu", "meta"],
        kv_dtype=torch.int8,
        key_workspace="shared",
    )
    for state, device in zip(cache.layers, ("cpu", "meta")):
        assert {t.device.type for t in (state.keys, state.values, state.key_scales, state.value_scales)} == {
            device
        }  # type: ignore[union-attr]
    assert sorted(d.type for d in cache._shared_values) == ["cpu", "meta"]
    cache.to("meta")
    tensors = [t for s in cache.layers for t in (s.keys, s.values, s.key_scales, s.value_scales)]
    assert {t.device.type for t in [*tensors, *cache._shared_values.values()]} == {"meta"}  # type: ignore[union-attr]
    assert cache.layers[0].keys.dtype == torch.int8
    assert make_cache(torch.float8_e5m2).layers[0].values.dtype == torch.uint8  # float8 bit patterns


# ---------------------------------------------------------------- non-finite values, compile
def test_a_nan_value_stored_as_int8_is_reported_by_check_finite() -> None:
    cache = make_cache(torch.int8)
    play([cache], range(2))
    cache.check_finite()
    q, k, v = chunk_inputs(2, 0, 1)
    v[0, 3, 1, 5] = float("nan")
    out = rope_on_the_fly(q, k, v, cache=cache, layer=1, start_frame=4)
    assert out.isnan().any()  # a NaN never becomes a silent 0: its token's scale is NaN
    with pytest.raises(
        NonFiniteError, match="the values stored in 8 bits in cache layer 1 hold NaN or infinity"
    ):
        cache.check_finite()


def _step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: MemRoPECache, start: int) -> torch.Tensor:
    return rope_on_the_fly(q, k, v, cache=cache, layer=0, start_frame=start)


def _steady_caches(dtype: torch.dtype) -> tuple[MemRoPECache, MemRoPECache]:
    """Two equal one-layer caches past the first eviction (6 chunks played), for eager and compiled calls."""
    eager = make_cache(dtype, layers=1)
    for chunk in range(6):
        for call in range(2):
            _step(*chunk_inputs(chunk, call, 0), eager, 2 * chunk)
    compiled = make_cache(dtype, layers=1)
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


@pytest.mark.parametrize("dtype", KV_DTYPES)
def test_compiled_steady_state_has_no_graph_break_nor_per_chunk_recompile(dtype: torch.dtype) -> None:
    """Dynamo alone (backend "eager": guards and graph breaks do not depend on the backend), chunks 6-9."""
    eager, compiled_cache = _steady_caches(dtype)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(_step, backend=counter, fullgraph=True)
    frames_by_chunk = []
    for chunk in range(6, 10):
        for call in range(2):
            q, k, v = chunk_inputs(chunk, call, 0)
            expected = _step(q, k, v, eager, 2 * chunk)
            torch.testing.assert_close(compiled(q, k, v, compiled_cache, 2 * chunk), expected, rtol=0, atol=0)
        frames_by_chunk.append(counter.frame_count)
    assert frames_by_chunk[1:] == [frames_by_chunk[1]] * 3, frames_by_chunk  # chunk 6 re-ropes after the load
    assert_state_equal(compiled_cache.state_dict(), eager.state_dict())


def test_inductor_compiles_the_float8_advance() -> None:
    """Inductor on the float8 path: evict, shift and write in one graph (codes live in uint8 buffers,
    as inductor cannot copy float8 slices in place)."""
    eager, compiled_cache = _steady_caches(torch.float8_e4m3fn)
    torch._dynamo.reset()
    compiled = torch.compile(_step, backend="inductor", fullgraph=True)
    q, k, v = chunk_inputs(6, 0, 0)
    torch.testing.assert_close(
        compiled(q, k, v, compiled_cache, 12), _step(q, k, v, eager, 12), rtol=1e-5, atol=1e-5
    )
    assert_state_equal(compiled_cache.state_dict(), eager.state_dict())


# ---------------------------------------------------------------- the tiny model, 100 chunks
TINY_CHUNKS = 100
TINY_LATENT_HW = (4, 4)


class _Recorder:
    """The tiny model, recording every call the pipeline makes: its inputs and the flow prediction."""

    def __init__(self) -> None:
        self.model = tiny_model()
        self.config = self.model.config
        self.contexts: list[Any] = []
        self.calls: list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]] = []

    def new_cache(self, *args: Any, **kwargs: Any) -> MemRoPECache:
        return self.model.new_cache(*args, **kwargs)

    def encode_context(self, text_embeds: torch.Tensor) -> Any:
        self.contexts.append(self.model.encode_context(text_embeds))
        return self.contexts[-1]

    def __call__(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        context: Any,
        *,
        cache: MemRoPECache,
        start_frame: int,
    ) -> torch.Tensor:
        flow = self.model(latents, timesteps, context, cache=cache, start_frame=start_frame)
        self.calls.append((latents, timesteps, start_frame, flow))
        return flow


@pytest.fixture(scope="module")
def tiny_run() -> _Recorder:
    """100 chunks of the tiny model with the pipeline and an exact (float32) cache."""
    recorder = _Recorder()
    pipeline = CausalInferencePipeline(recorder, MemRoPEConfig(), denoising_steps=(1000,))  # type: ignore[arg-type]
    embeds = tiny_text_encoder().encode(["a lighthouse at dusk"])
    pipeline.generate(
        embeds, num_frames=TINY_CHUNKS * pipeline.chunk_frames, seed=0, latent_hw=TINY_LATENT_HW
    )
    assert len(recorder.contexts) == 1 and len(recorder.calls) == 2 * TINY_CHUNKS  # 1 step + the context call
    return recorder


@pytest.mark.parametrize("dtype", KV_DTYPES)
def test_tiny_model_flow_error_over_100_chunks_is_within_the_bound(
    tiny_run: _Recorder, dtype: torch.dtype
) -> None:
    """Relative L2 error of every flow prediction <= eps (memrope.kv_storage), over 100 chunks.

    The pipeline's calls are replayed on an 8-bit cache with the same inputs (teacher forcing): the
    errors are the cache's own, not a drift of the video.
    """
    cache = tiny_run.model.new_cache(MemRoPEConfig(), 1, TINY_LATENT_HW, kv_dtype=dtype)
    assert cache.kv_format is not None
    errors = []
    for latents, timesteps, start_frame, flow in tiny_run.calls:
        low = tiny_run.model(latents, timesteps, tiny_run.contexts[0], cache=cache, start_frame=start_frame)
        errors.append(float((low - flow).norm() / flow.norm()))
    assert cache.slot_layout()[3:5] == ["long", "short"]  # after 3 sink frames
    assert max(errors) <= cache.kv_format.precision, max(errors)


def test_pipeline_passes_kv_dtype_to_new_cache() -> None:
    pipeline = CausalInferencePipeline(tiny_model(), CONFIG, denoising_steps=(1000,), kv_dtype="fp8")
    embeds = tiny_text_encoder().encode(["x"])
    pipeline.generate(embeds, num_frames=4, seed=0, latent_hw=(4, 4))
    assert pipeline.cache is not None and pipeline.cache.kv_dtype == torch.float8_e4m3fn


def test_kv_format_decode_into_rounds_once() -> None:
    fmt = FORMATS[torch.float8_e4m3fn]
    assert isinstance(fmt, KVFormat)
    x = torch.randn(1, 4, 2, HEAD_DIM, generator=torch.Generator().manual_seed(0))
    codes, scales = fmt.quantise(x)
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    fmt.decode_into(out, codes, scales)
    assert torch.equal(out, (codes.double() * scales.double()).to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int8])
def test_pipeline_checkpoint_resume_with_8_bit_cache_is_bit_identical(
    dtype: torch.dtype, tmp_path: Path
) -> None:
    path = tmp_path / "run.safetensors"
    embeds = tiny_text_encoder().encode(["x"])
    options: dict[str, Any] = {"num_frames": 21, "seed": 2, "latent_hw": (4, 4)}

    def pipeline() -> CausalInferencePipeline:
        return CausalInferencePipeline(tiny_model(), MemRoPEConfig(), denoising_steps=(1000,), kv_dtype=dtype)

    full = list(pipeline().stream(embeds, save_every=6, checkpoint_path=path, **options))
    resumed = list(pipeline().stream(resume_from=path))  # checkpoint after chunk 5: the memories exist
    assert [c.index for c in resumed] == [6]
    assert torch.equal(resumed[0].latents, full[6].latents)
    saved = load_file(path)
    assert saved["cache.layers.0.keys"].dtype == dtype and "cache.layers.0.long_keys" in saved


def test_prompt_switch_recache_with_8_bit_cache_stays_within_the_bound() -> None:
    encoder = tiny_text_encoder()
    first, second = encoder.encode(["a red kite"]), encoder.encode(["a blue whale"])
    options: dict[str, Any] = {
        "num_frames": 24,
        "seed": 5,
        "latent_hw": (4, 4),
        "prompt_switches": [(15, second)],
    }
    latents = {
        kv: CausalInferencePipeline(
            tiny_model(), MemRoPEConfig(), denoising_steps=(1000,), kv_dtype=kv
        ).generate(first, **options)
        for kv in (None, torch.int8)
    }
    exact, low = latents[None], latents[torch.int8]
    assert float((low - exact).norm() / exact.norm()) <= FORMATS[torch.int8].precision  # type: ignore[union-attr]

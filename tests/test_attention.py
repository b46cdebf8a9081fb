"""attend / rope_on_the_fly against a float64 reference (complex RoPE at slot positions, explicit softmax)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memrope import MemRoPECache, MemRoPEConfig, attend, frame_grid_positions, rope_on_the_fly

SETTINGS = settings(max_examples=25, deadline=None)
FRAME_SHAPE = (2, 3)
TOKENS = 6
HEADS = 2
HEAD_DIM = 12


def rope_params(max_seq_len: int, dim: int, theta: float = 10000.0) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.float64).div(dim)
    freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), 1.0 / torch.pow(theta, exponents))
    return torch.polar(torch.ones_like(freqs), freqs)


def wan_rope_float64(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Wan's float64 complex RoPE of ``x`` ``[B, N, H, D]`` at ``positions`` ``[N, 3]``."""
    d = x.shape[-1]
    c = d // 2
    freqs = torch.cat(
        [
            rope_params(1024, d - 4 * (d // 6)),
            rope_params(1024, 2 * (d // 6)),
            rope_params(1024, 2 * (d // 6)),
        ],
        dim=1,
    )
    tables = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    factors = torch.cat([table[positions[:, axis]] for axis, table in enumerate(tables)], dim=1)
    z = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], c, 2).contiguous())
    return torch.view_as_real(z * factors[None, :, None, :]).flatten(-2)


def softmax_attention_float64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhnm,bmhd->bnhd", scores.softmax(dim=-1), v)


def make_cache(config: MemRoPEConfig, **kwargs: Any) -> MemRoPECache:
    arguments: dict[str, Any] = {
        "num_layers": 1,
        "batch_size": 1,
        "num_heads": HEADS,
        "head_dim": HEAD_DIM,
        "frame_shape": FRAME_SHAPE,
    }
    arguments.update(kwargs)
    return MemRoPECache(config, **arguments)


def reference_output(cache: MemRoPECache, layer: int, start: int, query: torch.Tensor) -> torch.Tensor:
    """What one call must return, from the cache's un-roped contents after the call and its slot layout."""
    keys, values = cache.layer_contents(layer)
    layout = cache.slot_layout(layer)
    first = layout.index(f"f{start}")
    key_positions = frame_grid_positions(range(len(layout)), FRAME_SHAPE)
    query_positions = frame_grid_positions(range(first, first + cache.config.chunk_frames), FRAME_SHAPE)
    return softmax_attention_float64(
        wan_rope_float64(query, query_positions), wan_rope_float64(keys, key_positions), values
    )


# ---------------------------------------------------------------- attend
@pytest.mark.parametrize("shape", [(1, 6, 2, 12, 18), (2, 5, 3, 8, 40), (1, 1, 1, 2, 1)])
def test_attend_is_plain_softmax_attention(shape: tuple[int, ...]) -> None:
    batch, lq, heads, dim, lk = shape
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, lq, heads, dim, generator=gen)
    k = torch.randn(batch, lk, heads, dim, generator=gen)
    v = torch.randn(batch, lk, heads, dim, generator=gen)
    out = attend(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), softmax_attention_float64(q, k, v), rtol=0, atol=1e-5)


def test_attend_keeps_batch_items_independent() -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 4, 2, 8, generator=gen) for _ in range(3))
    out = attend(q, k, v)
    for item in range(3):
        s = slice(item, item + 1)
        torch.testing.assert_close(out[s], attend(q[s], k[s], v[s]), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- rope_on_the_fly
@st.composite
def configs(draw: st.DrawFn) -> MemRoPEConfig:
    policy = draw(st.sampled_from(["memrope", "sink", "full"]))
    sink = draw(st.integers(0, 3))
    chunk = draw(st.integers(1, 3))
    memory = 2 if policy == "memrope" else 0
    pooling = draw(st.sampled_from(["mean", "per_position"]))
    return MemRoPEConfig(
        policy=policy,  # type: ignore[arg-type]
        cache_frames=draw(st.integers(sink + memory + chunk, sink + memory + chunk + 4)),
        sink_frames=sink,
        chunk_frames=chunk,
        alpha_long=draw(st.floats(0.0, 1.0)),
        alpha_short=draw(st.floats(0.0, 1.0)),
        pooling=pooling,  # type: ignore[arg-type]
    )


@SETTINGS
@given(
    config=configs(),
    workspace=st.sampled_from(["per_layer", "shared"]),
    chunks=st.integers(1, 8),
    calls=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_rope_on_the_fly_matches_the_float64_reference(
    config: MemRoPEConfig, workspace: str, chunks: int, calls: int, seed: int
) -> None:
    layers = 2
    cache = make_cache(config, num_layers=layers, key_workspace=workspace)
    gen = torch.Generator().manual_seed(seed)
    tokens = config.chunk_frames * TOKENS
    for chunk in range(chunks):
        start = chunk * config.chunk_frames
        for _call in range(calls):
            for layer in range(
                layers
            ):  # layers interleave, as in a model: the shared workspace changes owner
                q, k, v = (torch.randn(1, tokens, HEADS, HEAD_DIM, generator=gen) for _ in range(3))
                out = rope_on_the_fly(q, k, v, cache=cache, layer=layer, start_frame=start)
                assert out.shape == q.shape and out.dtype == torch.float32
                torch.testing.assert_close(
                    out.double(), reference_output(cache, layer, start, q), rtol=0, atol=2e-5
                )


def test_attention_sees_every_filled_slot_through_views() -> None:
    cache = make_cache(MemRoPEConfig(), num_layers=2)
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seen.append((q, k, v))
        return attend(q, k, v)

    gen = torch.Generator().manual_seed(2)
    for chunk in range(6):
        for layer in range(2):
            q, k, v = (torch.randn(1, 18, HEADS, HEAD_DIM, generator=gen) for _ in range(3))
            rope_on_the_fly(q, k, v, cache=cache, layer=layer, start_frame=3 * chunk, attention=spy)
            rq, rk, rv = seen[-1]
            filled = min(3 * chunk + 3, 12)
            assert rq.shape == (1, 18, HEADS, HEAD_DIM)
            assert rk.shape == rv.shape == (1, filled * TOKENS, HEADS, HEAD_DIM)
            # values are a view of the cache buffer: nothing copied
            values = cache.layer_contents(layer)[1]
            assert rv.data_ptr() == values.data_ptr() and torch.equal(rv, values)
            # the chunk's own fresh keys and values are part of what it attends to
            assert torch.equal(rv[:, -18:], v)


def test_chunk_attends_to_itself_bidirectionally() -> None:
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 18, HEADS, HEAD_DIM, generator=gen) for _ in range(3))
    outputs = []
    for last_value in (0.0, 10.0):
        cache = make_cache(MemRoPEConfig())
        v2 = v.clone()
        v2[:, -1] = last_value
        outputs.append(rope_on_the_fly(q, k, v2, cache=cache, layer=0, start_frame=0))
    # the first token's output depends on the chunk's last token: no causal mask inside a chunk
    assert not torch.allclose(outputs[0][:, 0], outputs[1][:, 0])


def test_mean_memory_tokens_get_a_spatial_phase_from_rope() -> None:
    cache = make_cache(MemRoPEConfig())
    gen = torch.Generator().manual_seed(5)
    for chunk in range(5):
        k, v = (torch.randn(1, 18, HEADS, HEAD_DIM, generator=gen) for _ in range(2))
        context = cache.update(k, v, layer=0, start_frame=3 * chunk)
    keys, _ = cache.layer_contents(0)
    memory = slice(3 * TOKENS, 4 * TOKENS)
    assert torch.equal(keys[:, memory], keys[:, memory][:, :1].expand(1, TOKENS, HEADS, HEAD_DIM))
    roped = context.keys[:, memory]
    assert not torch.allclose(roped[:, 0], roped[:, 1])
    expected = wan_rope_float64(keys[:, memory], frame_grid_positions([3], FRAME_SHAPE))
    torch.testing.assert_close(roped.double(), expected, rtol=0, atol=1e-5)


def test_bf16_cache_follows_the_float32_result() -> None:
    gen = torch.Generator().manual_seed(6)
    caches = {dtype: make_cache(MemRoPEConfig(), dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    for chunk in range(6):
        q, k, v = (torch.randn(1, 18, HEADS, HEAD_DIM, generator=gen) for _ in range(3))
        out32 = rope_on_the_fly(q, k, v, cache=caches[torch.float32], layer=0, start_frame=3 * chunk)
        out16 = rope_on_the_fly(
            q.bfloat16(),
            k.bfloat16(),
            v.bfloat16(),
            cache=caches[torch.bfloat16],
            layer=0,
            start_frame=3 * chunk,
        )
        assert out16.dtype == torch.bfloat16
        torch.testing.assert_close(out16.float(), out32, rtol=0, atol=5e-2)

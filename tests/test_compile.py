"""The per-call step (cache advance/rewrite, RoPE, attention) under ``torch.compile(fullgraph=True)`` on CPU.

The cache keeps its bookkeeping in Python ints and lists, so dynamo specialises on them: every
distinct cache state while filling (and the first eviction) compiles its own graph. Once the cache
is in its steady state the graphs must be reused for every later chunk — a per-chunk recompile
would make a compiled model unusable for long videos.
"""

from __future__ import annotations

import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from memrope import MemRoPECache, MemRoPEConfig, rope_on_the_fly

CONFIG = MemRoPEConfig(
    cache_frames=8, sink_frames=1, chunk_frames=2
)  # 1 sink + 2 memory + 3 recent + 2 chunk
FRAME_SHAPE = (2, 3)
HEADS = 2
HEAD_DIM = 12
TOKENS = CONFIG.chunk_frames * FRAME_SHAPE[0] * FRAME_SHAPE[1]
CHUNKS = 10  # filling: chunks 0-3, first eviction: chunk 4, steady state from chunk 5
STEADY_FROM = 6
RECOMPILE_LIMIT = 32


def make_cache() -> MemRoPECache:
    return MemRoPECache(
        CONFIG, num_layers=1, batch_size=1, num_heads=HEADS, head_dim=HEAD_DIM, frame_shape=FRAME_SHAPE
    )


def step(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cache: MemRoPECache, start: int
) -> torch.Tensor:
    return rope_on_the_fly(query, key, value, cache=cache, layer=0, start_frame=start)


def test_compiled_step_matches_eager_without_per_chunk_recompiles() -> None:
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    eager_cache, compiled_cache = make_cache(), make_cache()
    gen = torch.Generator().manual_seed(0)
    frames_by_chunk = []
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        for chunk in range(CHUNKS):
            start = chunk * CONFIG.chunk_frames
            for _call in range(2):  # an advance call, then a rewrite call of the same chunk
                q, k, v = (torch.randn(1, TOKENS, HEADS, HEAD_DIM, generator=gen) for _ in range(3))
                expected = step(q, k, v, eager_cache, start)
                got = compiled(q, k, v, compiled_cache, start)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
                assert compiled_cache.slot_layout() == eager_cache.slot_layout()
            frames_by_chunk.append(counter.frame_count)
    assert eager_cache.slot_layout()[:3] == ["f0", "long", "short"]  # past the first eviction
    for name, tensor in eager_cache.state_dict().items():
        torch.testing.assert_close(compiled_cache.state_dict()[name], tensor, rtol=1e-6, atol=1e-6)
    # no graph breaks (fullgraph) and a bounded number of graphs, none added in the steady state
    assert counter.frame_count < RECOMPILE_LIMIT
    assert frames_by_chunk[STEADY_FROM:] == [frames_by_chunk[STEADY_FROM]] * (CHUNKS - STEADY_FROM), (
        frames_by_chunk
    )

"""A cache policy defined outside the package: registered once, then used like a built-in one.

``RunningMeanPolicy`` keeps one memory slot, ``"history"``: the mean of every frame ever evicted
(with its count as policy state). It goes through the cache (layout, roles, memory), the pipeline,
checkpoint resume and state validation without any change to memrope.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memrope import MemRoPECache, MemRoPEConfig
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.pipeline import CausalInferencePipeline
from memrope.policies import CachePolicy, MemorySlot, available_policies, get_policy, register_policy

FRAME_SHAPE = (2, 3)
HEADS, HEAD_DIM = 2, 8


@register_policy
class RunningMeanPolicy(CachePolicy):
    """One memory slot holding the running mean of all evicted frames."""

    name = "running_mean"
    memory_slots = ("history",)

    def memory_shapes(self) -> dict[str, tuple[int, ...]]:
        g = self.geometry
        frame = (g.batch_size, g.frame_seqlen, g.num_heads, g.head_dim)
        return {"mean_keys": frame, "mean_values": frame, "count": (1,)}

    def evict(
        self, memory: dict[str, torch.Tensor], keys: torch.Tensor, values: torch.Tensor
    ) -> list[MemorySlot]:
        tokens = self.geometry.frame_seqlen
        frames = keys.shape[1] // tokens
        blocks = {"mean_keys": keys, "mean_values": values}
        if not memory:
            memory["count"] = torch.zeros(1, dtype=self.geometry.memory_dtype, device=keys.device)
            for name, block in blocks.items():
                memory[name] = torch.zeros_like(block[:, :tokens], dtype=self.geometry.memory_dtype)
        total = memory["count"] + frames
        for name, block in blocks.items():
            frame_sum = block.to(self.geometry.memory_dtype).unflatten(1, (frames, tokens)).sum(dim=1)
            memory[name].copy_((memory[name] * memory["count"] + frame_sum) / total)
        memory["count"].copy_(total)
        return [(memory["mean_keys"], memory["mean_values"])]


CONFIG = MemRoPEConfig(policy="running_mean", cache_frames=7, sink_frames=1, chunk_frames=2)


def make_cache(config: MemRoPEConfig = CONFIG) -> MemRoPECache:
    return MemRoPECache(
        config, num_layers=1, batch_size=1, num_heads=HEADS, head_dim=HEAD_DIM, frame_shape=FRAME_SHAPE
    )


def frame(index: int) -> torch.Tensor:
    return torch.full((1, 6, HEADS, HEAD_DIM), float(index))


def test_registered_policy_is_available_and_sized_by_its_memory_slots() -> None:
    assert available_policies()[:3] == ("memrope", "sink", "full")
    assert "running_mean" in available_policies() and get_policy("running_mean") is RunningMeanPolicy
    assert (CONFIG.memory_frames, CONFIG.recent_frames, CONFIG.bounded) == (1, 3, True)
    with pytest.raises(
        ValueError, match=r"cache_frames must be >= sink_frames \+ 1 memory frames \+ chunk_frames = 4"
    ):
        MemRoPEConfig(policy="running_mean", cache_frames=3, sink_frames=1, chunk_frames=2)
    with pytest.raises(
        ValueError, match=r"policy must be one of \('memrope', 'sink', 'full', .*'running_mean'"
    ):
        MemRoPEConfig(policy="running_means")
    with pytest.raises(ValueError, match="a cache policy named 'memrope' is already registered"):
        register_policy(type("Other", (CachePolicy,), {"name": "memrope"}))


def test_cache_layout_roles_and_memory_follow_the_policy() -> None:
    cache = make_cache()
    for chunk in range(6):
        start = 2 * chunk
        block = torch.cat([frame(start), frame(start + 1)], dim=1)
        cache.update(block, block, layer=0, start_frame=start)
    # filled 0..6 then evictions of frames 1,2 (first: slot 1 held frame 1, evicted block starts at slot 2)
    assert cache.slot_layout() == ["f0", "history", "f7", "f8", "f9", "f10", "f11"]
    assert cache.slot_roles() == ["sink", "history", "recent", "recent", "recent", "current", "current"]
    assert cache.role_names == ("sink", "history", "recent", "current")
    memory = cache.layers[0].memory
    evicted = [2, 3, 4, 5, 6]  # each eviction takes the oldest frames after the memory slot
    assert float(memory["count"]) == len(evicted)
    torch.testing.assert_close(memory["mean_keys"], frame(0)[:, :6] + sum(evicted) / len(evicted))
    keys, _ = cache.layer_contents(0)
    torch.testing.assert_close(keys[:, 6:12], memory["mean_keys"])


def test_policy_state_may_not_shadow_the_cache_s_own_entries() -> None:
    @register_policy
    class Clashing(RunningMeanPolicy):
        name = "clashing_mean"

        def memory_shapes(self) -> dict[str, tuple[int, ...]]:
            return {"keys": (1,)}

    with pytest.raises(ValueError, match=r"policy 'clashing_mean' names memory tensors \['keys'\]"):
        make_cache(MemRoPEConfig(policy="clashing_mean", cache_frames=7, sink_frames=1, chunk_frames=2))


def test_state_round_trips_and_is_refused_by_other_policies() -> None:
    cache = make_cache()
    for chunk in range(6):
        block = torch.randn(1, 12, HEADS, HEAD_DIM)
        cache.update(block, block, layer=0, start_frame=2 * chunk)
    state = cache.state_dict()
    assert {"layers.0.keys", "layers.0.mean_keys", "layers.0.count"} <= set(state)
    restored = make_cache()
    restored.load_state_dict(state)
    assert restored.slot_layout() == cache.slot_layout()
    assert torch.equal(restored.layers[0].memory["count"], cache.layers[0].memory["count"])
    sink = make_cache(MemRoPEConfig(policy="sink", cache_frames=7, sink_frames=1, chunk_frames=2))
    with pytest.raises(ValueError, match=r"policy='running_mean' \(this cache: 'sink'\)"):
        sink.load_state_dict(state)


def test_pipeline_generates_and_resumes_bit_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = WanConfig(
        dim=32,
        ffn_dim=64,
        num_heads=2,
        num_layers=2,
        in_dim=4,
        out_dim=4,
        text_dim=8,
        text_len=6,
        freq_dim=16,
    )
    model = CausalWanModel(config).eval()
    prompt = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "run.safetensors"
    pipe = CausalInferencePipeline(model, CONFIG)
    full = list(
        pipe.stream(prompt, num_frames=16, seed=3, latent_hw=(4, 6), save_every=4, checkpoint_path=path)
    )
    assert len(full) == 8 and all(torch.isfinite(chunk.latents).all() for chunk in full)
    assert pipe.cache is not None and "history" in pipe.cache.slot_layout()
    resumed = list(CausalInferencePipeline(model, CONFIG).stream(resume_from=path))
    assert [chunk.index for chunk in resumed] == [8 - len(resumed) + i for i in range(len(resumed))]
    for got, expected in zip(resumed, full[-len(resumed) :]):
        assert torch.equal(got.latents, expected.latents)


def test_attention_diagnostics_show_the_policy_s_memory_as_its_own_role(tmp_path: Path) -> None:
    from memrope.attention import rope_on_the_fly
    from memrope.diagnostics import AttentionMassRecorder, load_attention_mass, mean_shares_per_chunk

    generator = torch.Generator().manual_seed(0)
    mean_cache = make_cache()
    memrope_cache = make_cache(MemRoPEConfig(cache_frames=7, sink_frames=1, chunk_frames=2))
    recorder = AttentionMassRecorder()
    recorder.attach(mean_cache)
    recorder.attach(memrope_cache)
    for chunk in range(6):
        for cache in (mean_cache, memrope_cache):
            query, key, value = (torch.randn(1, 12, HEADS, HEAD_DIM, generator=generator) for _ in range(3))
            rope_on_the_fly(query, key, value, cache=cache, layer=0, start_frame=2 * chunk)
    assert recorder.roles == ("sink", "history", "long", "short", "recent", "current")
    history_records = [record for record in recorder.records if record["cache"] == 0]
    assert [record["shares"]["history"] > 0 for record in history_records] == [False] * 3 + [True] * 3
    assert all(record["shares"]["long"] == 0 for record in history_records)
    assert all(record["shares"]["history"] == 0 for record in recorder.records if record["cache"] == 1)
    for record in recorder.records:
        assert list(record["shares"]) == list(recorder.roles)
        assert sum(record["shares"].values()) == pytest.approx(1.0, abs=1e-5)
    loaded = load_attention_mass(recorder.save(tmp_path / "stats.json"))
    assert loaded["roles"] == list(recorder.roles)
    assert [layout["policy"] for layout in loaded["caches"]] == ["running_mean", "memrope"]
    assert mean_shares_per_chunk(history_records)[5]["history"] > 0
    pytest.importorskip("matplotlib")
    from memrope.diagnostics import plot_attention_mass

    assert plot_attention_mass(loaded, tmp_path / "stats.png").read_bytes().startswith(b"\x89PNG")

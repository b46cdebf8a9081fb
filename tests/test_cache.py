"""MemRoPECache: layouts (docs/design.md §4-§6), EMA memories, bounded size, call protocol, state and errors.

Keys and values are tagged: every global frame has its own deterministic random block whose
channel 0 holds the frame id, so a slot's contents say which frame sits there. A small reference
model of the slot layout and the memories (float64, written from docs/design.md) checks every policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from memrope import MemRoPECache, MemRoPEConfig, RotaryEmbedding, frame_grid_positions, rope_on_the_fly

SETTINGS = settings(max_examples=30, deadline=None)
FRAME_SHAPE = (2, 3)
HEADS = 2
HEAD_DIM = 8


# ---------------------------------------------------------------- helpers
def make_cache(
    config: MemRoPEConfig | None = None,
    *,
    layers: int = 1,
    batch: int = 1,
    heads: int = HEADS,
    head_dim: int = HEAD_DIM,
    frame_shape: tuple[int, int] = FRAME_SHAPE,
    dtype: torch.dtype = torch.float32,
    key_workspace: str = "per_layer",
    **config_kwargs: Any,
) -> MemRoPECache:
    if config is None:
        config = MemRoPEConfig(**config_kwargs)
    return MemRoPECache(
        config,
        num_layers=layers,
        batch_size=batch,
        num_heads=heads,
        head_dim=head_dim,
        frame_shape=frame_shape,
        dtype=dtype,
        key_workspace=key_workspace,  # type: ignore[arg-type]
    )


def frame_block(cache: MemRoPECache, frame: int, kind: str, *, layer: int = 0, salt: int = 0) -> torch.Tensor:
    """Deterministic ``[B, P, H, D]`` block of one frame; channel 0 of keys holds the frame id."""
    seed = ((frame * 7 + layer) * 5 + salt) * 3 + "kvq".index(kind)
    gen = torch.Generator().manual_seed(seed)
    shape = (cache.batch_size, cache.frame_seqlen, cache.num_heads, cache.head_dim)
    block = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "k":
        block[..., 0] = frame
    return block.to(cache.dtype)


def chunk_block(
    cache: MemRoPECache, start: int, kind: str, *, layer: int = 0, salt: int = 0, frames: int | None = None
) -> torch.Tensor:
    count = cache.config.chunk_frames if frames is None else frames
    return torch.cat(
        [frame_block(cache, f, kind, layer=layer, salt=salt) for f in range(start, start + count)], dim=1
    )


def play_chunk(
    cache: MemRoPECache, chunk_index: int, *, calls: int = 2, attend: bool = True
) -> list[torch.Tensor]:
    """All calls of one chunk on every layer (the last call writes the clean blocks, salt 0)."""
    start = chunk_index * cache.config.chunk_frames
    outputs = []
    for call in range(calls):
        salt = calls - 1 - call
        for layer in range(cache.num_layers):
            k = chunk_block(cache, start, "k", layer=layer, salt=salt)
            v = chunk_block(cache, start, "v", layer=layer, salt=salt)
            if attend:
                q = chunk_block(cache, start, "q", layer=layer, salt=salt)
                outputs.append(rope_on_the_fly(q, k, v, cache=cache, layer=layer, start_frame=start))
            else:
                cache.update(k, v, layer=layer, start_frame=start)
    return outputs


def snapshot(cache: MemRoPECache) -> dict[str, Any]:
    return {
        "state": {k: v.clone() for k, v in cache.state_dict().items()},
        "layout": [cache.slot_layout(i) for i in range(cache.num_layers)],
    }


def assert_same_snapshot(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["layout"] == b["layout"]
    assert a["state"].keys() == b["state"].keys()
    for name in a["state"]:
        assert a["state"][name].dtype == b["state"][name].dtype, name
        assert torch.equal(a["state"][name], b["state"][name]), name


def slot_block(cache: MemRoPECache, slot: int, *, layer: int = 0, which: str = "keys") -> torch.Tensor:
    keys, values = cache.layer_contents(layer)
    tensor = keys if which == "keys" else values
    p = cache.frame_seqlen
    return tensor[:, slot * p : (slot + 1) * p]


class Reference:
    """The design page's slot layout and EMA memories, in float64, for one layer.

    Slots hold the chunk's final (clean, salt 0) blocks, except the sink slots of a chunk that
    starts after frame 0: rewrite calls never write those (docs/design.md §3), so they keep the
    blocks of the chunk's first call (salt ``first_salt``).
    """

    def __init__(self, cache: MemRoPECache, layer: int = 0) -> None:
        self.cache = cache
        self.config = cache.config
        self.layer = layer
        self.slots: list[int | str] = []
        self.salts: dict[int, int] = {}
        self.memory: dict[str, torch.Tensor] = {}
        self.pooled: list[dict[str, torch.Tensor]] = []

    def block(self, frame: int, kind: str) -> torch.Tensor:
        salt = self.salts.get(frame, 0)
        return frame_block(self.cache, frame, kind, layer=self.layer, salt=salt).to(torch.float64)

    def record_salts(self, start: int, first_salt: int) -> None:
        """Which call's blocks each frame of the chunk at ``start`` keeps, given its slot."""
        protect = self.config.protect_sink_on_rewrite and start > 0
        for offset in range(self.config.chunk_frames):
            slot = len(self.slots) - self.config.chunk_frames + offset
            if protect and slot < self.config.sink_frames:
                self.salts[start + offset] = first_salt

    def pool(self, frames: list[int], kind: str) -> torch.Tensor:
        blocks = torch.stack([self.block(f, kind) for f in frames], dim=1)  # [B, F, P, H, D]
        if self.config.pooling == "mean":
            return blocks.mean(dim=(1, 2)).unsqueeze(1)
        return blocks.mean(dim=1)

    def short_rate(self, pooled_keys: torch.Tensor) -> torch.Tensor | float:
        if not self.config.adaptive_short_rate:
            return self.config.alpha_short
        motion = (pooled_keys - self.memory["short_keys"]).norm(dim=-1).mean(dim=-1)
        motion = motion / (motion.amax(dim=1, keepdim=True) + 1e-8)
        return (self.config.alpha_short * (0.1 + 4.9 * motion))[:, :, None, None]

    def advance(self, start: int, *, first_salt: int = 1) -> None:
        """The chunk at ``start`` arrives; its first call wrote salt ``first_salt`` (``play_chunk``'s)."""
        config = self.config
        new: list[int | str] = list(range(start, start + config.chunk_frames))
        if not config.bounded or len(self.slots) + config.chunk_frames <= config.cache_frames:
            self.slots += new
            self.record_salts(start, first_salt)
            return
        n_ev = len(self.slots) + config.chunk_frames - config.cache_frames
        lo = config.sink_frames + config.memory_frames
        evicted = self.slots[lo : lo + n_ev]
        assert all(isinstance(f, int) for f in evicted)
        if config.policy == "memrope":
            pooled = {name: self.pool(evicted, name[0]) for name in ("keys", "values")}  # type: ignore[arg-type]
            self.pooled.append(pooled)
            if not self.memory:
                for name in ("keys", "values"):
                    self.memory[f"long_{name}"] = pooled[name].clone()
                    self.memory[f"short_{name}"] = pooled[name].clone()
            else:
                rate = self.short_rate(pooled["keys"])
                for name in ("keys", "values"):
                    a = config.alpha_long
                    self.memory[f"long_{name}"] = a * pooled[name] + (1 - a) * self.memory[f"long_{name}"]
                    self.memory[f"short_{name}"] = (
                        rate * pooled[name] + (1 - rate) * self.memory[f"short_{name}"]
                    )
            self.slots = self.slots[: config.sink_frames] + ["long", "short"] + self.slots[lo + n_ev :] + new
        else:
            self.slots = self.slots[: config.sink_frames] + self.slots[lo + n_ev :] + new

    def labels(self) -> list[str]:
        return [s if isinstance(s, str) else f"f{s}" for s in self.slots]

    def check(self, atol: float = 1e-5) -> None:
        cache, layer = self.cache, self.layer
        assert cache.slot_layout(layer) == self.labels()
        state = cache.state_dict()
        for slot, what in enumerate(self.slots):
            for which in ("keys", "values"):
                got = slot_block(cache, slot, layer=layer, which=which)
                if isinstance(what, int):
                    assert torch.equal(got, self.block(what, which[0]).to(cache.dtype)), (slot, what, which)
                else:
                    memory = self.memory[f"{what}_{which}"].expand_as(got)
                    torch.testing.assert_close(got.double(), memory, rtol=0, atol=atol)
        for name, value in self.memory.items():
            got = state[f"layers.{layer}.{name}"]
            assert got.dtype == (cache.config.memory_dtype or cache.dtype)
            torch.testing.assert_close(got.double(), value, rtol=0, atol=atol)
        if not self.memory:
            assert not any(name.startswith(f"layers.{layer}.long") for name in state)


@st.composite
def bounded_configs(draw: st.DrawFn, policies: tuple[str, ...] = ("memrope", "sink")) -> MemRoPEConfig:
    policy = draw(st.sampled_from(policies))
    sink = draw(st.integers(0, 4))
    chunk = draw(st.integers(1, 4))
    memory = 2 if policy == "memrope" else 0
    cache_frames = draw(st.integers(sink + memory + chunk, sink + memory + chunk + 5))
    pooling = draw(st.sampled_from(["mean", "per_position"]))
    adaptive = pooling == "per_position" and draw(st.booleans())
    # adaptive rates reach 5 * alpha_short: up to 0.3 (rate 1.5, over-relaxed but stable, as official
    # configurations use); above 0.4 the short memory diverges and float32 cannot track float64
    alpha_short = draw(st.floats(0.0, 0.3 if adaptive else 1.0))
    return MemRoPEConfig(
        policy=policy,  # type: ignore[arg-type]
        cache_frames=cache_frames,
        sink_frames=sink,
        chunk_frames=chunk,
        alpha_long=draw(st.floats(0.0, 1.0)),
        alpha_short=alpha_short,
        pooling=pooling,  # type: ignore[arg-type]
        adaptive_short_rate=adaptive,
        protect_sink_on_rewrite=draw(st.booleans()),
    )


# ---------------------------------------------------------------- layouts of docs/design.md
def test_filling_phase_appends_chunks() -> None:
    cache = make_cache()
    for chunk in range(4):
        play_chunk(cache, chunk)
        assert cache.slot_layout() == [f"f{f}" for f in range(3 * chunk + 3)]
    for slot in range(12):
        assert torch.equal(slot_block(cache, slot), frame_block(cache, slot, "k"))
        assert torch.equal(slot_block(cache, slot, which="values"), frame_block(cache, slot, "v"))
    assert "f" + "11" in cache.summary() and "12 = 3 sink + 2 memory + 4 recent + 3 chunk" in cache.summary()


def test_memrope_first_eviction_follows_spec() -> None:
    cache = make_cache()
    for chunk in range(5):
        play_chunk(cache, chunk)
    layout = cache.slot_layout()
    assert layout == ["f0", "f1", "f2", "long", "short", "f8", "f9", "f10", "f11", "f12", "f13", "f14"]
    assert "f3" not in layout and "f4" not in layout  # dropped by the official first-eviction quirk
    tagged = [int(slot_block(cache, s)[0, 0, 0, 0]) for s in range(12)]
    assert tagged == [0, 1, 2, 6, 6, 8, 9, 10, 11, 12, 13, 14]  # memory tag = mean of frames 5, 6, 7
    for which, kind in (("keys", "k"), ("values", "v")):
        expected = (
            torch.cat([frame_block(cache, f, kind) for f in (5, 6, 7)], dim=1)
            .double()
            .mean(dim=1, keepdim=True)
        )
        state = cache.state_dict()
        for memory in ("long", "short"):
            torch.testing.assert_close(
                state[f"layers.0.{memory}_{which}"].double(), expected, rtol=0, atol=1e-6
            )
        for slot in (3, 4):  # spatially constant before RoPE
            torch.testing.assert_close(
                slot_block(cache, slot, which=which).double(),
                expected.expand(1, 6, HEADS, HEAD_DIM),
                rtol=0,
                atol=1e-6,
            )
    for slot, frame in [(0, 0), (1, 1), (2, 2), *[(5 + i, 8 + i) for i in range(7)]]:
        assert torch.equal(slot_block(cache, slot), frame_block(cache, frame, "k"))


def test_memrope_later_eviction_updates_both_emas() -> None:
    cache = make_cache(alpha_long=0.25, alpha_short=0.5)
    for chunk in range(6):
        play_chunk(cache, chunk)
    assert cache.slot_layout() == ["f0", "f1", "f2", "long", "short", *[f"f{f}" for f in range(11, 18)]]
    first = (
        torch.cat([frame_block(cache, f, "k") for f in (5, 6, 7)], dim=1).double().mean(dim=1, keepdim=True)
    )
    second = (
        torch.cat([frame_block(cache, f, "k") for f in (8, 9, 10)], dim=1).double().mean(dim=1, keepdim=True)
    )
    state = cache.state_dict()
    torch.testing.assert_close(
        state["layers.0.long_keys"].double(), 0.25 * second + 0.75 * first, rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        state["layers.0.short_keys"].double(), 0.5 * second + 0.5 * first, rtol=0, atol=1e-6
    )


def test_sink_policy_follows_spec() -> None:
    cache = make_cache(policy="sink")
    for chunk in range(5):
        play_chunk(cache, chunk)
    assert cache.slot_layout() == ["f0", "f1", "f2", *[f"f{f}" for f in range(6, 15)]]
    assert "layers.0.long_keys" not in cache.state_dict()


@SETTINGS
@given(
    config=bounded_configs(),
    chunks=st.integers(1, 9),
    layers=st.integers(1, 2),
    workspace=st.sampled_from(["per_layer", "shared"]),
)
def test_bounded_policies_match_the_reference(
    config: MemRoPEConfig, chunks: int, layers: int, workspace: str
) -> None:
    cache = make_cache(config, layers=layers, key_workspace=workspace)
    references = [Reference(cache, layer) for layer in range(layers)]
    for chunk in range(chunks):
        play_chunk(cache, chunk, attend=False)
        for reference in references:
            reference.advance(chunk * config.chunk_frames)
            reference.check()


@SETTINGS
@given(config=bounded_configs(policies=("sink",)), chunks=st.integers(1, 10))
def test_sink_policy_keeps_exactly_the_newest_non_sink_frames(config: MemRoPEConfig, chunks: int) -> None:
    cache = make_cache(config)
    for chunk in range(chunks):
        play_chunk(cache, chunk, attend=False)
        end = (chunk + 1) * config.chunk_frames
        sink = min(config.sink_frames, end)
        kept = min(end - sink, config.cache_frames - config.sink_frames)
        frames = list(range(sink)) + list(range(end - kept, end))
        assert cache.slot_layout() == [f"f{f}" for f in frames]
        tags = [int(slot_block(cache, slot)[0, 0, 0, 0]) for slot in range(len(frames))]
        assert tags == frames


# ---------------------------------------------------------------- full policy
def test_full_policy_grows_and_keeps_global_positions() -> None:
    cache = make_cache(policy="full", chunk_frames=2, max_positions=64)
    initial_capacity = cache.capacity_frames
    for chunk in range(10):
        out = play_chunk(cache, chunk)[-1]
        assert cache.slot_layout() == [f"f{f}" for f in range(2 * chunk + 2)]
        assert out.shape == (1, 12, HEADS, HEAD_DIM)
    assert cache.capacity_frames >= 20 > initial_capacity
    for slot in range(20):
        # frame 2 is a sink frame of the chunk starting at frame 2: it keeps its first call's block (salt 1)
        salt = 1 if slot == 2 else 0
        assert torch.equal(slot_block(cache, slot), frame_block(cache, slot, "k", salt=salt))
    context = cache.update(chunk_block(cache, 18, "k"), chunk_block(cache, 18, "v"), layer=0, start_frame=18)
    cos, sin = cache.rope.cos_sin(frame_grid_positions(range(18, 20), FRAME_SHAPE))
    assert torch.equal(context.query_cos, cos) and torch.equal(context.query_sin, sin)
    assert context.keys.shape[1] == 20 * 6


def test_full_policy_refuses_to_pass_the_rope_table() -> None:
    cache = make_cache(policy="full", chunk_frames=3, max_positions=10)
    for chunk in range(3):
        play_chunk(cache, chunk)
    before = snapshot(cache)
    with pytest.raises(
        ValueError,
        match=r"start_frame \+ chunk_frames = 12 frames exceed the RoPE table \(max_positions=10\) of the "
        r"unbounded 'full' policy",
    ):
        play_chunk(cache, 3)
    assert_same_snapshot(before, snapshot(cache))
    play_chunk(cache, 2, calls=1)  # the current chunk can still be rewritten


# ---------------------------------------------------------------- bounded size and positions
@pytest.mark.parametrize("policy", ["memrope", "sink"])
@pytest.mark.parametrize("workspace", ["per_layer", "shared"])
def test_cache_size_is_constant(policy: str, workspace: str) -> None:
    cache = make_cache(policy=policy, layers=2, key_workspace=workspace)
    memory_bytes = 0
    if (
        policy == "memrope"
    ):  # four [B, 1, H, D] float32 accumulators per layer, allocated at the first eviction
        memory_bytes = 2 * 4 * HEADS * HEAD_DIM * 4
    shapes = [
        (s.keys.shape, s.values.shape, None if s.keys_roped is None else s.keys_roped.shape)
        for s in cache.layers
    ]
    pointers = [(s.keys.data_ptr(), s.values.data_ptr()) for s in cache.layers]
    empty = cache.resident_bytes()
    for chunk in range(40):
        play_chunk(cache, chunk)
        full = chunk * 3 + 3 > 12
        assert cache.resident_bytes() == empty + (memory_bytes if full else 0)
        assert [
            (s.keys.shape, s.values.shape, None if s.keys_roped is None else s.keys_roped.shape)
            for s in cache.layers
        ] == shapes
        assert [(s.keys.data_ptr(), s.values.data_ptr()) for s in cache.layers] == pointers
        assert all(len(cache.slot_layout(i)) == min(3 * chunk + 3, 12) for i in range(2))


@SETTINGS
@given(config=bounded_configs(), chunks=st.integers(1, 10))
def test_sink_slots_never_change_once_written(config: MemRoPEConfig, chunks: int) -> None:
    cache = make_cache(config, layers=2)
    sink = config.sink_frames
    sink_chunks = math.ceil(sink / config.chunk_frames)
    reference: torch.Tensor | None = None
    for chunk in range(chunks):
        play_chunk(cache, chunk, calls=3)
        if chunk + 1 >= sink_chunks:
            tokens = sink * cache.frame_seqlen
            now = torch.cat([torch.cat(cache.layer_contents(i), dim=-1)[:, :tokens] for i in range(2)])
            if reference is None:
                reference = now.clone()
            assert torch.equal(now, reference)
            assert cache.slot_layout()[:sink] == [f"f{f}" for f in range(sink)]


@SETTINGS
@given(config=bounded_configs(), chunks=st.integers(1, 12))
def test_slot_positions_stay_inside_the_cache(config: MemRoPEConfig, chunks: int) -> None:
    # a RoPE table only as long as the cache (or the frame grid): an absolute position past it would raise
    table = max(config.cache_frames, *FRAME_SHAPE)
    config = MemRoPEConfig.from_dict({**config.to_dict(), "max_positions": table})
    cache = make_cache(config)
    rope = cache.rope
    for chunk in range(chunks):
        start = chunk * config.chunk_frames
        for salt in (1, 0):
            k = chunk_block(cache, start, "k", salt=salt)
            context = cache.update(k, chunk_block(cache, start, "v", salt=salt), layer=0, start_frame=start)
            layout = cache.slot_layout()
            first = layout.index(f"f{start}")
            assert layout[first:] == [f"f{f}" for f in range(start, start + config.chunk_frames)]
            assert 0 <= first and first + config.chunk_frames <= config.cache_frames
            cos, sin = rope.cos_sin(
                frame_grid_positions(range(first, first + config.chunk_frames), FRAME_SHAPE)
            )
            assert torch.equal(context.query_cos, cos) and torch.equal(context.query_sin, sin)
            keys, _ = cache.layer_contents(0)
            slot_cos, slot_sin = rope.cos_sin(frame_grid_positions(range(len(layout)), FRAME_SHAPE))
            torch.testing.assert_close(context.keys, rope.apply(keys, slot_cos, slot_sin), rtol=0, atol=0)
    last_frame = chunks * config.chunk_frames - 1
    assert last_frame < table or f"f{last_frame}" in cache.slot_layout()  # frames past the table are cached


# ---------------------------------------------------------------- call protocol
@SETTINGS
@given(
    config=bounded_configs(policies=("memrope", "sink", "full")),
    chunks=st.integers(1, 7),
    seed=st.integers(0, 1000),
)
def test_rewrite_is_idempotent(config: MemRoPEConfig, chunks: int, seed: int) -> None:
    cache = make_cache(config, layers=2)
    for chunk in range(chunks):
        start = chunk * config.chunk_frames
        for layer in range(2):
            q, k, v = (chunk_block(cache, start, kind, layer=layer, salt=seed % 7 + 1) for kind in "qkv")
            first = rope_on_the_fly(q, k, v, cache=cache, layer=layer, start_frame=start)
            after_advance = snapshot(cache)
            # the same input again is a rewrite that changes nothing
            again = rope_on_the_fly(q, k, v, cache=cache, layer=layer, start_frame=start)
            assert torch.equal(first, again)
            assert_same_snapshot(after_advance, snapshot(cache))
            # a different rewrite twice: same cache and same output both times
            q2, k2, v2 = (chunk_block(cache, start, kind, layer=layer) for kind in "qkv")
            out_a = rope_on_the_fly(q2, k2, v2, cache=cache, layer=layer, start_frame=start)
            state_a = snapshot(cache)
            out_b = rope_on_the_fly(q2, k2, v2, cache=cache, layer=layer, start_frame=start)
            assert torch.equal(out_a, out_b)
            assert_same_snapshot(state_a, snapshot(cache))


def test_rewrite_changes_only_the_chunk_slots() -> None:
    cache = make_cache(layers=2)
    for chunk in range(7):
        play_chunk(cache, chunk)
    before = cache.state_dict()
    k = torch.full((1, 18, HEADS, HEAD_DIM), 5.0)
    cache.update(k, -k, layer=1, start_frame=18)
    after = cache.state_dict()
    for name in before:
        if name in ("layers.1.keys", "layers.1.values"):
            assert torch.equal(after[name][:, : 9 * 6], before[name][:, : 9 * 6])
            assert not torch.equal(after[name][:, 9 * 6 :], before[name][:, 9 * 6 :])
        else:
            assert torch.equal(after[name], before[name]), name
    assert torch.equal(cache.layer_contents(1)[0][:, 9 * 6 :], k)


# ---------------------------------------------------------------- batch, state, workspace
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"policy": "sink"},
        {"policy": "full"},
        {"pooling": "per_position", "adaptive_short_rate": True, "alpha_short": 0.2},
    ],
    ids=["memrope", "sink", "full", "adaptive"],
)
def test_batch_of_two_equals_two_runs_of_one(options: dict[str, Any]) -> None:
    pair = make_cache(batch=2, layers=2, **options)
    singles = [make_cache(batch=1, layers=2, **options) for _ in range(2)]
    gen = torch.Generator().manual_seed(3)
    for chunk in range(7):
        start = chunk * 3
        for _call in range(2):
            for layer in range(2):
                q, k, v = (torch.randn(2, 18, HEADS, HEAD_DIM, generator=gen) for _ in range(3))
                out = rope_on_the_fly(q, k, v, cache=pair, layer=layer, start_frame=start)
                for item, single in enumerate(singles):
                    s = slice(item, item + 1)
                    expected = rope_on_the_fly(q[s], k[s], v[s], cache=single, layer=layer, start_frame=start)
                    torch.testing.assert_close(out[s], expected, rtol=1e-6, atol=1e-6)
    for item, single in enumerate(singles):
        for name, tensor in single.state_dict().items():
            batched = pair.state_dict()[name]
            if name == "meta.layout":
                continue  # records the batch size, which differs on purpose
            if name.endswith(("counters", "slot_frames")):
                assert torch.equal(batched, tensor)
            else:
                torch.testing.assert_close(batched[item : item + 1], tensor, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"policy": "sink"},
        {"policy": "full"},
        {"pooling": "per_position", "adaptive_short_rate": True, "alpha_short": 0.2},
        {"memory_dtype": None},
        {"key_workspace": "shared"},
        {"dtype": torch.bfloat16},
    ],
    ids=["memrope", "sink", "full", "adaptive", "memory-in-cache-dtype", "shared", "bf16"],
)
@pytest.mark.parametrize("mid_chunk", [False, True], ids=["boundary", "mid-chunk"])
def test_state_dict_round_trip_resumes_bit_identically(
    tmp_path: Any, options: dict[str, Any], mid_chunk: bool
) -> None:
    cache_kwargs = {name: options.pop(name) for name in ("key_workspace", "dtype") if name in options}
    original = make_cache(layers=2, **cache_kwargs, **options)
    for chunk in range(6):
        play_chunk(original, chunk)
    if mid_chunk:  # the advance call of chunk 6 done on both layers, its rewrite still to come
        start = 18
        for layer in range(2):
            q, k, v = (chunk_block(original, start, kind, layer=layer, salt=1) for kind in "qkv")
            rope_on_the_fly(q, k, v, cache=original, layer=layer, start_frame=start)
    path = tmp_path / "cache.safetensors"
    save_file(original.state_dict(), str(path))
    resumed = make_cache(layers=2, **cache_kwargs, **options)
    resumed.load_state_dict(load_file(str(path)))
    assert_same_snapshot(snapshot(original), snapshot(resumed))
    if mid_chunk:
        for layer in range(2):
            q, k, v = (chunk_block(original, 18, kind, layer=layer) for kind in "qkv")
            a = rope_on_the_fly(q, k, v, cache=original, layer=layer, start_frame=18)
            b = rope_on_the_fly(q, k, v, cache=resumed, layer=layer, start_frame=18)
            assert torch.equal(a, b)
    for chunk in range(7 if mid_chunk else 6, 11):
        for a, b in zip(play_chunk(original, chunk), play_chunk(resumed, chunk)):
            assert torch.equal(a, b)
    assert_same_snapshot(snapshot(original), snapshot(resumed))


@pytest.mark.parametrize("policy", ["memrope", "sink", "full"])
def test_shared_workspace_matches_per_layer_with_less_memory(policy: str) -> None:
    caches = {w: make_cache(policy=policy, layers=3, key_workspace=w) for w in ("per_layer", "shared")}
    for chunk in range(8):
        outputs = {w: play_chunk(c, chunk, calls=3) for w, c in caches.items()}
        for a, b in zip(outputs["per_layer"], outputs["shared"]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    per_layer, shared = (caches[w].resident_bytes() for w in ("per_layer", "shared"))
    keys_bytes = caches["shared"].layers[0].keys.numel() * 4
    assert shared < per_layer
    assert per_layer - shared == 2 * keys_bytes  # one roped-key workspace instead of three


# ---------------------------------------------------------------- EMA memories
def test_per_position_pooling_means_over_frames_only() -> None:
    cache = make_cache(pooling="per_position")
    for chunk in range(5):
        play_chunk(cache, chunk)
    state = cache.state_dict()
    for which, kind in (("keys", "k"), ("values", "v")):
        expected = torch.stack([frame_block(cache, f, kind) for f in (5, 6, 7)]).double().mean(dim=0)
        assert state[f"layers.0.long_{which}"].shape == (1, 6, HEADS, HEAD_DIM)
        torch.testing.assert_close(state[f"layers.0.long_{which}"].double(), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(state[f"layers.0.short_{which}"].double(), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(slot_block(cache, 3, which=which).double(), expected, rtol=0, atol=1e-6)
    # not spatially constant, unlike mean pooling
    assert not torch.allclose(slot_block(cache, 3)[:, 0], slot_block(cache, 3)[:, 1])


def test_adaptive_short_rate_matches_a_direct_implementation() -> None:
    alpha_short = 0.15
    cache = make_cache(
        pooling="per_position", adaptive_short_rate=True, alpha_short=alpha_short, alpha_long=0.3
    )
    for chunk in range(5):
        play_chunk(cache, chunk)
    before = cache.state_dict()
    play_chunk(cache, 5)
    after = cache.state_dict()
    pooled = {
        which: torch.stack([frame_block(cache, f, kind) for f in (8, 9, 10)]).double().mean(dim=0)
        for which, kind in (("keys", "k"), ("values", "v"))
    }
    short_keys = before["layers.0.short_keys"].double()
    _batch, positions, heads, dim = short_keys.shape
    # motion[p] = mean over heads of the L2 distance over head_dim, normalised by max_p + 1e-8
    motion = []
    for p in range(positions):
        per_head = [
            math.sqrt(
                sum(
                    (float(pooled["keys"][0, p, h, c]) - float(short_keys[0, p, h, c])) ** 2
                    for c in range(dim)
                )
            )
            for h in range(heads)
        ]
        motion.append(sum(per_head) / heads)
    peak = max(motion)
    rates = [alpha_short * (0.1 + 4.9 * (m / (peak + 1e-8))) for m in motion]
    assert min(rates) >= 0.1 * alpha_short - 1e-12 and max(rates) == pytest.approx(5 * alpha_short)
    for which in ("keys", "values"):
        old_short = before[f"layers.0.short_{which}"].double()
        old_long = before[f"layers.0.long_{which}"].double()
        for p in range(positions):
            a = rates[p]
            expected = a * pooled[which][0, p] + (1 - a) * old_short[0, p]
            torch.testing.assert_close(
                after[f"layers.0.short_{which}"][0, p].double(), expected, rtol=0, atol=1e-6
            )
        # the long memory keeps the scalar rate
        expected_long = 0.3 * pooled[which] + 0.7 * old_long
        torch.testing.assert_close(after[f"layers.0.long_{which}"].double(), expected_long, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "per_position"])
def test_alpha_zero_freezes_and_alpha_one_copies(pooling: str) -> None:
    cache = make_cache(alpha_long=0.0, alpha_short=1.0, pooling=pooling)
    reference = Reference(cache)
    first_memory: dict[str, torch.Tensor] = {}
    for chunk in range(9):
        play_chunk(cache, chunk, attend=False)
        reference.advance(chunk * 3)
        if chunk == 4:  # the first eviction: both memories = the pooled frames 5, 6, 7
            first_memory = {k: v.clone() for k, v in cache.state_dict().items() if "long" in k}
    state = cache.state_dict()
    assert len(reference.pooled) == 5
    evicted_last = [int(f[1:]) for f in ("f17", "f18", "f19")]  # slots 5..7 before the last advance
    assert reference.slots[5] == 20
    for which, kind in (("keys", "k"), ("values", "v")):
        # long: still bit for bit the first pooled value, which is the mean of frames 5, 6, 7
        assert torch.equal(state[f"layers.0.long_{which}"], first_memory[f"layers.0.long_{which}"])
        torch.testing.assert_close(
            state[f"layers.0.long_{which}"].double(), reference.pooled[0][which], rtol=0, atol=1e-6
        )
        # short: exactly the last pooled value (frames 17, 18, 19), with no trace of the earlier ones
        blocks = [frame_block(cache, f, kind) for f in evicted_last]
        if pooling == "mean":
            last = torch.cat(blocks, dim=1).mean(dim=1, keepdim=True)
        else:
            last = torch.stack(blocks, dim=1).mean(dim=1)
        assert torch.equal(state[f"layers.0.short_{which}"], last)


@SETTINGS
@given(
    alpha_long=st.floats(0.0, 1.0),
    alpha_short=st.floats(0.0, 1.0),
    pooling=st.sampled_from(["mean", "per_position"]),
    chunks=st.integers(5, 14),
)
def test_ema_is_geometric_weighting_inside_the_convex_hull(
    alpha_long: float, alpha_short: float, pooling: str, chunks: int
) -> None:
    cache = make_cache(
        alpha_long=alpha_long,
        alpha_short=alpha_short,
        pooling=pooling,
        sink_frames=1,
        chunk_frames=2,
        cache_frames=7,
    )
    reference = Reference(cache)
    for chunk in range(chunks):
        play_chunk(cache, chunk, attend=False)
        reference.advance(chunk * 2)
    state = cache.state_dict()
    xs = reference.pooled
    n = len(xs) - 1
    assert n >= 0
    for which in ("keys", "values"):
        inputs = torch.stack([x[which] for x in xs])
        low, high = inputs.amin(dim=0), inputs.amax(dim=0)
        for memory, a in (("long", alpha_long), ("short", alpha_short)):
            got = state[f"layers.0.{memory}_{which}"].double()
            assert bool((got >= low - 1e-6).all()) and bool((got <= high + 1e-6).all())
            closed = (1 - a) ** n * xs[0][which] + sum(
                a * (1 - a) ** (n - k) * xs[k][which] for k in range(1, n + 1)
            )
            torch.testing.assert_close(got, closed, rtol=0, atol=1e-5)


def test_float32_memory_does_not_stall_in_bf16() -> None:
    """docs/design.md §11: memory initialised to 1.0, then input 0.5 with alpha 0.01; exact limit 0.5."""

    def run(memory_dtype: torch.dtype | None) -> list[float]:
        config = MemRoPEConfig(
            cache_frames=4, sink_frames=1, chunk_frames=1, alpha_long=0.01, memory_dtype=memory_dtype
        )
        cache = make_cache(config, heads=1, head_dim=2, frame_shape=(1, 1), dtype=torch.bfloat16)
        trace = []
        for frame in range(1004):
            x = torch.full((1, 1, 1, 2), 1.0 if frame < 4 else 0.5, dtype=torch.bfloat16)
            cache.update(x, x, layer=0, start_frame=frame)
            if frame >= 5:
                trace.append(float(cache.state_dict()["layers.0.long_keys"].flatten()[0]))
        assert cache.state_dict()["layers.0.long_keys"].dtype == (memory_dtype or torch.bfloat16)
        return trace

    exact = [0.5 + 0.5 * 0.99 ** (n + 1) for n in range(999)]
    float32 = run(torch.float32)
    bf16 = run(None)
    assert max(abs(a - b) for a, b in zip(float32, exact)) < 1e-5
    assert float32[-1] == pytest.approx(0.5, abs=1e-4)
    assert bf16[-1] > 0.57  # the official bf16 accumulator stalls (0.58 in docs/design.md §11)
    assert bf16[-1] == bf16[-300]


# ---------------------------------------------------------------- errors leave the cache untouched
def _bad(name: str, **changes: Any) -> Any:
    return pytest.param(changes, id=name)


SHAPE_MSG = r"must have shape \[B, L, H, D\] = \[1, 18, 2, 8\] \(L = chunk_frames 3 x 6 tokens of frame_shape \(2, 3\)\), got "
BAD_CALLS = [
    ("chunk of 2 frames", {"key": (1, 12, 2, 8)}, ValueError, "key " + SHAPE_MSG + r"\[1, 12, 2, 8\]"),
    (
        "tokens not matching frame_shape",
        {"key": (1, 21, 2, 8), "value": (1, 21, 2, 8)},
        ValueError,
        "key " + SHAPE_MSG + r"\[1, 21, 2, 8\]",
    ),
    ("head count", {"key": (1, 18, 3, 8)}, ValueError, "key " + SHAPE_MSG + r"\[1, 18, 3, 8\]"),
    (
        "head dim",
        {"key": (1, 18, 2, 6), "value": (1, 18, 2, 6)},
        ValueError,
        "key " + SHAPE_MSG + r"\[1, 18, 2, 6\]",
    ),
    ("batch", {"key": (2, 18, 2, 8)}, ValueError, "key " + SHAPE_MSG + r"\[2, 18, 2, 8\]"),
    ("rank", {"key": (18, 2, 8)}, ValueError, "key " + SHAPE_MSG + r"\[18, 2, 8\]"),
    ("value shape", {"value": (1, 18, 2, 4)}, ValueError, "value " + SHAPE_MSG + r"\[1, 18, 2, 4\]"),
    (
        "key dtype",
        {"key_dtype": torch.float64},
        TypeError,
        "key must have the cache dtype torch.float32, got torch.float64",
    ),
    (
        "value dtype",
        {"value_dtype": torch.bfloat16},
        TypeError,
        "value must have the cache dtype torch.float32, got torch.bfloat16",
    ),
    ("device", {"device": "meta"}, ValueError, "key must be on the device of layer 1's cache, cpu, got meta"),
    ("not a tensor", {"key_list": True}, TypeError, "key must be a torch.Tensor, got list"),
    (
        "skip ahead",
        {"start": 21},
        ValueError,
        r"start_frame for layer 1 must be 18 \(next chunk\) or 15 \(rewrite the current chunk\), got 21",
    ),
    (
        "go back",
        {"start": 12},
        ValueError,
        r"start_frame for layer 1 must be 18 \(next chunk\) or 15 \(rewrite the current chunk\), got 12",
    ),
    (
        "back to 0",
        {"start": 0},
        ValueError,
        r"must be 18 \(next chunk\) or 15 \(rewrite the current chunk\), got 0",
    ),
    ("negative start", {"start": -3}, ValueError, r"got -3"),
    ("float start", {"start": 18.0}, TypeError, "start_frame must be an int, got float"),
    ("bool start", {"start": True}, TypeError, "start_frame must be an int, got bool"),
    ("layer too big", {"layer": 2}, ValueError, r"layer must be an int in \[0, 2\), got 2"),
    ("negative layer", {"layer": -1}, ValueError, r"layer must be an int in \[0, 2\), got -1"),
    ("bool layer", {"layer": True}, ValueError, r"layer must be an int in \[0, 2\), got True"),
    (
        "query shape",
        {"query": (1, 18, 2, 4)},
        ValueError,
        r"query must have the shape and dtype of key \(\(1, 18, 2, 8\), torch.float32\), got \(\(1, 18, 2, 4\)",
    ),
    (
        "query dtype",
        {"query_dtype": torch.float64},
        ValueError,
        r"query must have the shape and dtype of key .*got \(\(1, 18, 2, 8\), torch.float64\)",
    ),
]


@pytest.mark.parametrize(
    ("changes", "error", "match"), [pytest.param(c, e, m, id=n) for n, c, e, m in BAD_CALLS]
)
def test_bad_call_raises_and_leaves_the_cache_untouched(
    changes: dict[str, Any], error: type, match: str
) -> None:
    cache, twin = make_cache(layers=2), make_cache(layers=2)
    for chunk in range(6):
        play_chunk(cache, chunk)
        play_chunk(twin, chunk)
    for layer in range(2):  # layer 1's turn: the chunk at 15 is current, 18 is next
        assert cache.layers[layer].chunk_start == 15
    gen = torch.Generator().manual_seed(0)

    def tensor(name: str) -> Any:
        shape = changes.get(name, (1, 18, 2, 8))
        dtype = changes.get(f"{name}_dtype", torch.float32)
        t = torch.randn(shape, generator=gen).to(dtype)
        if name == "key" and "device" in changes:
            t = t.to(changes["device"])
        if name == "key" and changes.get("key_list"):
            return t.tolist()
        return t

    key, value = tensor("key"), tensor("value")
    layer, start = changes.get("layer", 1), changes.get("start", 18)
    before = snapshot(cache)
    with pytest.raises(error, match=match):
        if any(name in changes for name in ("key", "key_dtype", "device", "key_list")):
            cache.update(key, value, layer=layer, start_frame=start)  # a query like this key would fail first
        else:
            rope_on_the_fly(tensor("query"), key, value, cache=cache, layer=layer, start_frame=start)
    assert_same_snapshot(before, snapshot(cache))
    # the cache goes on exactly like one that never saw the bad call
    for chunk in (6, 7, 8):
        for a, b in zip(play_chunk(cache, chunk), play_chunk(twin, chunk)):
            assert torch.equal(a, b)
    assert_same_snapshot(snapshot(twin), snapshot(cache))


def test_first_call_must_start_at_frame_zero() -> None:
    cache = make_cache()
    k = torch.zeros(1, 18, HEADS, HEAD_DIM)
    with pytest.raises(ValueError, match=r"start_frame for layer 0 must be 0 \(next chunk\), got 3"):
        cache.update(k, k, layer=0, start_frame=3)
    assert cache.slot_layout() == [] and cache.state_dict()["layers.0.keys"].shape[1] == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_layers": 0}, ValueError, "num_layers must be an int >= 1, got 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1, got 0"),
        ({"num_heads": 1.0}, ValueError, "num_heads must be an int >= 1, got 1.0"),
        ({"head_dim": 7}, ValueError, "head_dim must be a positive even int, got 7"),
        ({"frame_shape": (2,)}, ValueError, r"frame_shape must be a pair of ints >= 1 .*got \(2,\)"),
        ({"frame_shape": (0, 3)}, ValueError, r"frame_shape must be a pair of ints >= 1"),
        ({"dtype": torch.int64}, TypeError, "dtype must be a floating torch.dtype, got torch.int64"),
        (
            {"key_workspace": "global"},
            ValueError,
            r"key_workspace must be one of \('per_layer', 'shared'\), got 'global'",
        ),
        (
            {"rope": RotaryEmbedding(8, (4,))},
            ValueError,
            "rope must be a 3-axis RotaryEmbedding with head_dim=8",
        ),
        ({"rope": RotaryEmbedding(16)}, ValueError, "rope must be a 3-axis RotaryEmbedding with head_dim=8"),
        (
            {"layer_devices": ["cpu"]},
            ValueError,
            r"layer_devices must name one device per layer \(2\), got 1",
        ),
        ({"config": {"policy": "memrope"}}, TypeError, "config must be a MemRoPEConfig, got dict"),
    ],
)
def test_constructor_errors(kwargs: dict[str, Any], error: type, match: str) -> None:
    arguments: dict[str, Any] = {
        "config": MemRoPEConfig(),
        "num_layers": 2,
        "batch_size": 1,
        "num_heads": HEADS,
        "head_dim": HEAD_DIM,
        "frame_shape": FRAME_SHAPE,
    }
    arguments.update(kwargs)
    config = arguments.pop("config")
    with pytest.raises(error, match=match):
        MemRoPECache(config, **arguments)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.pop("layers.1.keys"), r"state_dict is missing 'layers.1.keys'"),
        (
            lambda s: s.update({"layers.2.keys": torch.zeros(1)}),
            r"state_dict has unexpected entries: \['layers.2.keys'\]",
        ),
        (
            lambda s: s.update({"layers.0.keys": s["layers.0.keys"][:, :-1]}),
            r"layers.0.keys must have shape \[1, 72, 2, 8\]",
        ),
        (lambda s: s.pop("layers.1.short_values"), r"state_dict has only part of layer 1's memory"),
        (
            lambda s: s.update({"layers.0.counters": torch.tensor([13, 18, 15, 9])}),
            r"layers.0.counters \[filled, end_frame, chunk_start, chunk_slot\] = \[13, 18, 15, 9\] are inconsistent",
        ),
        (
            lambda s: s.update({"layers.0.counters": torch.tensor([12, 21, 15, 9])}),
            r"layers.0.counters .* = \[12, 21, 15, 9\] are inconsistent",
        ),
        (
            lambda s: s.update(
                {"layers.1.slot_frames": torch.tensor([0, 1, 2, -2, -3, 10, 9, 11, 12, 15, 16, 17])}
            ),
            r"layers.1.slot_frames .* inconsistent: real frames must increase",
        ),
        (
            lambda s: s.update(
                {"layers.1.slot_frames": torch.tensor([0, 1, 2, -2, -3, 9, 10, 11, 12, 14, 15, 16])}
            ),
            r"the last 3 slots must hold the chunk's frames \[15, 16, 17\]",
        ),
        (
            lambda s: s.update({"layers.0.long_keys": s["layers.0.long_keys"].expand(1, 6, 2, 8).clone()}),
            r"layers.0.long_keys must have shape \[1, 1, 2, 8\] for policy 'memrope' \(pooling='mean'\), got \[1, 6, 2, 8\]",
        ),
        (
            lambda s: s.update({"meta.layout": torch.tensor([1, 2, 3], dtype=torch.uint8)}),
            r"'meta.layout' is not a layout written by MemRoPECache.state_dict\(\)",
        ),
        (
            lambda s: s.update({"layers.0.counters": torch.tensor([12, 18])}),
            r"layers.0.counters must hold 4 ints",
        ),
        (
            lambda s: s.update({"layers.0.slot_frames": torch.tensor([0, 1])}),
            r"layers.0.slot_frames must list 12 slots, got 2",
        ),
    ],
)
def test_bad_state_dict_raises_and_leaves_the_cache_untouched(
    edit: Callable[[dict[str, torch.Tensor]], Any], match: str
) -> None:
    source = make_cache(layers=2)
    for chunk in range(6):
        play_chunk(source, chunk)
    target = make_cache(layers=2)
    for chunk in range(2):
        play_chunk(target, chunk)
    state = source.state_dict()
    edit(state)
    before = snapshot(target)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(state)
    assert_same_snapshot(before, snapshot(target))


@pytest.mark.parametrize(
    ("source_options", "target_options", "match"),
    [
        ({}, {"policy": "sink"}, r"policy='memrope' \(this cache: 'sink'\)"),
        (
            {"pooling": "per_position"},
            {},
            r"pooling='per_position' \(this cache: 'mean'\)",
        ),
        ({}, {"frame_shape": (3, 2)}, r"frame_shape=\[2, 3\] \(this cache: \[3, 2\]\)"),
        ({}, {"alpha_long": 0.02}, r"alpha_long=0.01 \(this cache: 0.02\)"),
        ({}, {"protect_sink_on_rewrite": False}, r"protect_sink_on_rewrite=True \(this cache: False\)"),
    ],
)
def test_state_of_another_configuration_is_refused(
    source_options: dict[str, Any], target_options: dict[str, Any], match: str
) -> None:
    frame_shape = target_options.pop("frame_shape", FRAME_SHAPE)
    source = make_cache(**source_options)
    for chunk in range(6):
        play_chunk(source, chunk)
    target = make_cache(frame_shape=frame_shape, **target_options)
    play_chunk(target, 0)
    before = snapshot(target)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(source.state_dict())
    assert_same_snapshot(before, snapshot(target))


def test_state_without_a_layout_is_still_checked_structurally() -> None:
    """States written before ``meta.layout`` existed load, but a memrope state never enters a sink cache."""
    source = make_cache()
    for chunk in range(6):
        play_chunk(source, chunk)
    legacy = {name: tensor for name, tensor in source.state_dict().items() if name != "meta.layout"}
    same = make_cache()
    same.load_state_dict(legacy)
    assert same.slot_layout() == source.slot_layout()
    with pytest.raises(ValueError, match=r"holds layers.0.long_keys, which policy 'sink' does not keep"):
        make_cache(policy="sink").load_state_dict(legacy)
    per_position = make_cache(pooling="per_position")
    with pytest.raises(
        ValueError, match=r"must have shape \[1, 6, 2, 8\] for policy 'memrope' \(pooling='per_position'\)"
    ):
        per_position.load_state_dict(legacy)
    assert per_position.slot_layout() == []


# ---------------------------------------------------------------- misc state management
def test_reset_behaves_like_a_fresh_cache() -> None:
    used, fresh = make_cache(layers=2, key_workspace="shared"), make_cache(layers=2, key_workspace="shared")
    for chunk in range(6):
        play_chunk(used, chunk)
    used.reset()
    assert used.slot_layout() == []
    for chunk in range(6):
        for a, b in zip(play_chunk(used, chunk), play_chunk(fresh, chunk)):
            assert torch.equal(a, b)


def test_recache_rewrites_the_window_after_the_sink() -> None:
    cache = make_cache(layers=2)
    for chunk in range(6):
        play_chunk(cache, chunk)
    assert cache.recache_window() == (11, 7)  # recent 11..14 and the last chunk 15..17
    before = cache.state_dict()
    with cache.recaching() as (start, frames):
        assert (start, frames) == (11, 7)
        for layer in range(2):
            k = torch.full((1, 7 * 6, HEADS, HEAD_DIM), 2.0)
            with pytest.raises(
                ValueError, match="start_frame must be the recache window's first frame 11, got 15"
            ):
                cache.update(k, k, layer=layer, start_frame=15)
            context = cache.update(k, -k, layer=layer, start_frame=11)
            assert context.keys.shape[1] == 12 * 6
        with pytest.raises(ValueError, match=r"recaching\(\) is already active"), cache.recaching():
            pass
    after = cache.state_dict()
    for layer in range(2):
        keys = after[f"layers.{layer}.keys"]
        assert torch.equal(keys[:, : 5 * 6], before[f"layers.{layer}.keys"][:, : 5 * 6])
        assert bool((keys[:, 5 * 6 :] == 2.0).all())
    assert cache.slot_layout() == ["f0", "f1", "f2", "long", "short", *[f"f{f}" for f in range(11, 18)]]
    play_chunk(cache, 6)  # back to the normal protocol
    assert cache.slot_layout()[-3:] == ["f18", "f19", "f20"]

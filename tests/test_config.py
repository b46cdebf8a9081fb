"""MemRoPEConfig: defaults, derived sizes, serialisation and every validation error."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memrope import MemRoPEConfig

SETTINGS = settings(max_examples=40, deadline=None)


def test_defaults_are_the_papers_layout() -> None:
    config = MemRoPEConfig()
    assert config.policy == "memrope"
    assert (config.cache_frames, config.sink_frames, config.chunk_frames) == (12, 3, 3)
    assert (config.alpha_long, config.alpha_short) == (0.01, 0.1)
    assert config.pooling == "mean" and config.adaptive_short_rate is False
    assert config.memory_dtype == torch.float32
    assert config.max_positions == 1024
    assert config.bounded
    assert config.memory_frames == 2
    assert config.recent_frames == 4
    assert config.sink_frames + config.memory_frames + config.recent_frames + config.chunk_frames == 12


def test_sink_policy_has_no_memory_frames() -> None:
    config = MemRoPEConfig(policy="sink")
    assert config.memory_frames == 0
    assert config.recent_frames == 12 - 3 - 3
    # sink + chunk is enough for the sink policy (no memory slots to reserve)
    assert MemRoPEConfig(policy="sink", cache_frames=6).recent_frames == 0


def test_full_policy_is_unbounded_and_ignores_cache_frames() -> None:
    config = MemRoPEConfig(policy="full", cache_frames=1)
    assert not config.bounded
    assert config.memory_frames == 0
    assert config.recent_frames == 0


def test_config_is_frozen() -> None:
    config = MemRoPEConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.alpha_long = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("memory_dtype", [torch.float32, torch.bfloat16, torch.float64, None])
def test_dict_round_trip_through_json(memory_dtype: torch.dtype | None) -> None:
    config = MemRoPEConfig(
        policy="memrope",
        cache_frames=10,
        sink_frames=1,
        chunk_frames=2,
        alpha_long=0.05,
        alpha_short=0.2,
        pooling="per_position",
        adaptive_short_rate=True,
        memory_dtype=memory_dtype,
        max_positions=64,
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["memory_dtype"] == (
        None if memory_dtype is None else str(memory_dtype).removeprefix("torch.")
    )
    assert MemRoPEConfig.from_dict(data) == config


def test_from_dict_rejects_an_unknown_dtype_name() -> None:
    data = MemRoPEConfig().to_dict()
    data["memory_dtype"] = "float33"
    with pytest.raises(ValueError, match="memory_dtype must name a torch dtype, got 'float33'"):
        MemRoPEConfig.from_dict(data)
    data["memory_dtype"] = "Tensor"  # an attribute of torch that is not a dtype
    with pytest.raises(ValueError, match="memory_dtype must name a torch dtype"):
        MemRoPEConfig.from_dict(data)


def test_from_dict_rejects_unknown_fields() -> None:
    data = MemRoPEConfig().to_dict()
    data["ema_alpha"] = 0.1
    with pytest.raises(TypeError, match="ema_alpha"):
        MemRoPEConfig.from_dict(data)


# ---------------------------------------------------------------- alphas
@pytest.mark.parametrize("name", ["alpha_long", "alpha_short"])
@pytest.mark.parametrize("value", [-0.01, 1.0001, 2, -1, math.nan, math.inf, -math.inf])
def test_alpha_outside_unit_interval_is_rejected(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be a float in \[0, 1\], got {value}"):
        MemRoPEConfig(**{name: value})


@pytest.mark.parametrize("name", ["alpha_long", "alpha_short"])
@pytest.mark.parametrize("value", [True, "0.1", None, torch.tensor(0.1)])
def test_alpha_of_wrong_type_is_rejected(name: str, value: object) -> None:
    with pytest.raises(TypeError, match=rf"{name} must be a float in \[0, 1\], got"):
        MemRoPEConfig(**{name: value})


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 0.5])
def test_alpha_bounds_are_inclusive(value: float) -> None:
    config = MemRoPEConfig(alpha_long=value, alpha_short=value)
    assert config.alpha_long == value and config.alpha_short == value


# ---------------------------------------------------------------- sizes
def test_cache_too_small_for_sink_memory_and_chunk() -> None:
    MemRoPEConfig(cache_frames=8, sink_frames=3, chunk_frames=3)  # exactly enough: 3 + 2 + 3
    with pytest.raises(
        ValueError,
        match=r"cache_frames must be >= sink_frames \+ 2 memory frames \+ chunk_frames = 8 for policy "
        r"'memrope', got cache_frames=7",
    ):
        MemRoPEConfig(cache_frames=7, sink_frames=3, chunk_frames=3)


def test_cache_too_small_for_sink_and_chunk_with_sink_policy() -> None:
    MemRoPEConfig(policy="sink", cache_frames=6, sink_frames=3, chunk_frames=3)
    with pytest.raises(
        ValueError,
        match=r"cache_frames must be >= sink_frames \+ chunk_frames = 6 for policy 'sink', got cache_frames=5",
    ):
        MemRoPEConfig(policy="sink", cache_frames=5, sink_frames=3, chunk_frames=3)


@pytest.mark.parametrize("chunk", [0, -3])
def test_chunk_must_be_positive(chunk: int) -> None:
    with pytest.raises(ValueError, match=rf"chunk_frames must be an int >= 1, got {chunk}"):
        MemRoPEConfig(chunk_frames=chunk)


@pytest.mark.parametrize("chunk", [1.5, 3.0, "3", True])
def test_chunk_must_be_an_int(chunk: object) -> None:
    with pytest.raises(TypeError, match="chunk_frames must be an int >= 1, got"):
        MemRoPEConfig(chunk_frames=chunk)  # type: ignore[arg-type]


def test_sink_may_be_zero_but_not_negative() -> None:
    assert MemRoPEConfig(sink_frames=0).recent_frames == 7
    with pytest.raises(ValueError, match="sink_frames must be an int >= 0, got -1"):
        MemRoPEConfig(sink_frames=-1)


def test_cache_frames_must_be_a_positive_int() -> None:
    with pytest.raises(ValueError, match="cache_frames must be an int >= 1, got 0"):
        MemRoPEConfig(policy="sink", cache_frames=0, sink_frames=0, chunk_frames=1)
    with pytest.raises(TypeError, match="cache_frames must be an int >= 1, got float 12.0"):
        MemRoPEConfig(cache_frames=12.0)  # type: ignore[arg-type]


def test_cache_frames_must_fit_the_rope_table() -> None:
    MemRoPEConfig(cache_frames=16, max_positions=16)
    with pytest.raises(ValueError, match="cache_frames must be <= max_positions=16, got 17"):
        MemRoPEConfig(cache_frames=17, max_positions=16)
    with pytest.raises(ValueError, match="max_positions must be an int >= 1, got 0"):
        MemRoPEConfig(max_positions=0)


# ---------------------------------------------------------------- names and knobs
def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match=r"policy must be one of \('memrope', 'sink', 'full'.*\), got 'ema'"):
        MemRoPEConfig(policy="ema")  # type: ignore[arg-type]


def test_unknown_pooling() -> None:
    with pytest.raises(ValueError, match=r"pooling must be one of \('mean', 'per_position'\), got 'max'"):
        MemRoPEConfig(pooling="max")  # type: ignore[arg-type]


def test_adaptive_rate_requires_per_position_pooling() -> None:
    with pytest.raises(
        ValueError, match=r"adaptive_short_rate=True requires pooling='per_position' .*got pooling='mean'"
    ):
        MemRoPEConfig(adaptive_short_rate=True)
    config = MemRoPEConfig(adaptive_short_rate=True, pooling="per_position")
    assert config.adaptive_short_rate


def test_adaptive_rate_above_one_is_accepted_with_a_warning() -> None:
    """The official code accepts alpha_short 0.3 with ema_adaptive (peak rate 1.5): so do we, loudly."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MemRoPEConfig(adaptive_short_rate=True, pooling="per_position", alpha_short=0.2)
    with pytest.warns(
        UserWarning, match=r"alpha_short=0.3 with adaptive_short_rate=True lets .* reach 1.5 > 1"
    ):
        config = MemRoPEConfig(adaptive_short_rate=True, pooling="per_position", alpha_short=0.3)
    assert config.alpha_short == 0.3
    with pytest.raises(ValueError, match=r"alpha_short must be a float in \[0, 1\], got 1.5"):
        MemRoPEConfig(adaptive_short_rate=True, pooling="per_position", alpha_short=1.5)


@pytest.mark.parametrize("name", ["alpha_long", "alpha_short"])
def test_zero_rate_freezes_the_memory_and_says_so(name: str) -> None:
    with pytest.warns(UserWarning, match=rf"{name}=0 freezes that EMA memory"):
        MemRoPEConfig(**{name: 0.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MemRoPEConfig(policy="sink", **{name: 0.0})  # no memory, nothing to warn about


def test_sink_protection_switch() -> None:
    assert MemRoPEConfig().protect_sink_on_rewrite is True
    config = MemRoPEConfig(protect_sink_on_rewrite=False)
    assert MemRoPEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(TypeError, match="protect_sink_on_rewrite must be a bool, got 'no'"):
        MemRoPEConfig(protect_sink_on_rewrite="no")  # type: ignore[arg-type]


def test_adaptive_flag_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="adaptive_short_rate must be a bool, got 1"):
        MemRoPEConfig(adaptive_short_rate=1, pooling="per_position")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, "float32", float])
def test_memory_dtype_must_be_a_floating_dtype(dtype: object) -> None:
    with pytest.raises(TypeError, match="memory_dtype must be a floating torch.dtype or None, got"):
        MemRoPEConfig(memory_dtype=dtype)  # type: ignore[arg-type]


# ---------------------------------------------------------------- property: sizes partition the cache
@SETTINGS
@given(
    policy=st.sampled_from(["memrope", "sink"]),
    cache_frames=st.integers(1, 40),
    sink_frames=st.integers(0, 10),
    chunk_frames=st.integers(1, 10),
)
def test_valid_iff_the_parts_fit(policy: str, cache_frames: int, sink_frames: int, chunk_frames: int) -> None:
    memory = 2 if policy == "memrope" else 0
    fits = cache_frames >= sink_frames + memory + chunk_frames
    kwargs = {
        "policy": policy,
        "cache_frames": cache_frames,
        "sink_frames": sink_frames,
        "chunk_frames": chunk_frames,
    }
    if not fits:
        with pytest.raises(ValueError, match="cache_frames must be >= "):
            MemRoPEConfig(**kwargs)  # type: ignore[arg-type]
        return
    config = MemRoPEConfig(**kwargs)  # type: ignore[arg-type]
    assert config.memory_frames == memory
    assert config.recent_frames >= 0
    assert (
        config.sink_frames + config.memory_frames + config.recent_frames + config.chunk_frames == cache_frames
    )
    assert MemRoPEConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"mode": "ema", "local_attn_size": 12, "sink_size": 3}, {"policy": "memrope", "cache_frames": 12}),
        (
            {"compression_method": "eviction", "local_attn_size": 9, "sink_size": 2},
            {"policy": "sink", "sink_frames": 2},
        ),
        ({"mode": "ema", "local_attn_size": -1, "sink_size": 3}, {"policy": "full"}),
        (
            {
                "mode": "ema",
                "local_attn_size": 12,
                "sink_size": 3,
                "ema_adaptive": True,
                "ema_alpha_short": 0.2,
            },
            {"pooling": "per_position", "adaptive_short_rate": True, "alpha_short": 0.2},
        ),
    ],
)
def test_official_settings_map_onto_a_config(settings: dict, expected: dict) -> None:
    config = MemRoPEConfig.from_official(settings, chunk_frames=1)
    assert config.chunk_frames == 1
    assert {name: getattr(config, name) for name in expected} == expected


def test_official_settings_errors_name_the_setting() -> None:
    with pytest.raises(
        ValueError,
        match=r"official mode must be one of \['ema', 'eviction'\] \(compression_method\), got 'pool'",
    ):
        MemRoPEConfig.from_official({"mode": "pool", "local_attn_size": 12, "sink_size": 3}, 3)
    with pytest.raises(ValueError, match=r"official cache settings lack 'sink_size'"):
        MemRoPEConfig.from_official({"mode": "ema", "local_attn_size": 12}, 3)

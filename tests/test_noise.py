"""InitialNoise: frame-by-frame draws bit-identical to one full ``torch.randn``, generator positions,
state round trips, the eager fallback and its warning, the length bound and Ctrl-C while positioning;
seeds."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings

import pytest
import torch

from memrope import noise as noise_module
from memrope.noise import (
    MAX_INITIAL_NOISE_VALUES,
    MAX_SEED,
    InitialNoise,
    check_seed,
    discard,
    seeded_generator,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _full_draw(seed: int, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Generator]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype), generator


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("frame_shape", [(4, 6, 8), (1, 4, 4), (16, 6, 10)])
def test_chunked_draw_equals_full_draw(dtype: torch.dtype, batch: int, frame_shape: tuple) -> None:
    frames = 30
    full, after_full = _full_draw(3, (batch, frames, *frame_shape), dtype)
    for chunk in (1, 2, 3, 5, 30):
        generator = torch.Generator().manual_seed(3)
        initial = InitialNoise(generator, batch, frames, frame_shape, dtype, piece_bytes=1000)
        assert initial.lazy
        assert torch.equal(generator.get_state(), after_full.get_state())
        pieces = [initial.take(chunk) for _ in range(frames // chunk)]
        assert all(p.shape == (batch, chunk, *frame_shape) and p.dtype == dtype for p in pieces)
        assert torch.equal(torch.cat(pieces, dim=1), full)
        assert initial.frames_left == 0
        # the draws that follow the initial noise (intermediate noises) are unchanged
        reference = torch.Generator().set_state(after_full.get_state())
        expected = torch.randn(batch * chunk, *frame_shape, generator=reference, dtype=dtype)
        assert torch.equal(
            torch.randn(batch * chunk, *frame_shape, generator=generator, dtype=dtype), expected
        )


def test_uneven_takes_and_large_pieces() -> None:
    full, after_full = _full_draw(0, (2, 12, 2, 4, 4), torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    initial = InitialNoise(generator, 2, 12, (2, 4, 4), torch.bfloat16)  # default piece size
    got = torch.cat([initial.take(n) for n in (1, 4, 2, 5)], dim=1)
    assert torch.equal(got, full) and torch.equal(generator.get_state(), after_full.get_state())


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64])
@pytest.mark.parametrize("count", [16, 48, 4096, 100_000])
@pytest.mark.parametrize("raw_draws", [True, False])
def test_discard_advances_like_randn(
    dtype: torch.dtype, count: int, raw_draws: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not raw_draws:  # the fallback that discards with normal_ itself
        monkeypatch.setitem(noise_module._DRAWS_PER_VALUE, dtype, None)
    reference = torch.Generator().manual_seed(9)
    torch.randn(count, generator=reference, dtype=dtype)
    generator = torch.Generator().manual_seed(9)
    discard(generator, count, dtype, piece_bytes=256)
    assert torch.equal(generator.get_state(), reference.get_state())
    with pytest.raises(ValueError, match="multiple of 16"):
        discard(generator, 17, dtype)


def test_raw_draws_are_used_for_common_dtypes() -> None:
    # the fast path is what runs on this torch; if this fails, discard() still works (slower)
    assert noise_module._draws_per_value(torch.float32) == 1
    assert noise_module._draws_per_value(torch.bfloat16) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_resumes_and_is_constant_in_length(dtype: torch.dtype) -> None:
    batch, frames, frame_shape = 2, 20, (4, 4, 6)
    full, _ = _full_draw(5, (batch, frames, *frame_shape), dtype)
    initial = InitialNoise(torch.Generator().manual_seed(5), batch, frames, frame_shape, dtype)
    first = initial.take(6)
    state = initial.state_dict()
    assert state["mode"] == "lazy" and state["frames_used"] == 6 and state["num_frames"] == frames
    assert state["generator_states"].dtype == torch.uint8 and state["generator_states"].shape[0] == batch
    resumed = InitialNoise.from_state_dict(state)
    assert torch.equal(torch.cat([first, resumed.take(14)], dim=1), full)
    # load_state_dict rewinds an object of the same layout
    initial.take(10)
    initial.load_state_dict(state)
    assert initial.frames_used == 6 and torch.equal(initial.take(14), full[:, 6:])
    # the state does not grow with the video length
    long = InitialNoise(torch.Generator().manual_seed(5), batch, 100 * frames, frame_shape, dtype)
    long.take(6)
    long_state = long.state_dict()
    assert long_state["generator_states"].shape == state["generator_states"].shape


def test_load_state_dict_rejects_other_layouts_and_bad_states() -> None:
    initial = InitialNoise(torch.Generator().manual_seed(0), 1, 4, (1, 4, 4))
    state = initial.state_dict()
    other = InitialNoise(torch.Generator().manual_seed(0), 1, 6, (1, 4, 4))
    with pytest.raises(ValueError, match="num_frames"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="mode"):
        InitialNoise.from_state_dict({**state, "mode": "other"})
    with pytest.raises(ValueError, match="frames_used"):
        InitialNoise.from_state_dict({**state, "frames_used": 5})
    with pytest.raises(ValueError, match="generator"):
        InitialNoise.from_state_dict({**state, "generator_states": torch.zeros(1, 7, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="dtype"):
        InitialNoise.from_state_dict({**state, "dtype": "int64"})
    with pytest.raises(TypeError):
        initial.load_state_dict([])  # type: ignore[arg-type]
    assert initial.frames_used == 0  # failed loads change nothing


def test_take_checks_the_frames_left() -> None:
    initial = InitialNoise(torch.Generator().manual_seed(0), 1, 4, (1, 4, 4))
    initial.take(3)
    for bad in (0, 2, 1.0):
        with pytest.raises(ValueError, match="frames left"):
            initial.take(bad)  # type: ignore[arg-type]
    assert initial.take(1).shape == (1, 1, 1, 4, 4)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="frame_shape"):
        InitialNoise(torch.Generator(), 1, 4, (4, 4))
    with pytest.raises(ValueError, match="num_frames"):
        InitialNoise(torch.Generator(), 1, 0, (1, 4, 4))
    with pytest.raises(ValueError, match="dtype"):
        InitialNoise(torch.Generator(), 1, 4, (1, 4, 4), torch.int32)
    with pytest.raises(ValueError, match="generator"):
        InitialNoise(None, 1, 4, (1, 4, 4))  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_fallback_when_frame_size_is_not_a_multiple_of_16(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = (2, 6, 3, 5, 7)  # C*H*W = 105
    full, after_full = _full_draw(1, shape, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # small: no warning
        generator = torch.Generator().manual_seed(1)
        initial = InitialNoise(generator, 2, 6, shape[2:], dtype)
    assert not initial.lazy
    assert torch.equal(generator.get_state(), after_full.get_state())
    first = initial.take(2)
    state = initial.state_dict()
    assert state["mode"] == "eager" and state["remaining"].shape == (2, 4, 3, 5, 7)
    rest = InitialNoise.from_state_dict(state).take(4)
    assert torch.equal(torch.cat([first, rest], dim=1), full)
    monkeypatch.setattr(noise_module, "EAGER_WARN_BYTES", 1000)
    with pytest.warns(UserWarning, match="not a multiple of 16"):
        InitialNoise(torch.Generator().manual_seed(1), 2, 6, shape[2:], dtype)


def test_from_tensor_is_eager_and_takes_slices() -> None:
    given = torch.randn(2, 4, 1, 2, 3)
    initial = InitialNoise.from_tensor(given)
    assert not initial.lazy and initial.frame_shape == (1, 2, 3) and initial.num_frames == 4
    assert torch.equal(initial.take(1), given[:, :1]) and torch.equal(initial.take(3), given[:, 1:])
    with pytest.raises(ValueError, match="floating tensor"):
        InitialNoise.from_tensor(torch.zeros(2, 4, 1, 2))


def test_long_video_start_is_constant_memory() -> None:
    # 1e6 frames of 16 values: 16e6 values are discarded in bounded pieces, nothing is held
    generator = torch.Generator().manual_seed(0)
    initial = InitialNoise(generator, 1, 1_000_000, (1, 4, 4), piece_bytes=2**20)
    reference = torch.Generator().manual_seed(0)
    expected = torch.randn(1, 3, 1, 4, 4, generator=reference)
    assert torch.equal(initial.take(3), expected)
    assert initial.state_dict()["generator_states"].numel() < 10_000


def test_seeds_are_unsigned_64_bit() -> None:
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == 2**64 - 1
    reference = torch.Generator().manual_seed(2**64 - 1)
    assert torch.equal(seeded_generator(2**64 - 1).get_state(), reference.get_state())
    for bad in (2**64, -1, 10**30):  # torch says "Overflow when unpacking long long" (or wraps -1)
        with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64 - 1\]"):
            check_seed(bad)
    for wrong in (True, 1.0, "3", None):
        with pytest.raises(TypeError, match="seed must be an int"):
            check_seed(wrong)
    with pytest.raises(ValueError, match="--seed must be in"):
        check_seed(-5, "--seed")


def test_absurd_lengths_are_refused_at_once_naming_the_bound() -> None:
    """--seconds 1.5e9 on the tiny model: 6e9 frames of 6144 values would take hours to position."""
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    started = time.perf_counter()
    longest = MAX_INITIAL_NOISE_VALUES // 6144
    with pytest.raises(
        ValueError, match=rf"num_frames=6000000000 is too long: .*use num_frames <= {longest}"
    ):
        InitialNoise(generator, 1, 6_000_000_000, (16, 16, 24))
    assert time.perf_counter() - started < 1.0
    assert torch.equal(generator.get_state(), before)  # nothing drawn
    with pytest.raises(ValueError, match="2\\*\\*36"):
        InitialNoise(torch.Generator(), 2, MAX_INITIAL_NOISE_VALUES // 32 + 1, (1, 4, 4))


def test_ctrl_c_stops_positioning_promptly() -> None:
    """Positioning runs in Python-level pieces, so a SIGINT interrupts it (here: ~2**35 values, minutes)."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals go to the main thread")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    started = time.perf_counter()
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            InitialNoise(torch.Generator().manual_seed(0), 1, 2**31, (1, 4, 4))
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - started < 5

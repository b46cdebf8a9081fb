"""RotaryEmbedding / apply_rotary: invariants and agreement with Wan's float64 complex RoPE."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memrope import RotaryEmbedding, apply_rotary, frame_grid_positions, wan_axis_pairs

SETTINGS = settings(max_examples=30, deadline=None)
TABLE = 1024


# ---------------------------------------------------------------- float64 complex reference (Wan's code)
def rope_params(max_seq_len: int, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Wan's table: complex128 ``[max_seq_len, dim // 2]``, angle ``pos * theta^(-2j/dim)``."""
    assert dim % 2 == 0
    exponents = torch.arange(0, dim, 2, dtype=torch.float64).div(dim)
    freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), 1.0 / torch.pow(theta, exponents))
    return torch.polar(torch.ones_like(freqs), freqs)


def wan_freqs(head_dim: int, max_seq_len: int = TABLE) -> torch.Tensor:
    """Wan's concatenated table: temporal ``d - 4*(d//6)`` channels, then two spatial ``2*(d//6)``."""
    d = head_dim
    return torch.cat(
        [
            rope_params(max_seq_len, d - 4 * (d // 6)),
            rope_params(max_seq_len, 2 * (d // 6)),
            rope_params(max_seq_len, 2 * (d // 6)),
        ],
        dim=1,
    )


def complex_rope(
    x: torch.Tensor, positions: torch.Tensor, axis_tables: list[torch.Tensor], pairing: str
) -> torch.Tensor:
    """Float64 complex RoPE of ``x`` ``[B, N, H, D]`` for ``positions`` ``[N, axes]``; returns float64."""
    factors = torch.cat([table[positions[:, axis]] for axis, table in enumerate(axis_tables)], dim=1)
    x64 = x.to(torch.float64)
    half = x.shape[-1] // 2
    if pairing == "interleaved":
        z = torch.view_as_complex(x64.reshape(*x.shape[:-1], half, 2).contiguous())
        return torch.view_as_real(z * factors[None, :, None, :]).flatten(-2)
    z = torch.complex(x64[..., :half], x64[..., half:])
    rotated = z * factors[None, :, None, :]
    return torch.cat([rotated.real, rotated.imag], dim=-1)


def split_wan_table(head_dim: int) -> list[torch.Tensor]:
    """Split Wan's concatenated table as its ``rope_apply`` does: ``[c - 2*(c//3), c//3, c//3]``."""
    c = head_dim // 2
    return list(wan_freqs(head_dim).split([c - 2 * (c // 3), c // 3, c // 3], dim=1))


def random_positions(gen: torch.Generator, n: int, axes: int, limit: int = TABLE) -> torch.Tensor:
    return torch.randint(0, limit, (n, axes), generator=gen)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.to(torch.float64) - expected).norm() / expected.norm())


head_dims = st.sampled_from([2, 4, 6, 8, 12, 16, 18, 24, 32, 64, 128])
pairings = st.sampled_from(["interleaved", "rotate_half"])
seeds = st.integers(0, 2**31 - 1)


@st.composite
def axis_splits(draw: st.DrawFn) -> tuple[int, tuple[int, ...]]:
    """A head dim and an arbitrary split of its pairs over 1..4 axes (zero-sized axes allowed)."""
    pairs = draw(st.integers(1, 24))
    axes = draw(st.integers(1, 4))
    cuts = sorted(draw(st.lists(st.integers(0, pairs), min_size=axes - 1, max_size=axes - 1)))
    bounds = [0, *cuts, pairs]
    return 2 * pairs, tuple(b - a for a, b in itertools.pairwise(bounds))


# ---------------------------------------------------------------- layout
def test_wan_axis_split() -> None:
    assert wan_axis_pairs(128) == (22, 21, 21)
    assert wan_axis_pairs(64) == (12, 10, 10)
    assert wan_axis_pairs(2) == (1, 0, 0)
    for d in range(2, 258, 2):
        t, h, w = wan_axis_pairs(d)
        assert t + h + w == d // 2
        # the same split as Wan's tables: temporal d - 4*(d//6) channels, spatial 2*(d//6) each
        assert (2 * t, 2 * h, 2 * w) == (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))


def test_frame_grid_positions_order() -> None:
    positions = frame_grid_positions([5, 9], (2, 3))
    assert positions.shape == (12, 3) and positions.dtype == torch.long
    for token, (f, h, w) in enumerate(positions.tolist()):
        frame, p = divmod(token, 6)
        assert (f, h, w) == ([5, 9][frame], p // 3, p % 3)
    assert frame_grid_positions(torch.tensor([]), (2, 3)).shape == (0, 3)


def test_tables_are_float32_one_value_per_channel() -> None:
    rope = RotaryEmbedding(12)
    positions = frame_grid_positions(range(2), (2, 2))
    cos, sin = rope.cos_sin(positions)
    assert cos.shape == sin.shape == (8, 12) and cos.dtype == sin.dtype == torch.float32
    # interleaved: both channels of a pair share one angle
    torch.testing.assert_close(cos[:, 0::2], cos[:, 1::2], rtol=0, atol=0)
    half = RotaryEmbedding(12, pairing="rotate_half").cos_sin(positions)[0]
    torch.testing.assert_close(half[:, :6], half[:, 6:], rtol=0, atol=0)
    # position 0 on every axis is the identity
    zero_cos, zero_sin = rope.cos_sin(torch.zeros(1, 3, dtype=torch.long))
    assert torch.equal(zero_cos, torch.ones(1, 12)) and torch.equal(zero_sin, torch.zeros(1, 12))


# ---------------------------------------------------------------- invariants
@SETTINGS
@given(head_dim=head_dims, pairing=pairings, seed=seeds)
def test_rope_preserves_norms(head_dim: int, pairing: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    rope = RotaryEmbedding(head_dim, pairing=pairing)  # type: ignore[arg-type]
    positions = random_positions(gen, 7, 3)
    cos, sin = rope.cos_sin(positions)
    x = torch.randn(2, 7, 3, head_dim, generator=gen, dtype=torch.float64)
    rotated = rope.apply(x, cos, sin)
    assert rotated.dtype == torch.float64 and rotated.shape == x.shape
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), rtol=1e-6, atol=0)

    # each pair keeps its own norm too (a rotation inside the pair)
    def pair_norm(t: torch.Tensor) -> torch.Tensor:
        if pairing == "interleaved":
            return t.unflatten(-1, (-1, 2)).norm(dim=-1)
        return torch.stack(t.chunk(2, dim=-1), dim=-1).norm(dim=-1)

    torch.testing.assert_close(pair_norm(rotated), pair_norm(x), rtol=1e-6, atol=1e-12)


@SETTINGS
@given(head_dim=head_dims, pairing=pairings, seed=seeds)
def test_query_key_product_depends_only_on_position_difference(
    head_dim: int, pairing: str, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    rope = RotaryEmbedding(head_dim, pairing=pairing)  # type: ignore[arg-type]
    n = 5
    query_pos = random_positions(gen, n, 3, TABLE // 2)
    key_pos = random_positions(gen, n, 3, TABLE // 2)
    shift = random_positions(gen, 1, 3, TABLE // 2)  # same shift for query and key, a different one per axis
    q = torch.randn(1, n, 2, head_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(1, n, 2, head_dim, generator=gen, dtype=torch.float64)

    def scores(qp: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
        rq = rope.apply(q, *rope.cos_sin(qp))
        rk = rope.apply(k, *rope.cos_sin(kp))
        return torch.einsum("bnhd,bmhd->bhnm", rq, rk)

    torch.testing.assert_close(
        scores(query_pos + shift, key_pos + shift), scores(query_pos, key_pos), rtol=1e-5, atol=1e-5
    )
    # and shifting only one axis of one side changes it (the product does see the difference)
    moved = key_pos.clone()
    moved[:, 0] += 1
    assert not torch.allclose(scores(query_pos, moved), scores(query_pos, key_pos), rtol=1e-3, atol=1e-3)


@SETTINGS
@given(head_dim=head_dims, pairing=pairings, seed=seeds)
def test_inverse_rotation_round_trip(head_dim: int, pairing: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    rope = RotaryEmbedding(head_dim, pairing=pairing)  # type: ignore[arg-type]
    positions = random_positions(gen, 6, 3)
    cos, sin = rope.cos_sin(positions)
    x = torch.randn(2, 6, 3, head_dim, generator=gen)
    back = apply_rotary(rope.apply(x, cos, sin), cos, -sin, pairing)  # type: ignore[arg-type]
    torch.testing.assert_close(back, x, rtol=0, atol=2e-6 * float(x.abs().max()))
    back64 = apply_rotary(rope.apply(x.double(), cos, sin), cos, -sin, pairing)  # type: ignore[arg-type]
    torch.testing.assert_close(back64, x.double(), rtol=0, atol=1e-6)


@SETTINGS
@given(head_dim=head_dims, seed=seeds)
def test_matches_wan_float64_complex_rope(head_dim: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    rope = RotaryEmbedding(head_dim)  # Wan defaults: interleaved, 3 axes, 1024 positions
    positions = random_positions(gen, 16, 3)
    positions[0] = torch.tensor([TABLE - 1, TABLE - 1, TABLE - 1])  # largest angles of the table
    x = torch.randn(2, 16, 3, head_dim, generator=gen) * 3
    got = rope.apply(x, *rope.cos_sin(positions))
    assert got.dtype == torch.float32
    expected = complex_rope(x, positions, split_wan_table(head_dim), "interleaved")
    assert relative_error(got, expected) < 1e-6
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-6 * float(x.abs().max()))


@SETTINGS
@given(split=axis_splits(), pairing=pairings, seed=seeds, theta=st.sampled_from([10000.0, 500.0, 1e6]))
def test_arbitrary_axis_splits_and_pairings(
    split: tuple[int, tuple[int, ...]], pairing: str, seed: int, theta: float
) -> None:
    head_dim, pairs = split
    gen = torch.Generator().manual_seed(seed)
    max_positions = 64
    rope = RotaryEmbedding(head_dim, pairs, theta=theta, max_positions=max_positions, pairing=pairing)  # type: ignore[arg-type]
    assert rope.num_axes == len(pairs)
    positions = random_positions(gen, 9, len(pairs), max_positions)
    x = torch.randn(1, 9, 2, head_dim, generator=gen)
    got = rope.apply(x, *rope.cos_sin(positions))
    tables = [rope_params(max_positions, 2 * count, theta) for count in pairs]
    expected = complex_rope(x, positions, tables, pairing)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-6 * float(x.abs().max()))


def test_rotate_half_pairs_channel_i_with_i_plus_half() -> None:
    rope = RotaryEmbedding(4, (2,), max_positions=8, pairing="rotate_half")
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    angle0, angle1 = 5.0, 5.0 * 10000.0 ** (-0.5)  # pairs (x0, x2) and (x1, x3)
    cos, sin = rope.cos_sin(torch.tensor([[5]]))
    got = rope.apply(x, cos, sin).flatten().double()
    c0, s0, c1, s1 = (torch.tensor(v, dtype=torch.float64) for v in (angle0, angle0, angle1, angle1))
    expected = torch.stack(
        [
            1 * c0.cos() - 3 * s0.sin(),
            2 * c1.cos() - 4 * s1.sin(),
            3 * c0.cos() + 1 * s0.sin(),
            4 * c1.cos() + 2 * s1.sin(),
        ]
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    interleaved = RotaryEmbedding(4, (2,), max_positions=8)
    got_i = interleaved.apply(x, *interleaved.cos_sin(torch.tensor([[5]]))).flatten().double()
    expected_i = torch.stack(
        [
            1 * c0.cos() - 2 * s0.sin(),
            1 * s0.sin() + 2 * c0.cos(),
            3 * c1.cos() - 4 * s1.sin(),
            3 * s1.sin() + 4 * c1.cos(),
        ]
    )
    torch.testing.assert_close(got_i, expected_i, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_rotated_in_float32(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    rope = RotaryEmbedding(16)
    positions = random_positions(gen, 8, 3)
    cos, sin = rope.cos_sin(positions)
    x = torch.randn(1, 8, 2, 16, generator=gen).to(dtype)
    got = rope.apply(x, cos, sin)
    assert got.dtype == dtype
    assert torch.equal(got, rope.apply(x.float(), cos, sin).to(dtype))


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "bad",
    [[[TABLE, 0, 0]], [[0, 0, TABLE]], [[0, -1, 0]], [[3, 5, 7], [2, 2, 5000]]],
    ids=["t", "w", "neg", "second"],
)
def test_position_beyond_the_table_raises(bad: list[list[int]]) -> None:
    rope = RotaryEmbedding(12)
    with pytest.raises(
        ValueError, match=r"positions must lie in \[0, 1024\) \(the RoPE table length\), got values in"
    ):
        rope.cos_sin(torch.tensor(bad))
    rope.cos_sin(torch.tensor([[TABLE - 1, 0, TABLE - 1]]))  # the last position is fine


def test_positions_need_one_column_per_axis() -> None:
    rope = RotaryEmbedding(12)
    with pytest.raises(
        ValueError, match=r"positions must have shape \[N, 3\] \(one column per axis\), got \(4, 2\)"
    ):
        rope.cos_sin(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"positions must have shape \[N, 3\]"):
        rope.cos_sin(torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("head_dim", [0, 3, -2, 7, 2.0, True])
def test_head_dim_must_be_positive_even(head_dim: object) -> None:
    with pytest.raises(ValueError, match="head_dim must be a positive even int, got"):
        RotaryEmbedding(head_dim)  # type: ignore[arg-type]


@pytest.mark.parametrize("pairs", [(2, 1), (4, 1, 1, 1), (3, -1, 2), (2.0, 2, 0)])
def test_axis_pairs_must_sum_to_half_the_head_dim(pairs: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError, match=r"axis_pairs must be non-negative ints summing to head_dim // 2 = 4"
    ):
        RotaryEmbedding(8, pairs)


def test_other_constructor_errors() -> None:
    with pytest.raises(
        ValueError, match=r"pairing must be one of \('interleaved', 'rotate_half'\), got 'half'"
    ):
        RotaryEmbedding(8, pairing="half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="theta must be a positive number, got 0"):
        RotaryEmbedding(8, theta=0)
    with pytest.raises(ValueError, match="max_positions must be an int >= 1, got 0"):
        RotaryEmbedding(8, max_positions=0)
    assert "axis_pairs=(2, 1, 1)" in repr(RotaryEmbedding(8))


@pytest.mark.parametrize("pairing", ["interleaved", "rotate_half"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_equal_to_the_plain_expression_with_and_without_out(pairing: str, dtype: torch.dtype) -> None:
    """Rotate-half: bit for bit. Interleaved (a complex multiplication): the same products and sums,
    within one rounding of them where the kernel fuses a multiply-add."""
    gen = torch.Generator().manual_seed(7)
    rope = RotaryEmbedding(24, pairing=pairing)  # type: ignore[arg-type]
    cos, sin = rope.cos_sin(random_positions(gen, 10, 3))
    x = (torch.randn(2, 10, 3, 24, generator=gen) * 4).to(dtype)
    x[0, 0, 0, :4] = torch.tensor([0.0, -0.0, -0.0, 0.0])
    compute = torch.promote_types(dtype, torch.float32)
    values = x.to(compute)
    if pairing == "interleaved":
        pairs = values.unflatten(-1, (-1, 2))
        partner = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    else:
        first, second = values.chunk(2, dim=-1)
        partner = torch.cat((-second, first), dim=-1)
    plain = (values * cos.to(compute)[:, None] + partner * sin.to(compute)[:, None]).to(dtype)
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float64: torch.int64}[dtype]
    # one rounding of the largest product (|x| * 1), then of the cast to dtype
    rounding = 2 * (torch.finfo(compute).eps + torch.finfo(dtype).eps) * float(x.abs().max())

    def check(got: torch.Tensor) -> None:
        assert got.dtype == dtype
        if pairing == "rotate_half":
            assert torch.equal(got.view(bits), plain.view(bits))
        else:
            torch.testing.assert_close(got, plain, rtol=0, atol=rounding)

    check(rope.apply(x, cos, sin))
    out = torch.full_like(x, float("nan"))
    returned = rope.apply(x, cos, sin, out=out)
    assert returned.data_ptr() == out.data_ptr()
    check(out)
    # a strided view as out (a slice of a larger buffer, as the cache's workspace)
    big = torch.zeros(2, 30, 3, 24, dtype=dtype)
    rope.apply(x, cos, sin, out=big[:, 5:15])
    check(big[:, 5:15])
    assert not big[:, :5].any() and not big[:, 15:].any()
    # where no multiply-add is fused (whole vectors: head_dim 128 here), the bits are the same
    if pairing == "interleaved" and dtype == torch.float32:
        wide = RotaryEmbedding(128)
        wide_cos, wide_sin = wide.cos_sin(random_positions(gen, 10, 3))
        y = torch.randn(2, 10, 3, 128, generator=gen) * 4
        pairs = y.unflatten(-1, (-1, 2))
        wide_partner = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        expected = y * wide_cos[:, None] + wide_partner * wide_sin[:, None]
        assert torch.equal(wide.apply(y, wide_cos, wide_sin).view(torch.int32), expected.view(torch.int32))


@pytest.mark.parametrize("pairing", ["interleaved", "rotate_half"])
def test_gradients_flow_through_the_rotation(pairing: str) -> None:
    gen = torch.Generator().manual_seed(8)
    rope = RotaryEmbedding(12, pairing=pairing)  # type: ignore[arg-type]
    cos, sin = rope.cos_sin(random_positions(gen, 5, 3))
    x = torch.randn(1, 5, 2, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1, 5, 2, 12, generator=gen, dtype=torch.float64)
    (rope.apply(x, cos, sin) * weight).sum().backward()
    assert x.grad is not None
    # the rotation is orthogonal: the gradient is the weight rotated back
    torch.testing.assert_close(x.grad, apply_rotary(weight, cos, -sin, pairing), rtol=0, atol=1e-6)  # type: ignore[arg-type]
    with torch.no_grad():
        assert torch.equal(rope.apply(x, cos, sin), rope.apply(x.detach(), cos, sin))


def test_inputs_and_outputs_of_any_layout_are_rotated_the_same() -> None:
    """Odd offsets and strides (no complex view possible) fall back to a copy, with the same result."""
    gen = torch.Generator().manual_seed(9)
    rope = RotaryEmbedding(24)
    cos, sin = rope.cos_sin(random_positions(gen, 10, 3))
    x = torch.randn(2, 10, 3, 24, generator=gen)
    expected = rope.apply(x, cos, sin)
    wide = torch.randn(2, 10, 3, 25, generator=gen)
    wide[..., 1:] = x
    odd = wide[..., 1:]  # storage offset 1, strides 750, 75, 25: odd
    assert odd.storage_offset() % 2 and not odd.is_contiguous()
    torch.testing.assert_close(rope.apply(odd, cos, sin), expected, rtol=0, atol=0)
    target = torch.zeros(2, 10, 3, 25)
    rope.apply(x, cos, sin, out=target[..., 1:])
    torch.testing.assert_close(target[..., 1:], expected, rtol=0, atol=0)
    assert not target[..., 0].any()

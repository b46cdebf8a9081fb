"""8-bit storage of the cache's un-roped keys and values: formats, scales, quantise and dequantise.

A :class:`~memrope.cache.MemRoPECache` built with ``kv_dtype`` keeps each layer's keys and values as
8-bit codes ``[B, T, H, D]`` plus one float32 scale per token and head, ``[B, T, H, 1]``
(:func:`scale_shape`): ``value = code * scale``, with ``scale = max_d |x[b, t, h, d]| / max_code``
so the largest element of each token and head maps onto the largest code. Attention never sees
the codes: the slots a call reads are dequantised into the cache dtype first.

Why per token and head, not per frame and head: keys of real models differ in magnitude from
token to token, and with one scale per frame the quiet tokens of an int8 frame lose their bits. Measured
by ``benchmarks/bench_kv_dtype.py`` (relative RMS round-trip error of a 12-frame Wan-1.3B cache's
keys, per token / per frame): int8 0.0065 / 0.0106 for N(0, 1) tokens and 0.0065 / 0.077 for
tokens with log-normal norms; float8 barely cares (e4m3 0.0257 / 0.0264, e5m2 0.051 / 0.053: a
float format is scale-free). A float32 scale per token costs ``4 / D`` bytes per element (3 % at
``D = 128``), which keeps the resident cache at 0.542x of bf16 in the ``shared`` workspace mode.

Error of one element after a round trip (``x' = decode(encode(x))``, ``a`` = the token-and-head's
``max |x|``), from the formats' precision:

* ``float8_e4m3fn`` (3 mantissa bits): ``|x' - x| <= 2^-4 |x|`` for ``|x| >= 2^-6 a / 448`` (normal
  codes); below, subnormal codes are ``2^-9`` apart, so ``|x' - x| <= 2^-10 a / 448``.
* ``float8_e5m2`` (2 mantissa bits): ``|x' - x| <= 2^-3 |x|`` (normal codes reach down to
  ``2^-14 a / 57344``; below, ``|x' - x| <= 2^-17 a / 57344``).
* ``int8`` (absmax, codes -127..127): ``|x' - x| <= a / 254`` (half a step of ``a / 127``).

:attr:`KVFormat.relative_error` and :attr:`KVFormat.absolute_error` state these bounds; the
dequantised value is then rounded once more to the cache dtype (bfloat16: ``2^-9`` relative).
:attr:`KVFormat.precision` ``eps`` folds them into one bound on the RMS error of a token relative to
its RMS, for tokens whose largest element is at most 4x their RMS (true of keys and values with
``D >= 16`` roughly Gaussian channels): ``eps = 2^-4`` (e4m3), ``2^-3`` (e5m2), ``4 / 254`` (int8).

What that means for attention (``o = sum_j p_j v_j``, ``p = softmax(q . k_j / sqrt(D))``): the value
error enters as ``sum_j p_j dv_j``, a weighted mean of the tokens' errors, so ``|do| <= eps' max |v|``
(``eps'``: the per-element bound) and, the rounding errors of different tokens being independent
and zero-mean, ``RMS(do) ~ eps RMS(o)``. The key error moves each logit by ``q . dk_j / sqrt(D)``,
a sum of ``D`` independent rounding errors with RMS ``<= eps RMS(q) RMS(k)``, which moves ``o`` by
about as much again. So the tests assert, per call, ``RMS(o' - o) <= 2 eps RMS(o)`` and
``max |o' - o| <= 2 eps max |v|``; the flow prediction of a DiT, where attention is one branch of a
residual stream, within ``eps`` (relative L2). Measured errors sit well inside these
(``benchmarks/bench_kv_dtype.py``); a worst-case bound on the key term (every rounding error aligned
with ``q``) would grow with ``sqrt(D)`` and say nothing at ``D = 128``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memrope._dtypes import DTYPE_ALIASES, dtype_name

__all__ = [
    "KV_DTYPE_ALIASES",
    "SCALE_DTYPE",
    "KVFormat",
    "kv_format",
    "scale_shape",
    "supported_kv_dtype_names",
]

SCALE_DTYPE = torch.float32

#: Names accepted for ``kv_dtype`` beside the ``torch`` attribute names (``"fp8"`` is e4m3, as in
#: FP8 inference engines: more precision, enough range once scaled).
KV_DTYPE_ALIASES: dict[str, str] = {
    "fp8": "float8_e4m3fn",
    "float8": "float8_e4m3fn",
    "e4m3": "float8_e4m3fn",
    "fp8_e4m3": "float8_e4m3fn",
    "float8_e4m3": "float8_e4m3fn",
    "fp8_e4m3fn": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
    "fp8_e5m2": "float8_e5m2",
    "int8": "int8",
}

# name -> (largest code, relative error bound, absolute error bound in units of the token's max |x|)
_FORMATS: dict[str, tuple[float, float, float]] = {
    "float8_e4m3fn": (448.0, 2.0**-4, 2.0**-10 / 448.0),
    "float8_e5m2": (57344.0, 2.0**-3, 2.0**-17 / 57344.0),
    "int8": (127.0, 0.0, 1.0 / 254.0),
}


@dataclass(frozen=True)
class KVFormat:
    """One 8-bit storage format.

    Attributes:
        dtype: the dtype of the codes (``torch.float8_e4m3fn``, ``torch.float8_e5m2``, ``torch.int8``).
        max_code: the largest code the token-and-head maximum maps onto.
        relative_error: bound on ``|x' - x| / |x|`` of one element from rounding (0 for int8).
        absolute_error: bound on ``|x' - x|`` in units of the token-and-head's ``max |x|`` (the
            subnormal floor of a float format; the whole error of int8). An element's error is at
            most ``relative_error * |x| + absolute_error * max |x|``.
    """

    dtype: torch.dtype
    max_code: float
    relative_error: float
    absolute_error: float

    @property
    def precision(self) -> float:
        """``eps``: RMS error of a token relative to its RMS, for tokens with ``max |x| <= 4 RMS(x)`` (see above)."""
        return max(self.relative_error, 4.0 * self.absolute_error)

    @property
    def name(self) -> str:
        """``"float8_e4m3fn"``, ``"float8_e5m2"`` or ``"int8"``."""
        return dtype_name(self.dtype)

    @property
    def storage_dtype(self) -> torch.dtype:
        """What the cache's code buffers are: ``torch.uint8`` holding float8 bit patterns, or ``torch.int8``.

        Float8 codes live in uint8 buffers viewed as :attr:`dtype` to encode or decode: inductor
        (torch 2.13) cannot compile in-place slice copies of float8 tensors, which the cache's shifts are.
        """
        return torch.uint8 if self.dtype.is_floating_point else self.dtype

    def scales(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 scales ``[..., 1]`` of ``x`` ``[..., D]``: ``max |x|`` over ``D`` divided by :attr:`max_code`.

        NaN or infinity in ``x`` gives a non-finite scale, which dequantises to NaN (never a silent 0).
        """
        return x.to(SCALE_DTYPE).abs().amax(dim=-1, keepdim=True) / self.max_code

    def encode(
        self, x: torch.Tensor, scales: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Codes of ``x`` ``[..., D]`` under ``scales`` (broadcastable, e.g. ``[..., 1]``), in :attr:`dtype`.

        ``out`` (the shape of ``x``, :attr:`dtype`) receives them instead of a new tensor. A zero
        scale (an all-zero token) gives zero codes.
        """
        divisor = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = (x.to(SCALE_DTYPE) / divisor).clamp_(-self.max_code, self.max_code)
        if not self.dtype.is_floating_point:
            codes = codes.round_()
        if out is None:
            return codes.to(self.dtype)
        return out.copy_(codes)

    def quantise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes, scales)`` of ``x`` ``[..., D]``: codes in :attr:`dtype`, float32 scales ``[..., 1]``."""
        scales = self.scales(x)
        return self.encode(x, scales), scales

    def write(self, codes: torch.Tensor, scales: torch.Tensor, x: torch.Tensor) -> None:
        """Quantise ``x`` into the views ``codes`` (shape of ``x``; :attr:`dtype` or :attr:`storage_dtype`)
        and ``scales`` (``[..., 1]``) in place."""
        scales.copy_(self.scales(x))
        self.encode(x, scales, out=codes.view(self.dtype))

    def decode(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``codes * scales`` in ``dtype`` (a new tensor the shape of ``codes``), rounded once.

        ``codes`` may be in :attr:`dtype` or :attr:`storage_dtype`.
        """
        return codes.view(self.dtype).to(dtype).mul_(scales)

    def decode_into(self, out: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """``codes * scales`` written into ``out`` (the shape of ``codes``); no temporary.

        The codes are exact in every floating dtype of at least 16 bits, so the product is rounded
        once, to ``out.dtype``.
        """
        return out.copy_(codes.view(self.dtype)).mul_(scales)


def supported_kv_dtype_names() -> tuple[str, ...]:
    """Names of the 8-bit formats this torch offers (float8 needs a torch that has those dtypes)."""
    return tuple(name for name in _FORMATS if isinstance(getattr(torch, name, None), torch.dtype))


def _allowed_message(cache_dtype: torch.dtype) -> str:
    names = ", ".join(f"torch.{name}" for name in _FORMATS)
    aliases = ", ".join(repr(alias) for alias in KV_DTYPE_ALIASES)
    return f"None or torch.{dtype_name(cache_dtype)} (the cache dtype), {names} (or a name: {aliases})"


def kv_format(kv_dtype: torch.dtype | str | None, cache_dtype: torch.dtype) -> KVFormat | None:
    """The :class:`KVFormat` that ``kv_dtype`` names, or ``None`` for storage in ``cache_dtype``.

    Accepts ``None``, the cache dtype itself (same as ``None``), ``torch.float8_e4m3fn``,
    ``torch.float8_e5m2``, ``torch.int8`` or a name (``"fp8"``, ``"e4m3"``, ``"e5m2"``, ``"int8"``,
    ``"float8_e4m3fn"``, ...; case and a ``torch.`` prefix ignored).

    Raises:
        ValueError: ``kv_dtype`` names no supported format, or a float8 format this torch lacks.
        TypeError: ``kv_dtype`` is neither ``None``, a ``torch.dtype`` nor a string.
    """
    if kv_dtype is None or kv_dtype == cache_dtype:
        return None
    if isinstance(kv_dtype, torch.dtype):
        name = dtype_name(kv_dtype)
    elif isinstance(kv_dtype, str):
        key = kv_dtype.strip().lower().removeprefix("torch.")
        if DTYPE_ALIASES.get(key, getattr(torch, key, None)) == cache_dtype:
            return None
        name = KV_DTYPE_ALIASES.get(key, key)
    else:
        raise TypeError(
            f"kv_dtype must be a torch.dtype, a name or None, got {type(kv_dtype).__name__}; "
            f"allowed: {_allowed_message(cache_dtype)}"
        )
    if name not in _FORMATS:
        raise ValueError(f"kv_dtype must be {_allowed_message(cache_dtype)}, got {kv_dtype!r}")
    if name not in supported_kv_dtype_names():
        raise ValueError(
            f"kv_dtype={kv_dtype!r} needs torch.{name}, which this torch {torch.__version__} lacks "
            f"(float8 dtypes need torch >= 2.1); use kv_dtype=torch.int8 or None"
        )
    max_code, relative_error, absolute_error = _FORMATS[name]
    return KVFormat(getattr(torch, name), max_code, relative_error, absolute_error)


def scale_shape(batch_size: int, tokens: int, num_heads: int) -> tuple[int, int, int, int]:
    """Shape of the scales of ``tokens`` tokens: ``[B, tokens, H, 1]`` (one per token and head)."""
    return (batch_size, tokens, num_heads, 1)

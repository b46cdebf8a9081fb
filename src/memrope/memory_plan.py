"""How much GPU memory a run needs: the memory plan behind ``memrope presets`` and ``--placement auto``.

:func:`estimate_memory` gives a :class:`MemoryEstimate` (bytes per component on the GPU) for a Wan DiT
shape, a cache policy, a latent size and the run's settings: model dtype, KV-cache dtype
(:data:`KV_DTYPES`: the model dtype, or 8 bits with float32 scales), RoPE'd-key workspace mode
(``"per_layer"`` / ``"shared"``, see :mod:`memrope.cache`), where the text encoder runs (``"gpu"``:
umT5-XXL in bf16, freed before the DiT loads; ``"cpu"``: nothing on the GPU), the VAE and the batch.
:func:`plan_memory` adds the number of GPUs (1, or 2 with the blocks split as :mod:`memrope.devices`
splits them) and gives the peak per GPU and the smallest common GPU the run fits (:data:`GPU_SIZES_GB`).

What is exact and what is estimated (checked in ``tests/test_memory_plan.py`` against a model and a
cache built on the ``meta`` device at full shape, Wan2.1-1.3B and Wan2.1-14B):

* **exact**: the DiT weights (:func:`wan_parameter_counts`) and the KV cache (:func:`cache_bytes`, the
  :meth:`~memrope.cache.MemRoPECache.resident_bytes` of the cache once its EMA memories exist);
* **estimated**: activations, the text encoder's phase, the VAE and the CUDA overhead (formulas in
  :class:`MemoryEstimate`); ``memrope generate`` records the measured ``torch.cuda.max_memory_allocated``
  in its report, to compare.

A "GPU of N GB" is taken to hold N GiB (a 24 GB RTX 4090 has 24564 MiB); the overhead term covers the
CUDA context. See docs/design.md §10 for the 2-GPU layout.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import torch

from memrope._dtypes import dtype_name
from memrope.cache import FULL_POLICY_INITIAL_CHUNKS, KEY_WORKSPACES, MemRoPECache
from memrope.config import MemRoPEConfig
from memrope.devices import single_device_need, split_device_needs
from memrope.models.wan_config import WanConfig
from memrope.policies import CacheGeometry, get_policy

__all__ = [
    "CUDA_OVERHEAD",
    "GIB",
    "GPU_SIZES_GB",
    "KV_DTYPES",
    "TABLE_KV_DTYPES",
    "TEXT_ENCODER_DEVICES",
    "UMT5_XXL_ENCODER_PARAMS",
    "WAN_VAE_DECODE_WORKSPACE",
    "WAN_VAE_PARAMS",
    "BlockSplit",
    "CacheBytes",
    "MemoryEstimate",
    "MemoryPlan",
    "PresetLike",
    "cache_bytes",
    "cache_supports_kv_dtype",
    "estimate_memory",
    "kv_dtype_name",
    "memory_table",
    "parse_kv_dtype",
    "plan_memory",
    "preset_estimate",
    "preset_memory_plan",
    "preset_memory_summary",
    "smallest_gpu_gb",
    "wan_parameter_counts",
]

GIB = 1024**3
#: Memory sizes of common GPUs, in GB (each taken to hold that many GiB): RTX 3060/4070 12, 4060 Ti /
#: 4080 16, 3090/4090 24, 5090 32, A100 40, A6000/L40S 48, A100/H100 80.
GPU_SIZES_GB: tuple[int, ...] = (12, 16, 24, 32, 40, 48, 80)
#: Where the text encoder runs: ``"gpu"`` (freed before the DiT loads) or ``"cpu"`` (0 bytes on the GPU).
TEXT_ENCODER_DEVICES: tuple[str, ...] = ("gpu", "cpu")
#: KV-cache storage by name: ``None`` keeps the model dtype (bf16 for the official presets on a GPU).
KV_DTYPES: Mapping[str, torch.dtype | None] = MappingProxyType(
    {
        "bf16": None,
        "fp8": torch.float8_e4m3fn,
        "fp8-e5m2": torch.float8_e5m2,
        "int8": torch.int8,
    }
)
_KV_ALIASES: Mapping[str, torch.dtype | None] = MappingProxyType(
    {
        "none": None,
        "model": None,
        "bfloat16": None,
        "fp8-e4m3": torch.float8_e4m3fn,
        "e4m3": torch.float8_e4m3fn,
        "float8_e4m3fn": torch.float8_e4m3fn,
        "e5m2": torch.float8_e5m2,
        "float8_e5m2": torch.float8_e5m2,
    }
)
#: Decoders without weights (``memrope.presets.BUILT_IN_DECODERS``): nothing on the GPU to speak of.
WEIGHT_FREE_DECODERS: tuple[str, ...] = ("tiny", "toy")
#: Bytes of one 8-bit scale (float32), stored per token and head for keys and for values.
KV_SCALE_BYTES = 4

# umT5-XXL encoder (google/umt5-xxl as shipped in Wan2.1-T2V-1.3B-Diffusers/text_encoder):
# d_model 4096, 24 layers, d_ff 10240 (gated GELU: wi_0, wi_1, wo), 64 heads x d_kv 64, vocab 256384.
# embedding 256384*4096 = 1.050e9; per layer 4*4096*4096 (attention) + 3*4096*10240 (FFN) = 1.929e8;
# 24 layers = 4.63e9; total ~5.68e9 parameters.
UMT5_XXL_ENCODER_PARAMS = 256_384 * 4096 + 24 * (4 * 4096 * 4096 + 3 * 4096 * 10240)
UMT5_DTYPE_BYTES = 2  # bfloat16, on the GPU and (memrope generate --text-encoder-device cpu) on the CPU
# Wan2.1 VAE (AutoencoderKLWan): ~127M parameters (the float32 file is 508 MB); decoded in float32.
WAN_VAE_PARAMS = 127_000_000
# Peak workspace of decoding one 60x104 latent frame (4 video frames of 480x832) with the causal
# feature cache: a handful of float32 activations of up to 4x480x832x96 (153 MB each) at the top
# resolution plus the cache of the two last inputs of every causal conv. An estimate, not a
# measurement: 3 GiB.
WAN_VAE_DECODE_WORKSPACE = 3 * GIB
# CUDA context, cuBLAS/cuDNN workspaces and allocator slack.
CUDA_OVERHEAD = 1 * GIB


def _size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def parse_kv_dtype(value: object, argument: str = "kv_dtype") -> torch.dtype | None:
    """The KV-cache storage dtype ``value`` names: ``None`` (the model dtype) or an 8-bit dtype.

    Accepts ``None``, a ``torch.dtype`` (``torch.float8_e4m3fn``, ``torch.float8_e5m2``, ``torch.int8``;
    a floating dtype means "unquantised": ``None``) or a name of :data:`KV_DTYPES` (``"bf16"``,
    ``"fp8"`` = e4m3, ``"fp8-e5m2"``, ``"int8"``; also ``"e4m3"``, ``"float8_e5m2"``, ``"none"``, any case).

    Raises:
        ValueError: anything else; the message names ``argument`` and lists the choices.
    """
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        if value in KV_DTYPES.values():
            return value
        if value.is_floating_point:
            return None
    elif isinstance(value, str):
        key = value.strip().lower().removeprefix("torch.").replace("_", "-")
        for table in (KV_DTYPES, _KV_ALIASES):
            for name, dtype in table.items():
                if name.replace("_", "-") == key:
                    return dtype
    raise ValueError(
        f"{argument} must be one of {', '.join(KV_DTYPES)} (fp8 = float8_e4m3fn; bf16 = the model dtype, "
        f"not quantised) or None, got {value!r}"
    )


def kv_dtype_name(kv_dtype: torch.dtype | None) -> str:
    """The :data:`KV_DTYPES` name of ``kv_dtype`` (``"bf16"`` for ``None``, the model dtype)."""
    for name, dtype in KV_DTYPES.items():
        if dtype == kv_dtype:
            return name
    raise ValueError(f"kv_dtype must be one of {list(KV_DTYPES.values())}, got {kv_dtype!r}")


def cache_supports_kv_dtype() -> bool:
    """Whether :class:`~memrope.cache.MemRoPECache` takes a ``kv_dtype`` argument (8-bit storage)."""
    return "kv_dtype" in inspect.signature(MemRoPECache.__init__).parameters


# ---------------------------------------------------------------------------------- weights
def wan_parameter_counts(config: WanConfig) -> tuple[int, int, int]:
    """Parameters of a Wan DiT: ``(inputs, per_block, outputs)``; the total is ``inputs + L * per_block + outputs``.

    With ``d = dim``, ``f = ffn_dim``, ``p = prod(patch_size)``:

    * inputs: ``patch_embedding`` ``in_dim * p * d + d``, ``text_embedding`` ``text_dim * d + d + d^2 + d``,
      ``time_embedding`` ``freq_dim * d + d + d^2 + d``, ``time_projection`` ``6 d^2 + 6 d``;
    * per block: self- and cross-attention ``2 * (4 (d^2 + d) + 2 d if qk_norm)``, ``norm3`` ``2 d`` (if
      ``cross_attn_norm``), FFN ``2 d f + f + d``, modulation ``6 d``;
    * outputs: ``head`` ``d * p * out_dim + p * out_dim``, modulation ``2 d``.

    Wan2.1-1.3B: 1,418,996,800 parameters; Wan2.1-14B: 14,288,491,584.
    """
    d, f, p = config.dim, config.ffn_dim, math.prod(config.patch_size)
    inputs = (
        config.in_dim * p * d
        + d
        + (config.text_dim * d + d + d * d + d)
        + (config.freq_dim * d + d + d * d + d)
        + (6 * d * d + 6 * d)
    )
    attention = 4 * (d * d + d) + (2 * d if config.qk_norm else 0)
    per_block = 2 * attention + (2 * d if config.cross_attn_norm else 0) + (2 * d * f + f + d) + 6 * d
    outputs = d * p * config.out_dim + p * config.out_dim + 2 * d
    return inputs, per_block, outputs


# ---------------------------------------------------------------------------------- cache
@dataclass(frozen=True)
class CacheBytes:
    """Resident bytes of a :class:`~memrope.cache.MemRoPECache` once its EMA memories exist (exact).

    With ``T = capacity_frames * frame_tokens`` slots of ``H`` heads x ``D`` channels, ``s`` the model
    dtype's size, ``L`` layers and ``G`` devices holding layers:

    * ``keys_values``: un-roped keys and values, ``L * 2 * B * T * H * D`` elements of the model dtype
      (``s`` bytes) or, 8-bit, of 1 byte;
    * ``scales``: 8-bit only, float32 scales per token and head (:mod:`memrope.kv_storage`):
      ``L * 2 * B * T * H * 4``;
    * ``key_workspace``: RoPE'd keys in the model dtype, ``B * T * H * D * s`` per layer (``"per_layer"``)
      or per device (``"shared"``);
    * ``value_workspace``: 8-bit only, the dequantised values of the layer being attended,
      ``B * T * H * D * s`` per device;
    * ``memories``: the policy's EMA memories (:meth:`~memrope.policies.CachePolicy.memory_shapes`, in
      ``memory_dtype``, float32 by default), per layer, allocated at the first eviction;
    * ``rope_tables``: float32 ``cos`` and ``sin`` ``[T, D]`` per device.

    ``capacity_frames`` is ``cache_frames`` for a bounded policy; the unbounded ``full`` policy starts at 4
    chunks and doubles (up to ``max_positions``) until it holds the video.
    """

    keys_values: int
    scales: int
    key_workspace: int
    value_workspace: int
    memories: int
    rope_tables: int
    per_layer: int
    per_device: int
    capacity_frames: int

    @property
    def total(self) -> int:
        return (
            self.keys_values
            + self.scales
            + self.key_workspace
            + self.value_workspace
            + self.memories
            + self.rope_tables
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "keys_values": self.keys_values,
            "scales": self.scales,
            "key_workspace": self.key_workspace,
            "value_workspace": self.value_workspace,
            "memories": self.memories,
            "rope_tables": self.rope_tables,
            "total": self.total,
        }


def _capacity_frames(cache_config: MemRoPEConfig, latent_frames: int) -> int:
    """Frames the cache holds: ``cache_frames``, or what the ``full`` policy has grown to for the video."""
    if cache_config.bounded:
        return cache_config.cache_frames
    limit = cache_config.max_positions
    capacity = min(FULL_POLICY_INITIAL_CHUNKS * cache_config.chunk_frames, limit)
    while capacity < min(latent_frames, limit):
        capacity = min(2 * capacity, limit)
    return capacity


def _memory_elements(
    cache_config: MemRoPEConfig, config: WanConfig, batch_size: int, frame_tokens: int, dtype: torch.dtype
) -> tuple[int, torch.dtype]:
    memory_dtype = cache_config.memory_dtype or dtype
    geometry = CacheGeometry(batch_size, config.num_heads, config.head_dim, frame_tokens, dtype, memory_dtype)
    shapes = get_policy(cache_config.policy)(cache_config, geometry).memory_shapes()
    return sum(math.prod(shape) for shape in shapes.values()), memory_dtype


def cache_bytes(
    config: WanConfig,
    cache_config: MemRoPEConfig,
    latent_hw: tuple[int, int],
    *,
    dtype: torch.dtype,
    kv_dtype: torch.dtype | None = None,
    key_workspace: str = "per_layer",
    batch_size: int = 1,
    latent_frames: int = 0,
    num_devices: int = 1,
) -> CacheBytes:
    """Resident bytes of the cache of a Wan DiT ``config`` (see :class:`CacheBytes` for the formulas).

    ``latent_frames`` only matters for the unbounded ``full`` policy; ``num_devices`` is the number of
    devices the layers are split over (the shared workspace and the RoPE tables exist once per device).
    """
    if key_workspace not in KEY_WORKSPACES:
        raise ValueError(f"key_workspace must be one of {KEY_WORKSPACES}, got {key_workspace!r}")
    kv_dtype = parse_kv_dtype(kv_dtype)
    size = _size(dtype)
    patch = config.patch_size
    frame_tokens = (latent_hw[0] // patch[1]) * (latent_hw[1] // patch[2])
    capacity = _capacity_frames(cache_config, latent_frames)
    tokens = batch_size * capacity * frame_tokens
    elements = tokens * config.num_heads * config.head_dim
    layers = config.num_layers
    stored = 2 * elements * (size if kv_dtype is None else 1)
    scales = 0 if kv_dtype is None else 2 * tokens * config.num_heads * KV_SCALE_BYTES
    workspace = elements * size
    memory_elements, memory_dtype = _memory_elements(cache_config, config, batch_size, frame_tokens, dtype)
    memories = memory_elements * _size(memory_dtype)
    tables = 2 * capacity * frame_tokens * config.head_dim * 4
    per_layer = stored + scales + memories + (workspace if key_workspace == "per_layer" else 0)
    value_workspace = 0 if kv_dtype is None else workspace
    per_device = tables + value_workspace + (workspace if key_workspace == "shared" else 0)
    return CacheBytes(
        keys_values=layers * stored,
        scales=layers * scales,
        key_workspace=workspace * (layers if key_workspace == "per_layer" else num_devices),
        value_workspace=value_workspace * num_devices,
        memories=layers * memories,
        rope_tables=num_devices * tables,
        per_layer=per_layer,
        per_device=per_device,
        capacity_frames=capacity,
    )


# ---------------------------------------------------------------------------------- the estimate
@dataclass(frozen=True)
class BlockSplit:
    """How a run's weights, cache and activations divide over devices holding contiguous block groups.

    A device holding ``k`` blocks needs ``k * per_block + per_device + transient``, plus ``inputs`` if it
    holds the first block and ``outputs`` if it holds the last (:func:`memrope.devices.split_device_needs`).

    Attributes:
        inputs: weights of the modules before the blocks (embeddings), on the first device.
        outputs: weights of the modules after the blocks (head), on the last device.
        per_block: one block's weights, its cache layer and its cross-attention keys/values.
        per_device: the RoPE tables and the ``"shared"`` key workspace, once per device.
        transient: one call's activations (a device runs one block at a time).
    """

    inputs: int
    outputs: int
    per_block: int
    per_device: int
    transient: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Accelerator memory of a run, in bytes per component (:func:`estimate_memory` fills it).

    The text encoder runs first and is freed before the DiT is loaded, so the peak is the larger of
    the two phases, not their sum. The VAE decodes between DiT calls: its workspace and the DiT's
    activations do not coexist (when ``vae_weights`` is known).

    Attributes:
        weights: the DiT's parameters (exact).
        cache: the KV cache's resident bytes (exact, :class:`CacheBytes`).
        activations: one forward call's transients plus every layer's cross-attention keys/values
            (estimated).
        text_encoder: the text encoder on the GPU (0 on the CPU or for the hash encoder).
        vae: the VAE's weights plus its decoding workspace (estimated).
        overhead: CUDA context and allocator slack (1 GiB).
        vae_weights: the part of ``vae`` that stays resident (``None``: unknown, ``vae`` counts whole).
        split: how the DiT's share divides over block groups (``None``: proportionally).
        cache_detail: the cache's components.
        settings: what the estimate assumed (dtype, kv dtype, key workspace, text encoder device, ...).
    """

    weights: int
    cache: int
    activations: int
    text_encoder: int
    vae: int
    overhead: int
    vae_weights: int | None = None
    split: BlockSplit | None = field(default=None, compare=False)
    cache_detail: CacheBytes | None = field(default=None, compare=False)
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def text_phase(self) -> int:
        """Peak while prompts are encoded: the text encoder and the overhead."""
        return self.text_encoder + self.overhead

    @property
    def generation_phase(self) -> int:
        """Peak while generating on one GPU: DiT weights, cache, the larger of activations and VAE work."""
        return single_device_need(self, offload=False, text_encoder=False)

    @property
    def peak(self) -> int:
        """Peak on one GPU: ``max(text phase, generation phase)``."""
        return max(self.text_phase, self.generation_phase)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "weights": self.weights,
            "cache": self.cache,
            "activations": self.activations,
            "text_encoder": self.text_encoder,
            "vae": self.vae,
            "overhead": self.overhead,
            "text_phase": self.text_phase,
            "generation_phase": self.generation_phase,
            "peak": self.peak,
        }
        if self.cache_detail is not None:
            data["cache_detail"] = self.cache_detail.to_dict()
        if self.settings:
            data["settings"] = dict(self.settings)
        return data


def _activation_bytes(
    config: WanConfig,
    cache_config: MemRoPEConfig,
    frame_tokens: int,
    capacity_frames: int,
    batch_size: int,
    size: int,
) -> tuple[int, int]:
    """``(transient, context per layer)`` bytes of one forward call (an estimate, see :func:`estimate_memory`)."""
    chunk = max(cache_config.chunk_frames, cache_config.first_chunk_frames or 0)
    tokens = batch_size * chunk * frame_tokens
    window_tokens = batch_size * capacity_frames * frame_tokens
    per_call = tokens * (config.ffn_dim + 6 * config.dim) + window_tokens * 2 * config.dim
    context_per_layer = 2 * batch_size * config.text_len * config.dim * size
    return 2 * per_call * size, context_per_layer


def estimate_memory(
    config: WanConfig,
    cache_config: MemRoPEConfig,
    latent_hw: tuple[int, int],
    *,
    dtype: torch.dtype = torch.bfloat16,
    kv_dtype: object = None,
    key_workspace: str = "per_layer",
    text_encoder: str | None = "umt5",
    text_encoder_device: str = "gpu",
    vae: str | None = "wan",
    batch_size: int = 1,
    latent_frames: int = 0,
    overhead: int = CUDA_OVERHEAD,
) -> MemoryEstimate:
    """The GPU memory of generating with a Wan DiT of ``config`` (bytes per component).

    * weights (exact): :func:`wan_parameter_counts` x the dtype size (bf16: 1.42e9 x 2 B = 2.64 GiB for
      Wan2.1-1.3B; 14.3e9 x 2 B = 26.6 GiB for 14B; a LoRA is merged).
    * cache (exact): :func:`cache_bytes`: keys and values in ``dtype`` or 8 bits + float32 scales, the
      RoPE'd-key workspace (``key_workspace``), the dequantised-value workspace (8-bit), the EMA memories
      and the RoPE tables. Constant in the
      video length for a bounded policy.
    * activations (estimate): one forward call on a chunk of ``N = B * chunk_frames * frame_tokens``
      tokens over a window of ``W = B * capacity_frames * frame_tokens``: the FFN hidden state, q/k/v/o,
      the RoPE'd keys of the window and the attention output, counted twice for temporaries,
      ``2 * s * (N * (ffn_dim + 6 * dim) + W * 2 * dim)`` (an 8-bit cache dequantises into its value
      workspace, counted in the cache, and keys one frame at a time), plus the cross-attention
      keys/values of every layer ``2 * layers * B * text_len * dim * s`` (resident while generating).
    * text encoder (estimate of the peak, exact weights): umT5-XXL in bf16, 5.68e9 x 2 B = 10.6 GiB,
      on the GPU only while prompts are encoded (``text_encoder_device="gpu"``), 0 with ``"cpu"`` (it
      then needs 10.6 GiB of host memory) or ``text_encoder`` ``"hash"`` / ``None``.
    * vae (estimate): the Wan VAE's weights in float32 (127M x 4 B, resident) plus a 3 GiB decoding
      workspace (between DiT calls); 0 for a weight-free decoder or ``None``.
    * overhead: ``overhead`` bytes of CUDA context and allocator slack (1 GiB).

    Args:
        kv_dtype: see :func:`parse_kv_dtype` (``None``: the model dtype).
        text_encoder: ``"umt5"`` (any Hub id or folder of the Diffusers layout), ``"hash"`` or ``None``.
        vae: ``"wan"`` (any Hub id or folder), a weight-free decoder (``"tiny"``, ``"toy"``) or ``None``.
        latent_frames: the video length (for the unbounded ``full`` policy only).

    Raises:
        ValueError: an unknown ``kv_dtype``, ``key_workspace`` or ``text_encoder_device``, or a batch < 1.
    """
    if text_encoder_device not in TEXT_ENCODER_DEVICES:
        raise ValueError(
            f"text_encoder_device must be one of {TEXT_ENCODER_DEVICES}, got {text_encoder_device!r}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    quantised = parse_kv_dtype(kv_dtype)
    size = _size(dtype)
    inputs, per_block, outputs = wan_parameter_counts(config)
    detail = cache_bytes(
        config,
        cache_config,
        latent_hw,
        dtype=dtype,
        kv_dtype=quantised,
        key_workspace=key_workspace,
        batch_size=batch_size,
        latent_frames=latent_frames,
    )
    patch = config.patch_size
    frame_tokens = (latent_hw[0] // patch[1]) * (latent_hw[1] // patch[2])
    transient, context_per_layer = _activation_bytes(
        config, cache_config, frame_tokens, detail.capacity_frames, batch_size, size
    )
    layers = config.num_layers
    umt5 = text_encoder not in (None, "hash")
    wan_vae = vae not in (None, *WEIGHT_FREE_DECODERS)
    vae_weights = WAN_VAE_PARAMS * 4 if wan_vae else 0
    split = BlockSplit(
        inputs=inputs * size,
        outputs=outputs * size,
        per_block=per_block * size + detail.per_layer + context_per_layer,
        per_device=detail.per_device,
        transient=transient,
    )
    settings = {
        "dtype": dtype_name(dtype),
        "kv_dtype": dtype_name(dtype if quantised is None else quantised),
        "key_workspace": key_workspace,
        "text_encoder": "umt5" if umt5 else "hash" if text_encoder == "hash" else None,
        "text_encoder_device": text_encoder_device,
        "vae": "wan" if wan_vae else vae,
        "batch_size": batch_size,
        "num_layers": layers,
    }
    return MemoryEstimate(
        weights=(inputs + layers * per_block + outputs) * size,
        cache=detail.total,
        activations=transient + layers * context_per_layer,
        text_encoder=UMT5_XXL_ENCODER_PARAMS * UMT5_DTYPE_BYTES
        if umt5 and text_encoder_device == "gpu"
        else 0,
        vae=vae_weights + (WAN_VAE_DECODE_WORKSPACE if wan_vae else 0),
        overhead=overhead,
        vae_weights=vae_weights,
        split=split,
        cache_detail=detail,
        settings=MappingProxyType(settings),
    )


# ---------------------------------------------------------------------------------- the plan
def smallest_gpu_gb(peak_bytes: int, sizes: Sequence[int] = GPU_SIZES_GB) -> int | None:
    """The smallest of ``sizes`` (GB, each holding that many GiB) with at least ``peak_bytes``; ``None``: none."""
    return next((gb for gb in sorted(sizes) if peak_bytes <= gb * GIB), None)


@dataclass(frozen=True)
class MemoryPlan:
    """A run's peak GPU memory on 1 GPU or split over 2 (:func:`plan_memory`).

    Attributes:
        estimate: the components (:class:`MemoryEstimate`).
        num_gpus: 1, or 2 with the blocks split in half as ``memrope.devices.plan_devices("split")`` does
            (embeddings and the first half on the first GPU, the rest, the head and the VAE on the second,
            the text encoder swapped in onto the first).
        per_gpu: peak bytes of each GPU.
        offload_vae: the VAE waits on the CPU between chunks.
    """

    estimate: MemoryEstimate
    num_gpus: int
    per_gpu: tuple[int, ...]
    offload_vae: bool = False

    @property
    def peak(self) -> int:
        """The largest per-GPU peak."""
        return max(self.per_gpu)

    @property
    def smallest_gpu(self) -> int | None:
        """The smallest common GPU size (GB, :data:`GPU_SIZES_GB`) every GPU of the plan fits in."""
        return smallest_gpu_gb(self.peak)

    def fits(self, gpu_bytes: int) -> bool:
        """Whether every GPU of the plan fits in ``gpu_bytes``."""
        return self.peak <= gpu_bytes

    def describe(self) -> str:
        """One line: peak per GPU and the components, in GiB."""
        estimate, settings = self.estimate, self.estimate.settings

        def gib(count: int) -> str:
            return f"{count / GIB:.1f}"

        gpus = " + ".join(gib(need) for need in self.per_gpu)
        placement = "1 GPU" if self.num_gpus == 1 else f"{self.num_gpus} GPUs"
        text = settings.get("text_encoder_device", "gpu")
        return (
            f"~{gpus} GiB on {placement} (weights {gib(estimate.weights)}, cache {gib(estimate.cache)} "
            f"[keys/values {settings.get('kv_dtype')}, {settings.get('key_workspace')} workspace], "
            f"activations {gib(estimate.activations)}, VAE {gib(estimate.vae)}, text encoder "
            f"{gib(estimate.text_encoder)} on the {text.upper()}, overhead {gib(estimate.overhead)}; estimate)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_gpus": self.num_gpus,
            "offload_vae": self.offload_vae,
            "per_gpu": list(self.per_gpu),
            "peak": self.peak,
            "smallest_gpu_gb": self.smallest_gpu,
            "estimate": self.estimate.to_dict(),
        }


def plan_memory(estimate: MemoryEstimate, num_gpus: int = 1, *, offload_vae: bool = False) -> MemoryPlan:
    """The per-GPU peak of ``estimate`` on ``num_gpus`` GPUs (1, or 2 split as :mod:`memrope.devices` splits).

    Raises:
        ValueError: ``num_gpus`` is not 1 or 2.
    """
    if num_gpus not in (1, 2) or isinstance(num_gpus, bool):
        raise ValueError(f"num_gpus must be 1 or 2, got {num_gpus!r}")
    on_gpu = estimate.text_encoder > 0
    if num_gpus == 1:
        per_gpu: tuple[int, ...] = (single_device_need(estimate, offload=offload_vae, text_encoder=on_gpu),)
    else:
        layers = int(estimate.settings.get("num_layers", 2))
        counts = (layers // 2, layers - layers // 2)
        per_gpu = split_device_needs(estimate, counts, offload=offload_vae, text_encoder=on_gpu)
    return MemoryPlan(estimate, num_gpus, per_gpu, offload_vae)


class PresetLike(Protocol):
    """What :func:`preset_memory_plan` reads from a :class:`~memrope.presets.Preset`."""

    @property
    def name(self) -> str: ...

    @property
    def family(self) -> str: ...

    @property
    def model_config(self) -> WanConfig: ...

    @property
    def cache(self) -> MemRoPEConfig: ...

    @property
    def latent_hw(self) -> tuple[int, int]: ...

    @property
    def latent_frames(self) -> int: ...

    @property
    def runs_locally(self) -> bool: ...

    @property
    def text_encoder(self) -> str: ...

    @property
    def vae(self) -> str: ...

    @property
    def default_dtype(self) -> torch.dtype: ...


def preset_estimate(
    preset: PresetLike,
    dtype: torch.dtype | None = None,
    batch_size: int = 1,
    *,
    kv_dtype: object = None,
    key_workspace: str = "per_layer",
    text_encoder_device: str = "gpu",
    cache: MemRoPEConfig | None = None,
    latent_frames: int | None = None,
) -> MemoryEstimate:
    """:func:`estimate_memory` for a preset (its shape, cache, latent size, text encoder and VAE).

    A preset that runs locally (hash text encoder, built-in decoder: ``tiny``, ``toy``) counts no overhead,
    text encoder or VAE (it needs no GPU to speak of).
    """
    return estimate_memory(
        preset.model_config,
        preset.cache if cache is None else cache,
        preset.latent_hw,
        dtype=preset.default_dtype if dtype is None else dtype,
        kv_dtype=kv_dtype,
        key_workspace=key_workspace,
        text_encoder=None if preset.runs_locally else preset.text_encoder,
        text_encoder_device=text_encoder_device,
        vae=None if preset.runs_locally else preset.vae,
        batch_size=batch_size,
        latent_frames=preset.latent_frames if latent_frames is None else latent_frames,
        overhead=0 if preset.runs_locally else CUDA_OVERHEAD,
    )


def preset_memory_plan(
    preset: PresetLike,
    num_gpus: int = 1,
    dtype: torch.dtype | None = None,
    *,
    kv_dtype: object = None,
    key_workspace: str = "per_layer",
    text_encoder_device: str = "gpu",
    offload_vae: bool = False,
    batch_size: int = 1,
) -> MemoryPlan:
    """:func:`plan_memory` of :func:`preset_estimate`: a preset's peak per GPU on 1 or 2 GPUs."""
    estimate = preset_estimate(
        preset,
        dtype,
        batch_size,
        kv_dtype=kv_dtype,
        key_workspace=key_workspace,
        text_encoder_device=text_encoder_device,
    )
    return plan_memory(estimate, num_gpus, offload_vae=offload_vae)


# ---------------------------------------------------------------------------------- the presets' table
#: The cache storages the plan table compares: the model dtype and 8 bits (every 8-bit format has the
#: same size: fp8 e4m3, fp8 e5m2 and int8).
TABLE_KV_DTYPES: Mapping[str, torch.dtype | None] = MappingProxyType(
    {"bf16": None, "8-bit": torch.float8_e4m3fn}
)


def preset_memory_summary(preset: PresetLike, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """A preset's memory plan for ``memrope presets --json``: every option and the smallest GPU.

    ``options`` lists, for the cache in the model dtype and in 8 bits, each key workspace mode, the
    text encoder on the GPU and on the CPU, and 1 or 2 GPUs: the peak per GPU and the smallest GPU of
    :data:`GPU_SIZES_GB` it fits. ``smallest`` names, for 1 and for 2 GPUs, the smallest GPU any option
    with the ``per_layer`` workspace fits (what ``memrope generate`` builds), preferring the model-dtype
    cache and the text encoder on the GPU at equal size.
    """
    options: list[dict[str, Any]] = []
    for key_workspace in KEY_WORKSPACES:
        for kv_label, kv_dtype in TABLE_KV_DTYPES.items():
            for text_device in TEXT_ENCODER_DEVICES:
                for num_gpus in (1, 2):
                    plan = preset_memory_plan(
                        preset,
                        num_gpus,
                        dtype,
                        kv_dtype=kv_dtype,
                        key_workspace=key_workspace,
                        text_encoder_device=text_device,
                    )
                    options.append(
                        {
                            "kv": kv_label,
                            "key_workspace": key_workspace,
                            "text_encoder_device": text_device,
                            "num_gpus": num_gpus,
                            "per_gpu": list(plan.per_gpu),
                            "peak": plan.peak,
                            "smallest_gpu_gb": plan.smallest_gpu,
                        }
                    )
    smallest: dict[str, Any] = {}
    for num_gpus, key in ((1, "one_gpu"), (2, "two_gpus")):
        runnable = [
            option
            for option in options
            if option["num_gpus"] == num_gpus
            and option["key_workspace"] == "per_layer"
            and option["smallest_gpu_gb"] is not None
        ]
        best = min(runnable, key=lambda option: option["smallest_gpu_gb"], default=None)
        smallest[key] = (
            None
            if best is None
            else {name: best[name] for name in ("smallest_gpu_gb", "kv", "text_encoder_device", "peak")}
        )
    return {
        "dtype": dtype_name(preset.default_dtype if dtype is None else dtype),
        "gpu_sizes_gb": list(GPU_SIZES_GB),
        "options": options,
        "smallest": smallest,
    }


def _gib(count: int) -> str:
    """``"10.5"`` (GiB), or ``"12 MiB"`` below 0.1 GiB."""
    return f"{count / GIB:.1f}" if count >= GIB / 10 else f"{count / 1024**2:.0f} MiB"


def _smallest_label(choice: Mapping[str, Any] | None, count: int) -> str:
    if choice is None:
        return f"none (> {GPU_SIZES_GB[-1]} GB)"
    text = "TE CPU" if choice["text_encoder_device"] == "cpu" else "TE GPU"
    prefix = f"{count}x" if count > 1 else ""
    return f"{prefix}{choice['smallest_gpu_gb']} GB ({choice['kv']}, {text})"


def _memory_row(summary: Mapping[str, Any]) -> tuple[str, ...]:
    """The cells of one row of :func:`memory_table` (without its label)."""
    peaks = {
        (o["kv"], o["text_encoder_device"], o["num_gpus"]): o["peak"]
        for o in summary["options"]
        if o["key_workspace"] == "per_layer"
    }
    cells = [
        f"{_gib(peaks[(kv, 'gpu', gpus)])} / {_gib(peaks[(kv, 'cpu', gpus)])}"
        for gpus in (1, 2)
        for kv in TABLE_KV_DTYPES
    ]
    smallest = summary["smallest"]
    return (*cells, _smallest_label(smallest["one_gpu"], 1), _smallest_label(smallest["two_gpus"], 2))


def _family_label(family: str, names: Sequence[str], every: bool) -> str:
    """``"self-forcing (every length)"``, ``"self-forcing (30s, 60s)"`` or ``"tiny"`` (a family of one)."""
    lengths = [name.removeprefix(f"{family}-") for name in names if name != family]
    if not lengths:
        return family
    return f"{family} ({'every length' if every and len(names) > 1 else ', '.join(lengths)})"


def memory_table(presets: Mapping[str, PresetLike], *, markdown: bool = False) -> str:
    """The memory plan of ``presets`` as a table (plain text, or markdown for the README).

    One row per model family, for its presets of equal memory (a bounded cache needs the same at every
    length; an unbounded one gets a row per length): the peak on one GPU with the cache in bf16 and in
    8 bits, each with the text encoder (TE) on the GPU / on the CPU; the largest per-GPU peak on 2 GPUs,
    likewise; and the smallest common GPU (:data:`GPU_SIZES_GB`) one GPU and two GPUs fit. The key
    workspace is ``per_layer`` (what ``memrope generate`` builds); GiB, estimates (weights and cache
    exact). Every preset's own plan: :func:`preset_memory_summary` (``memrope presets --json``).
    """
    header = (
        "presets",
        "1 GPU bf16 (TE GPU/CPU)",
        "1 GPU 8-bit (TE GPU/CPU)",
        "2 GPUs bf16 (TE GPU/CPU)",
        "2 GPUs 8-bit (TE GPU/CPU)",
        "smallest 1 GPU",
        "smallest 2 GPUs",
    )
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    families: dict[str, int] = {}
    for name, preset in presets.items():
        groups.setdefault((preset.family, _memory_row(preset_memory_summary(preset))), []).append(name)
        families[preset.family] = families.get(preset.family, 0) + 1
    rows: list[tuple[str, ...]] = [header]
    for (family, cells), names in groups.items():
        rows.append((_family_label(family, names, len(names) == families[family]), *cells))
    note = (
        "GiB per GPU (estimates: weights and cache exact, activations, text encoder (TE) and VAE estimated; "
        "a GPU of N GB taken to hold N GiB); 8-bit = fp8 e4m3, fp8 e5m2 or int8 (same size); key workspace "
        "per_layer; TE CPU = umT5 on the CPU (memrope generate --text-encoder-device cpu)."
    )
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
        return "\n".join([*lines, "", note])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join([*lines, "", note])

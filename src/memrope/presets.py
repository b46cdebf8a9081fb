"""Named generation set-ups: the built-in tiny model and the official Self-Forcing / LongLive runs.

A :class:`Preset` says everything :mod:`memrope.cli` needs to generate a video: where the DiT weights
come from (a :data:`memrope.loading.CHECKPOINTS` name, or none for the tiny model's deterministic
random weights), the model shape, the latent size and length, the cache policy, the sampler
(denoising steps, warp, shift), the text encoder and the VAE, and an estimate of the GPU memory
the run needs (:meth:`Preset.memory_estimate`).

The presets are made from a table of model families (:data:`MODEL_FAMILIES`, one
:class:`ModelFamily` each: checkpoint, model shape, lengths, chunk size, sampler, loader kind); a
new family is one entry there or one :func:`register_model_family` call.

* ``tiny``: a ~0.2M-parameter Wan-layout DiT (16 latent channels, so the layout matches Wan's VAE)
  with weights drawn from a fixed seed, the download-free :class:`~memrope.encoders.HashTextEncoder`
  and the weight-free :class:`~memrope.vae.TinyDecoder`. It runs anywhere in seconds; its weights
  are random, so its videos show coloured, temporally blended noise, not the prompt.
* ``self-forcing-<length>`` / ``longlive-<length>`` for the official lengths 30 s (120 latent
  frames), 60 s (240), 120 s (480), 240 s (960), 480 s (1920) and 1 h (14400): Wan2.1-T2V-1.3B at
  480x832 (latents 60x104), chunks of 3 latent frames, the paper's MemRoPE cache, steps
  [1000, 750, 500, 250] warped onto the shift-5 schedule, umT5-XXL text and the Wan2.1 VAE read from
  ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``.

Video length: ``N`` latent frames decode to ``4N - 3`` frames at 16 fps (``30 s`` = 120 latent frames
= 477 frames = 29.8 s, as the official configs name it).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from memrope._dtypes import dtype_name
from memrope.config import MemRoPEConfig
from memrope.encoders import UMT5_TEXT_DIM, UMT5_TEXT_LEN, WAN21_DIFFUSERS_REPO, HashTextEncoder
from memrope.loading import CHECKPOINTS, CheckpointKind
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.vae import TinyDecoder
from memrope.video_lengths import FPS, TEMPORAL_FACTOR, latent_frames_for_seconds, video_frame_count

__all__ = [
    "FPS",
    "MODEL_FAMILIES",
    "OFFICIAL_LENGTHS",
    "PRESETS",
    "TINY_MODEL_CONFIG",
    "MemoryEstimate",
    "ModelFamily",
    "Preset",
    "get_preset",
    "latent_frames_for_seconds",
    "presets_table",
    "register_model_family",
    "tiny_decoder",
    "tiny_model",
    "tiny_text_encoder",
]

SPATIAL_FACTOR = 8
GIB = 1024**3

TINY_MODEL_CONFIG = WanConfig(
    dim=64,
    ffn_dim=256,
    num_heads=2,
    num_layers=2,
    in_dim=16,
    out_dim=16,
    text_dim=64,
    text_len=32,
    freq_dim=64,
)
TINY_LATENT_HW = (16, 24)  # 128x192 video with the tiny decoder's x8
TINY_LATENT_FRAMES = 24  # 8 chunks, 93 frames, 5.8 s

# Official lengths: name suffix -> latent frames (docs/design.md §10).
OFFICIAL_LENGTHS: Mapping[str, int] = MappingProxyType(
    {"30s": 120, "60s": 240, "120s": 480, "240s": 960, "480s": 1920, "1h": 14400}
)
OFFICIAL_LATENT_HW = (60, 104)
OFFICIAL_STEPS = (1000, 750, 500, 250)

# umT5-XXL encoder (google/umt5-xxl as shipped in Wan2.1-T2V-1.3B-Diffusers/text_encoder):
# d_model 4096, 24 layers, d_ff 10240 (gated GELU: wi_0, wi_1, wo), 64 heads x d_kv 64, vocab 256384.
# embedding 256384*4096 = 1.050e9; per layer 4*4096*4096 (attention) + 3*4096*10240 (FFN) = 1.929e8;
# 24 layers = 4.63e9; total ~5.68e9 parameters.
UMT5_XXL_ENCODER_PARAMS = 256_384 * 4096 + 24 * (4 * 4096 * 4096 + 3 * 4096 * 10240)
# Wan2.1 VAE (AutoencoderKLWan): ~127M parameters (the float32 file is 508 MB); decoded in float32.
WAN_VAE_PARAMS = 127_000_000
# Peak workspace of decoding one 60x104 latent frame (4 video frames of 480x832) with the causal
# feature cache: a handful of float32 activations of up to 4x480x832x96 (153 MB each) at the top
# resolution plus the cache of the two last inputs of every causal conv. An estimate, not a
# measurement: 3 GiB.
WAN_VAE_DECODE_WORKSPACE = 3 * GIB
# CUDA context, cuBLAS/cuDNN workspaces and allocator slack.
CUDA_OVERHEAD = 1 * GIB


def tiny_model(seed: int = 0) -> CausalWanModel:
    """The built-in tiny DiT with its deterministic weights (``seed`` picks them), in eval mode.

    Same layout as Wan2.1 (16 latent channels, patch (1, 2, 2), Wan names), ~0.2M parameters. The
    weights are PyTorch's default initialisation drawn from a private generator seeded with ``seed``
    (the global RNG is not touched), so the same seed gives the same model on every machine.
    """
    fork_devices: list[int] = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        with torch.device("cpu"):
            model = CausalWanModel(TINY_MODEL_CONFIG)
    return model.eval().requires_grad_(False)


def tiny_text_encoder(
    *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> HashTextEncoder:
    """The download-free text encoder matching :func:`tiny_model` (``text_len`` 32, ``text_dim`` 64)."""
    return HashTextEncoder(
        text_len=TINY_MODEL_CONFIG.text_len, text_dim=TINY_MODEL_CONFIG.text_dim, device=device, dtype=dtype
    )


def tiny_decoder() -> TinyDecoder:
    """The weight-free decoder matching :func:`tiny_model` (x8 in space, x4 in time)."""
    return TinyDecoder(
        TINY_MODEL_CONFIG.out_dim, spatial_factor=SPATIAL_FACTOR, temporal_factor=TEMPORAL_FACTOR
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Approximate accelerator memory of a run, in bytes (see :meth:`Preset.memory_estimate`).

    The text encoder runs first and is freed before the DiT is loaded, so the peak is the larger of
    the two phases, not their sum.
    """

    weights: int
    cache: int
    activations: int
    text_encoder: int
    vae: int
    overhead: int

    @property
    def text_phase(self) -> int:
        return self.text_encoder + self.overhead

    @property
    def generation_phase(self) -> int:
        return self.weights + self.cache + self.activations + self.vae + self.overhead

    @property
    def peak(self) -> int:
        return max(self.text_phase, self.generation_phase)

    def to_dict(self) -> dict[str, int]:
        return {
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


@dataclass(frozen=True)
class Preset:
    """Everything needed to generate one kind of video.

    Attributes:
        name: the CLI name (``memrope generate --model NAME``).
        family: the :class:`ModelFamily` it comes from (``"tiny"``, ``"self-forcing"``, ``"longlive"``, ...).
        description: one line for humans.
        checkpoint: a :data:`memrope.loading.CHECKPOINTS` name, or ``None`` (deterministic random
            weights from :func:`tiny_model`).
        model_config: the DiT shape.
        latent_frames: default video length in latent frames.
        latent_hw: latent height and width (video: 8x that).
        cache: the cache policy (``cache.chunk_frames`` is the chunk size).
        denoising_steps, warp_denoising_step, shift, context_noise: the sampler (docs/design.md §10).
        text_encoder: ``"hash"`` or a Hub id / folder of the Diffusers layout (umT5 in ``text_encoder``).
        vae: ``"tiny"`` or a Hub id / folder of the Diffusers layout (Wan VAE in ``vae``).
        default_dtype: dtype of the DiT and latents on an accelerator (float32 on the CPU unless
            ``--dtype`` says otherwise).
        lora_checkpoint_kind: how a checkpoint given with a LoRA is read (see :class:`ModelFamily`).
    """

    name: str
    family: str
    description: str
    checkpoint: str | None
    model_config: WanConfig
    latent_frames: int
    latent_hw: tuple[int, int]
    cache: MemRoPEConfig = field(default_factory=MemRoPEConfig)
    denoising_steps: tuple[int, ...] = OFFICIAL_STEPS
    warp_denoising_step: bool = True
    shift: float = 5.0
    context_noise: float = 0.0
    text_encoder: str = WAN21_DIFFUSERS_REPO
    vae: str = WAN21_DIFFUSERS_REPO
    default_dtype: torch.dtype = torch.bfloat16
    lora_checkpoint_kind: CheckpointKind = "auto"

    def __post_init__(self) -> None:
        if self.checkpoint is not None and self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"preset {self.name!r}: unknown checkpoint {self.checkpoint!r}")
        if self.latent_frames % self.cache.chunk_frames:
            raise ValueError(f"preset {self.name!r}: latent_frames must be a multiple of the chunk")

    @property
    def is_tiny(self) -> bool:
        return self.checkpoint is None

    @property
    def chunk_frames(self) -> int:
        return self.cache.chunk_frames

    @property
    def height(self) -> int:
        return self.latent_hw[0] * SPATIAL_FACTOR

    @property
    def width(self) -> int:
        return self.latent_hw[1] * SPATIAL_FACTOR

    @property
    def video_frames(self) -> int:
        return video_frame_count(self.latent_frames, TEMPORAL_FACTOR)

    @property
    def seconds(self) -> float:
        return self.video_frames / FPS

    def memory_estimate(self, dtype: torch.dtype | None = None, batch_size: int = 1) -> MemoryEstimate:
        """Approximate accelerator memory of generating with this preset (bytes per component).

        * weights: the DiT's parameter count (the model built on the ``meta`` device) times the
          dtype size (bf16: 1.42e9 x 2 B = 2.6 GiB for Wan2.1-1.3B; LongLive's LoRA is merged).
        * cache: :meth:`MemRoPECache.resident_bytes` of the preset's cache built on ``meta`` (keys,
          values, the roped-key workspace, float32 EMA memories and RoPE tables: 4.8 GiB in bf16).
          Constant in the video length.
        * activations: one forward call on a chunk: the FFN hidden state, q/k/v/o, the roped keys of
          the whole window and attention output, counted twice for temporaries:
          ``2 * dtype_size * (tokens * (ffn_dim + 6 * dim) + window_tokens * 2 * dim)``, plus the
          cross-attention keys/values of every layer (``2 * layers * text_len * dim``).
        * text encoder: umT5-XXL encoder in bf16 (5.68e9 x 2 B = 10.6 GiB), freed before the DiT
          is loaded; ``0`` for the hash encoder.
        * vae: the Wan VAE in float32 (127M x 4 B) plus a 3 GiB decoding workspace (estimated).
        * overhead: 1 GiB of CUDA context and allocator slack.

        The peak is ``max(text phase, generation phase)``. The official code needs ~40 GB on one GPU
        mostly because it loads the text encoder in float32 on the GPU (22.7 GB) and keeps it there,
        clones the cache at every call and keeps an unused query cache (docs/design.md §10-11).
        """
        dtype = self.default_dtype if dtype is None else dtype
        frames = self.latent_frames if not self.cache.bounded else 0
        return _memory_estimate(
            self.model_config, self.cache, self.latent_hw, frames, self.is_tiny, dtype, batch_size
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description (for reports and ``memrope presets --json``)."""
        estimate = self.memory_estimate()
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "checkpoint": self.checkpoint,
            "checkpoint_files": _checkpoint_files(self.checkpoint),
            "model_config": self.model_config.to_dict(),
            "latent_frames": self.latent_frames,
            "video_frames": self.video_frames,
            "seconds": self.seconds,
            "fps": FPS,
            "height": self.height,
            "width": self.width,
            "latent_hw": list(self.latent_hw),
            "chunk_frames": self.chunk_frames,
            "cache": self.cache.to_dict(),
            "denoising_steps": list(self.denoising_steps),
            "warp_denoising_step": self.warp_denoising_step,
            "shift": self.shift,
            "context_noise": self.context_noise,
            "text_encoder": self.text_encoder,
            "vae": self.vae,
            "default_dtype": dtype_name(self.default_dtype),
            "gpu_memory_estimate_bytes": estimate.to_dict(),
        }


@functools.lru_cache(maxsize=64)
def _memory_estimate(
    config: WanConfig,
    cache_config: MemRoPEConfig,
    latent_hw: tuple[int, int],
    latent_frames: int,
    is_tiny: bool,
    dtype: torch.dtype,
    batch_size: int,
) -> MemoryEstimate:
    size = torch.empty(0, dtype=dtype).element_size()
    with torch.device("meta"):
        model = CausalWanModel(config)
    weights = sum(p.numel() for p in model.parameters()) * size
    cache = model.new_cache(cache_config, batch_size, latent_hw, device="meta", dtype=dtype).resident_bytes()
    grid = model.token_grid(latent_hw)
    frame_tokens = grid[0] * grid[1]
    tokens = batch_size * cache_config.chunk_frames * frame_tokens
    window = cache_config.cache_frames if cache_config.bounded else latent_frames
    window_tokens = batch_size * window * frame_tokens
    per_call = tokens * (config.ffn_dim + 6 * config.dim) + window_tokens * 2 * config.dim
    context = 2 * config.num_layers * batch_size * config.text_len * config.dim
    activations = (2 * per_call + context) * size
    if is_tiny:
        return MemoryEstimate(weights, cache, activations, 0, 0, 0)
    text_encoder = UMT5_XXL_ENCODER_PARAMS * 2
    vae = WAN_VAE_PARAMS * 4 + WAN_VAE_DECODE_WORKSPACE
    return MemoryEstimate(weights, cache, activations, text_encoder, vae, CUDA_OVERHEAD)


def _checkpoint_files(checkpoint: str | None) -> list[str]:
    if checkpoint is None:
        return []
    entry = CHECKPOINTS[checkpoint]
    return [entry.weights.uri] + ([entry.lora.uri] if entry.lora is not None else [])


@dataclass(frozen=True)
class ModelFamily:
    """One kind of model: where its weights come from, its shape, its lengths and how it samples.

    Each family gives one :class:`Preset` per entry of ``lengths``, named ``f"{name}-{length}"`` (or
    ``name`` alone for the length ``""``). A new family is one entry of :data:`MODEL_FAMILIES` (or a
    :func:`register_model_family` call); nothing else in memrope names families.

    Attributes:
        name: the family name (``Preset.family``), e.g. ``"longlive"``.
        description: each preset's one-line description, a ``str.format`` template that may use
            ``{length}``, ``{latent_frames}``, ``{height}`` and ``{width}``.
        checkpoint: a :data:`memrope.loading.CHECKPOINTS` name, or ``None`` (the seeded random
            weights of :func:`tiny_model`).
        lengths: preset name suffix -> latent frames (each a multiple of the chunk).
        model_config, latent_hw, cache, denoising_steps, warp_denoising_step, shift, context_noise,
        text_encoder, vae, default_dtype: as in :class:`Preset` (``cache.chunk_frames`` is the chunk).
        lora_checkpoint_kind: how :func:`memrope.components.load_model` reads a checkpoint given with
            ``lora=`` (``"longlive"``: a training checkpoint whose base has no EMA copy; ``"auto"``:
            detected from the file).
    """

    name: str
    description: str
    checkpoint: str | None
    lengths: Mapping[str, int]
    model_config: WanConfig
    latent_hw: tuple[int, int]
    cache: MemRoPEConfig = field(default_factory=MemRoPEConfig)
    denoising_steps: tuple[int, ...] = OFFICIAL_STEPS
    warp_denoising_step: bool = True
    shift: float = 5.0
    context_noise: float = 0.0
    text_encoder: str = WAN21_DIFFUSERS_REPO
    vae: str = WAN21_DIFFUSERS_REPO
    default_dtype: torch.dtype = torch.bfloat16
    lora_checkpoint_kind: CheckpointKind = "auto"

    def preset_name(self, length: str) -> str:
        """``"longlive-60s"`` for ``"60s"``; the family name for ``""``."""
        return f"{self.name}-{length}" if length else self.name

    def presets(self) -> dict[str, Preset]:
        """This family's presets, one per length, by name."""
        made: dict[str, Preset] = {}
        for length, latent_frames in self.lengths.items():
            name = self.preset_name(length)
            height, width = (size * SPATIAL_FACTOR for size in self.latent_hw)
            made[name] = Preset(
                name=name,
                family=self.name,
                description=self.description.format(
                    length=length, latent_frames=latent_frames, height=height, width=width
                ),
                checkpoint=self.checkpoint,
                model_config=self.model_config,
                latent_frames=latent_frames,
                latent_hw=self.latent_hw,
                cache=self.cache,
                denoising_steps=self.denoising_steps,
                warp_denoising_step=self.warp_denoising_step,
                shift=self.shift,
                context_noise=self.context_noise,
                text_encoder=self.text_encoder,
                vae=self.vae,
                default_dtype=self.default_dtype,
                lora_checkpoint_kind=self.lora_checkpoint_kind,
            )
        return made


_OFFICIAL_DESCRIPTION = "{length} ({latent_frames} latent frames), {height}x{width}, MemRoPE cache"

_FAMILIES: dict[str, ModelFamily] = {}
_PRESETS: dict[str, Preset] = {}
#: The model families by name, in the order of :data:`PRESETS` (a read-only view).
MODEL_FAMILIES: Mapping[str, ModelFamily] = MappingProxyType(_FAMILIES)
#: Every preset by name (a read-only view; :func:`register_model_family` adds to it).
PRESETS: Mapping[str, Preset] = MappingProxyType(_PRESETS)


def register_model_family(family: ModelFamily) -> ModelFamily:
    """Add ``family`` and its presets (``memrope generate --model NAME``, :func:`get_preset`).

    Raises:
        TypeError: ``family`` is not a :class:`ModelFamily`.
        ValueError: its name or one of its preset names is taken, or it has no lengths; nothing is
            added then.
    """
    if not isinstance(family, ModelFamily):
        raise TypeError(f"family must be a ModelFamily, got {type(family).__name__}")
    if family.name in _FAMILIES:
        raise ValueError(f"a model family named {family.name!r} is already registered")
    if not family.lengths:
        raise ValueError(f"model family {family.name!r} must name at least one length")
    presets = family.presets()
    taken = sorted(set(presets) & set(_PRESETS))
    if taken:
        raise ValueError(f"model family {family.name!r}: preset names {taken} are taken")
    _FAMILIES[family.name] = family
    _PRESETS.update(presets)
    return family


for _family in (
    ModelFamily(
        name="tiny",
        description="built-in tiny random-weight DiT, hash text encoder, tiny decoder (no download)",
        checkpoint=None,
        lengths={"": TINY_LATENT_FRAMES},
        model_config=TINY_MODEL_CONFIG,
        latent_hw=TINY_LATENT_HW,
        text_encoder="hash",
        vae="tiny",
        default_dtype=torch.float32,
    ),
    ModelFamily(
        name="self-forcing",
        description=f"Self-Forcing DMD (Wan2.1-T2V-1.3B, EMA weights), {_OFFICIAL_DESCRIPTION}",
        checkpoint="self-forcing",
        lengths=OFFICIAL_LENGTHS,
        model_config=WanConfig(),
        latent_hw=OFFICIAL_LATENT_HW,
    ),
    ModelFamily(
        name="longlive",
        description=f"LongLive-1.3B (base + rank-256 LoRA, merged), {_OFFICIAL_DESCRIPTION}",
        checkpoint="longlive",
        lengths=OFFICIAL_LENGTHS,
        model_config=WanConfig(),
        latent_hw=OFFICIAL_LATENT_HW,
        lora_checkpoint_kind="longlive",
    ),
):
    register_model_family(_family)
TINY_PRESET = PRESETS["tiny"]

assert UMT5_TEXT_DIM == WanConfig().text_dim and UMT5_TEXT_LEN == WanConfig().text_len


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


def _format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.1f} s"


def _format_bytes(count: int) -> str:
    return f"{count / GIB:.1f} GiB" if count >= GIB / 10 else f"{count / 1024**2:.1f} MiB"


def presets_table(presets: Mapping[str, Preset] | None = None) -> str:
    """A plain-text table of the presets: name, checkpoint, length, size, estimated GPU memory."""
    presets = PRESETS if presets is None else presets
    header = (
        "preset",
        "checkpoint",
        "latent",
        "frames",
        "length",
        "video",
        "chunk",
        "cache",
        "steps",
        "GPU mem",
    )
    rows = [header]
    for preset in presets.values():
        cache = preset.cache
        layout = (
            f"{cache.policy} {cache.cache_frames}={cache.sink_frames}s+{cache.memory_frames}m+"
            f"{cache.recent_frames}r+{cache.chunk_frames}c"
        )
        rows.append(
            (
                preset.name,
                preset.checkpoint or "(random, seeded)",
                str(preset.latent_frames),
                str(preset.video_frames),
                _format_seconds(preset.seconds),
                f"{preset.height}x{preset.width}",
                str(preset.chunk_frames),
                layout,
                f"{len(preset.denoising_steps)}{' warped' if preset.warp_denoising_step else ''}",
                "~" + _format_bytes(preset.memory_estimate().peak),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    checkpoints = dict.fromkeys(family.checkpoint for family in MODEL_FAMILIES.values() if family.checkpoint)
    weights = "; ".join(f"{name}: {', '.join(_checkpoint_files(name))}" for name in checkpoints)
    notes = [
        "",
        (
            "latent: latent frames (chunk of 3); frames: video frames at 16 fps (4N-3); sampler: steps "
            "[1000, 750, 500, 250] warped, shift 5.0."
        ),
        f"Official presets read umT5-XXL and the Wan2.1 VAE from {WAN21_DIFFUSERS_REPO}; weights: {weights}.",
        (
            "GPU mem: estimated peak in bf16, batch 1 = max(text encoder phase, DiT weights + cache + "
            "activations + VAE); constant in the video length (see Preset.memory_estimate)."
        ),
    ]
    return "\n".join(lines + notes)

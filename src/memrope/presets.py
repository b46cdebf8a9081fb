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
* ``toy``: a 1.2M-parameter causal Wan DiT trained by ``scripts/train_toy.py`` on memrope's
  synthetic world of coloured shapes drifting over a fixed background (:mod:`memrope.toy`), its
  weights shipped in the package (:data:`memrope.loading.CHECKPOINTS` ``"toy"``), with the hash
  text encoder (the model is unconditional) and the exact weight-free :class:`~memrope.toy.ToyDecoder`;
  128x192, frame by frame through the MemRoPE cache (3 sink + 2 memory + 6 recent + 1), steps
  [1000, 750, 500, 250] on the unshifted schedule (shift 1), its own frames noised to timestep 150
  before the cache holds them (``noised_context``, as it was trained); every video continues the
  world's first 3 latent frames of the seed's scene (``initial_latents="toy-world"``).
* ``self-forcing-<length>`` / ``longlive-<length>`` for the official lengths 30 s (120 latent
  frames), 60 s (240), 120 s (480), 240 s (960), 480 s (1920) and 1 h (14400): Wan2.1-T2V-1.3B at
  480x832 (latents 60x104), chunks of 3 latent frames, the paper's MemRoPE cache, steps
  [1000, 750, 500, 250] warped onto the shift-5 schedule, umT5-XXL text and the Wan2.1 VAE read from
  ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``.

* The Self-Forcing family, each with its own checkpoint, chunk size and sampler taken from its own
  configs (cited next to each entry below): ``causal-forcing-chunkwise-<length>``,
  ``causal-forcing-longvideo-<length>``, ``causal-forcing-framewise-<length>`` (1-frame chunks),
  ``causal-forcing-framewise-2step-<length>`` / ``-1step-<length>`` (Causal Forcing++),
  ``causvid-<length>``, ``reward-forcing-<length>`` and ``krea-realtime-14b-<length>``
  (Wan2.1-T2V-14B: :data:`WAN21_T2V_14B_CONFIG`).

Every preset names the license of its weights (:attr:`Preset.license`; several are not
commercial-use licenses or state none); memrope bundles no published weights, it downloads them from
their publishers' Hub repositories (only the toy model's own weights, trained by
``scripts/train_toy.py``, ship in the package).

Video length: ``N`` latent frames decode to ``4N - 3`` frames at 16 fps (``30 s`` = 120 latent frames
= 477 frames = 29.8 s, as the official configs name it).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import torch

from memrope._dtypes import dtype_name
from memrope.config import MemRoPEConfig
from memrope.encoders import UMT5_TEXT_DIM, UMT5_TEXT_LEN, WAN21_DIFFUSERS_REPO, HashTextEncoder
from memrope.loading import CHECKPOINTS, CheckpointKind
from memrope.memory_plan import GIB, MemoryEstimate, memory_table, preset_estimate
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.toy import TOY_CACHE, TOY_CONTEXT_NOISE, TOY_LATENT_FRAMES, TOY_LATENT_HW, TOY_MODEL_CONFIG
from memrope.vae import TinyDecoder
from memrope.video_lengths import FPS, TEMPORAL_FACTOR, latent_frames_for_seconds, video_frame_count

__all__ = [
    "FPS",
    "MODEL_FAMILIES",
    "OFFICIAL_LENGTHS",
    "PRESETS",
    "TINY_MODEL_CONFIG",
    "WAN21_T2V_14B_CONFIG",
    "MemoryEstimate",
    "ModelFamily",
    "ModelSettings",
    "Preset",
    "families_named",
    "get_preset",
    "latent_frames_for_seconds",
    "presets_table",
    "register_model_family",
    "tiny_decoder",
    "tiny_model",
    "tiny_text_encoder",
]

SPATIAL_FACTOR = 8
#: Decoder names resolved without a download (:func:`memrope.components.load_decoder`).
BUILT_IN_DECODERS = ("tiny", "toy")
#: The sources of a preset's given first chunk (Preset.initial_latents); None: generated.
INITIAL_LATENT_SOURCES = (None, "toy-world")
#: :attr:`ModelFamily.license` of a family that does not give one.
LICENSE_NOT_STATED = "not stated"

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
# Wan2.1-T2V-14B (Wan-AI/Wan2.1-T2V-14B config.json: dim 5120, ffn_dim 13824, 40 heads of 128, 40 layers;
# in/out 16 channels, text_dim 4096, text_len 512, freq_dim 256 as in the 1.3B model).
WAN21_T2V_14B_CONFIG = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

# Official lengths: name suffix -> latent frames (docs/design.md §10).
OFFICIAL_LENGTHS: Mapping[str, int] = MappingProxyType(
    {"30s": 120, "60s": 240, "120s": 480, "240s": 960, "480s": 1920, "1h": 14400}
)
OFFICIAL_LATENT_HW = (60, 104)
OFFICIAL_STEPS = (1000, 750, 500, 250)


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


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """What a :class:`ModelFamily` hands to each of its presets as it is: weights, shape, cache, sampler,
    text encoder and decoder (keyword-only fields of both).

    Attributes:
        checkpoint: a :data:`memrope.loading.CHECKPOINTS` name, or ``None`` (deterministic random
            weights from :func:`tiny_model`).
        model_config: the DiT shape.
        latent_hw: latent height and width (video: 8x that).
        cache: the cache policy (``cache.chunk_frames`` is the chunk size).
        denoising_steps, warp_denoising_step, shift, context_noise, noised_context: the sampler
            (docs/design.md §10; :class:`~memrope.pipeline.CausalInferencePipeline`).
        first_chunk_denoising_steps: the steps of the first chunk when they differ (Causal Forcing++), else ``None``.
        text_encoder: ``"hash"`` or a Hub id / folder of the Diffusers layout (umT5 in ``text_encoder``).
        vae: ``"tiny"`` or a Hub id / folder of the Diffusers layout (Wan VAE in ``vae``).
        default_dtype: dtype of the DiT and latents on an accelerator (float32 on the CPU unless
            ``--dtype`` says otherwise).
        lora_checkpoint_kind: how :func:`memrope.components.load_model` reads a checkpoint given with
            ``lora=`` (``"longlive"``: a training checkpoint whose base has no EMA copy; ``"auto"``:
            detected from the file).
        license: the license of the weights as their publisher states it (an SPDX id such as
            ``"Apache-2.0"``, or a sentence with the page to read); shown by ``memrope presets``.
        initial_latents: where the video's first chunk comes from when the model continues given
            frames (:func:`memrope.components.make_initial_latents`): ``"toy-world"``, the toy world's
            scene of the seed; ``None`` (default): generated from noise like every chunk.
        unconditional: the DiT ignores its prompt (the toy's cross-attention outputs are zero), so
            ``memrope generate`` makes one video without ``--prompt``.
    """

    checkpoint: str | None
    model_config: WanConfig
    latent_hw: tuple[int, int]
    cache: MemRoPEConfig = field(default_factory=MemRoPEConfig)
    denoising_steps: tuple[int, ...] = OFFICIAL_STEPS
    first_chunk_denoising_steps: tuple[int, ...] | None = None
    warp_denoising_step: bool = True
    shift: float = 5.0
    context_noise: float = 0.0
    noised_context: bool = False
    text_encoder: str = WAN21_DIFFUSERS_REPO
    vae: str = WAN21_DIFFUSERS_REPO
    default_dtype: torch.dtype = torch.bfloat16
    lora_checkpoint_kind: CheckpointKind = "auto"
    license: str = LICENSE_NOT_STATED
    initial_latents: str | None = None
    unconditional: bool = False

    def _check_settings(self, owner: str) -> None:
        """Refuse settings no family or preset can have; ``owner`` names it in the message."""
        if self.initial_latents not in INITIAL_LATENT_SOURCES:
            raise ValueError(
                f"{owner}: initial_latents must be one of {INITIAL_LATENT_SOURCES}, got {self.initial_latents!r}"
            )
        if self.checkpoint is not None and self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"{owner}: unknown checkpoint {self.checkpoint!r}")
        if not isinstance(self.unconditional, bool):
            raise TypeError(f"{owner}: unconditional must be a bool, got {self.unconditional!r}")
        if not isinstance(self.license, str) or not self.license.strip():
            raise ValueError(
                f"{owner}: license must be a non-empty string (e.g. 'Apache-2.0', or "
                f"{LICENSE_NOT_STATED!r}), got {self.license!r}"
            )


@dataclass(frozen=True)
class Preset(ModelSettings):
    """Everything needed to generate one kind of video: its :class:`ModelSettings` and a length.

    Attributes:
        name: the CLI name (``memrope generate --model NAME``).
        family: the :class:`ModelFamily` it comes from (``"tiny"``, ``"self-forcing"``, ``"longlive"``, ...).
        description: one line for humans.
        latent_frames: default video length in latent frames.
    """

    name: str
    family: str
    description: str
    latent_frames: int

    def __post_init__(self) -> None:
        self._check_settings(f"preset {self.name!r}")
        if self.latent_frames % self.cache.chunk_frames:
            raise ValueError(f"preset {self.name!r}: latent_frames must be a multiple of the chunk")

    @property
    def is_tiny(self) -> bool:
        return self.checkpoint is None

    @property
    def runs_locally(self) -> bool:
        """Whether it needs nothing but its DiT: hash text encoder and a weight-free decoder (tiny, toy)."""
        return self.text_encoder == "hash" and self.vae in BUILT_IN_DECODERS

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

    def memory_estimate(
        self,
        dtype: torch.dtype | None = None,
        batch_size: int = 1,
        *,
        kv_dtype: object = None,
        key_workspace: str = "per_layer",
        text_encoder_device: str = "gpu",
    ) -> MemoryEstimate:
        """GPU memory of generating with this preset, bytes per component (:func:`memrope.memory_plan.estimate_memory`).

        ``dtype`` defaults to :attr:`default_dtype`; ``kv_dtype`` (``None``, ``"fp8"``, ``"int8"``, ...),
        ``key_workspace`` and ``text_encoder_device`` (``"gpu"`` or ``"cpu"``) as in
        :func:`~memrope.memory_plan.estimate_memory`. Weights and cache are exact, the rest estimated;
        the peak on 1 or 2 GPUs is :func:`memrope.memory_plan.preset_memory_plan`. The official code
        needs ~40 GB on one GPU mostly because it loads the text encoder in float32 on the GPU (22.7 GB)
        and keeps it there, clones the cache at every call and keeps an unused query cache
        (docs/design.md §10-11).
        """
        return preset_estimate(
            self,
            dtype,
            batch_size,
            kv_dtype=kv_dtype,
            key_workspace=key_workspace,
            text_encoder_device=text_encoder_device,
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
            "first_chunk_denoising_steps": (
                None if self.first_chunk_denoising_steps is None else list(self.first_chunk_denoising_steps)
            ),
            "warp_denoising_step": self.warp_denoising_step,
            "shift": self.shift,
            "context_noise": self.context_noise,
            "noised_context": self.noised_context,
            "text_encoder": self.text_encoder,
            "vae": self.vae,
            "default_dtype": dtype_name(self.default_dtype),
            "license": self.license,
            "gpu_memory_estimate_bytes": estimate.to_dict(),
        }


def _checkpoint_files(checkpoint: str | None) -> list[str]:
    if checkpoint is None:
        return []
    entry = CHECKPOINTS[checkpoint]
    return [entry.weights.display] + ([entry.lora.display] if entry.lora is not None else [])


@dataclass(frozen=True)
class ModelFamily(ModelSettings):
    """One kind of model: where its weights come from, its shape, its lengths and how it samples.

    Each family gives one :class:`Preset` per entry of ``lengths``, named ``f"{name}-{length}"`` (or
    ``name`` alone for the length ``""``), with the family's :class:`ModelSettings` as they are. A new
    family is one entry of :data:`MODEL_FAMILIES` (or a :func:`register_model_family` call); nothing
    else in memrope names families.

    Attributes:
        name: the family name (``Preset.family``), e.g. ``"longlive"``.
        description: each preset's one-line description, a ``str.format`` template that may use
            ``{length}``, ``{latent_frames}``, ``{height}`` and ``{width}``.
        lengths: preset name suffix -> latent frames (each a multiple of the chunk).
    """

    name: str
    description: str
    lengths: Mapping[str, int]

    def __post_init__(self) -> None:
        self._check_settings(f"model family {self.name!r}")

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
                latent_frames=latent_frames,
                **{field_name: getattr(self, field_name) for field_name in _SHARED_WITH_PRESET},
            )
        return made


#: The fields a family hands to each of its presets as they are.
_SHARED_WITH_PRESET: tuple[str, ...] = tuple(item.name for item in fields(ModelSettings))

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


# Sampler and cache facts of each family, from its own code and configs (cited per entry). Every
# family below is Self-Forcing's causal Wan2.1 (wan/modules/causal_model.py, the same per-block cache
# and call protocol); what the configs do not set comes from Self-Forcing's configs/default_config.yaml
# (independent_first_frame: false, context_noise: 0). The cache is memrope's: the families' own
# caches (full attention over the trained 21 frames, or a short window) are replaced by the MemRoPE
# cache of the paper (12 frames = 3 sink + 2 memory + 4 recent + 3 chunk) unless an entry says otherwise.
# Frame-wise families: chunks of 1 frame, below the 3-frame sink. Like the official MemRoPE code, the
# rewrite calls of chunks 1 and 2 leave sink frames 1 and 2 with the keys of their first, noisiest call
# (sink protection, docs/design.md §3): the presets compute what the official code computes;
# --no-protect-sink (protect_sink_on_rewrite=False) keeps clean sink frames instead.
FRAMEWISE_CACHE = MemRoPEConfig(chunk_frames=1)
CAUSAL_FORCING_LICENSE = "Apache-2.0"  # huggingface.co/zhuhz22/Causal-Forcing model card: license: apache-2.0

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
        license="Apache-2.0 (random weights)",
    ),
    ModelFamily(
        name="toy",
        description="toy DiT trained on drifting shapes (memrope.toy, shipped), hash text encoder, toy decoder",
        checkpoint="toy",
        lengths={"": TOY_LATENT_FRAMES * 4},  # 48 frames: the trained 12, then the cache evicts
        model_config=TOY_MODEL_CONFIG,
        latent_hw=TOY_LATENT_HW,
        cache=TOY_CACHE,
        text_encoder="hash",
        vae="toy",
        shift=1.0,  # the schedule it was trained on (scripts/train_toy.py): sigmas 1, 0.75, 0.5, 0.25
        context_noise=TOY_CONTEXT_NOISE,  # its own frames enter the cache noised, as in its training
        noised_context=True,
        default_dtype=torch.float32,
        license="Apache-2.0 (memrope's own)",
        initial_latents="toy-world",  # it continues the world's first chunk (image-to-video)
        unconditional=True,  # its cross-attention outputs were zeroed and frozen in training
    ),
    ModelFamily(
        name="self-forcing",
        description=f"Self-Forcing DMD (Wan2.1-T2V-1.3B, EMA weights), {_OFFICIAL_DESCRIPTION}",
        checkpoint="self-forcing",
        lengths=OFFICIAL_LENGTHS,
        model_config=WanConfig(),
        latent_hw=OFFICIAL_LATENT_HW,
        # No license found in the sources read (guandeh17/Self-Forcing README; its model card
        # huggingface.co/gdhe17/Self-Forcing was not readable here).
        license="unverified (see model card)",
    ),
    ModelFamily(
        name="longlive",
        description=f"LongLive-1.3B (base + rank-256 LoRA, merged), {_OFFICIAL_DESCRIPTION}",
        checkpoint="longlive",
        lengths=OFFICIAL_LENGTHS,
        model_config=WanConfig(),
        latent_hw=OFFICIAL_LATENT_HW,
        lora_checkpoint_kind="longlive",
        # No license found in the sources read (NVlabs/LongLive README; its model card
        # huggingface.co/Efficient-Large-Model/LongLive-1.3B was not readable here).
        license="unverified (see model card)",
    ),
    # from thu-ml/Causal-Forcing configs/causal_forcing_dmd_chunkwise.yaml (read in its copy
    # AshadowZ/PackForcing-Unofficial): num_frame_per_block 3, denoising_step_list [1000, 750, 500, 250],
    # warp_denoising_step true, timestep_shift 5.0; image_or_video_shape [1, 21, 16, 60, 104].
    ModelFamily(
        name="causal-forcing-chunkwise",
        description=f"Causal Forcing chunk-wise 4-step (Wan2.1-T2V-1.3B), {_OFFICIAL_DESCRIPTION}",
        checkpoint="causal-forcing-chunkwise",
        lengths=OFFICIAL_LENGTHS,
        model_config=WanConfig(),
        latent_hw=OFFICIAL_LATENT_HW,
        license=CAUSAL_FORCING_LICENSE,
    ),
    # from thu-ml/Causal-Forcing long_video/configs/rolling_forcing_dmd.yaml (read in
    # AshadowZ/PackForcing-Unofficial): num_frame_per_block 3, steps [1000, 750, 500, 250] warped, shift 5.0.
    # Its own sampler is Rolling Forcing's (several chunks in flight); memrope runs it chunk by chunk.
    ModelFamily(
        name="causal-forcing-longvideo",
        description=f"Causal Forcing long-video generator (Wan2.1-T2V-1.3B), {_OFFICIAL_DESCRIPTION}",
        checkpoint="causal-forcing-longvideo",
        lengths=OFFICIAL_LENGTHS,
        model_config=WanConfig(),
        latent_hw=OFFICIAL_LATENT_HW,
        license=CAUSAL_FORCING_LICENSE,
    ),
    # from thu-ml/Causal-Forcing configs/causal_forcing_dmd_framewise.yaml (read in
    # AshadowZ/PackForcing-Unofficial): num_frame_per_block 1, steps [1000, 750, 500, 250] warped, shift 5.0.
    ModelFamily(
        name="causal-forcing-framewise",
        description="Causal Forcing frame-wise 4-step (Wan2.1-T2V-1.3B), "
        f"{_OFFICIAL_DESCRIPTION}, 1-frame chunks",
        checkpoint="causal-forcing-framewise",
        lengths=OFFICIAL_LENGTHS,
        model_config=WanConfig(),
        latent_hw=OFFICIAL_LATENT_HW,
        cache=FRAMEWISE_CACHE,
        license=CAUSAL_FORCING_LICENSE,
    ),
    # from thu-ml/Causal-Forcing configs/causal_forcing_dmd_framewise_2step.yaml
    # (read in kw7243/Causal-Forcing):
    # num_frame_per_block 1, denoising_step_list [1000, 500], warped, shift 5.0. The config also gives
    # denoising_step_list_first_chunk [1000, 750, 500, 250] (its pipeline/causal_inference.py runs it on
    # block 0 only): first_chunk_denoising_steps.
    ModelFamily(
        name="causal-forcing-framewise-2step",
        description="Causal Forcing++ frame-wise 2-step (Wan2.1-T2V-1.3B), "
        f"{_OFFICIAL_DESCRIPTION}, 1-frame chunks",
        checkpoint="causal-forcing-framewise-2step",
        lengths=OFFICIAL_LENGTHS,
        model_config=WanConfig(),
        latent_hw=OFFICIAL_LATENT_HW,
        cache=FRAMEWISE_CACHE,
        denoising_steps=(1000, 500),
        first_chunk_denoising_steps=OFFICIAL_STEPS,
        license=CAUSAL_FORCING_LICENSE,
    ),
    # from thu-ml/Causal-Forcing configs/causal_forcing_dmd_framewise_1step.yaml
    # (read in kw7243/Causal-Forcing):
    # num_frame_per_block 1, denoising_step_list [1000], warped, shift 5.0; first chunk [1000, 750, 500, 250]
    # in the official sampler, as for the 2-step model above.
    ModelFamily(
        name="causal-forcing-framewise-1step",
        description="Causal Forcing++ frame-wise 1-step (Wan2.1-T2V-1.3B), "
        f"{_OFFICIAL_DESCRIPTION}, 1-frame chunks",
        checkpoint="causal-forcing-framewise-1step",
        lengths=OFFICIAL_LENGTHS,
        model_config=WanConfig(),
        latent_hw=OFFICIAL_LATENT_HW,
        cache=FRAMEWISE_CACHE,
        denoising_steps=(1000,),
        first_chunk_denoising_steps=OFFICIAL_STEPS,
        license=CAUSAL_FORCING_LICENSE,
    ),
    # from tianweiy/CausVid configs/wan_causal_dmd.yaml (read in its fork yitongdeng2/CausVid):
    # num_frame_per_block 3, denoising_step_list [1000, 757, 522, 0] of which causal_inference.py drops the
    # final 0 and does not warp; timestep_shift 8.0 (causvid/models/wan/wan_wrapper.py builds
    # FlowMatchScheduler(shift=8.0, sigma_min=0.0, extra_one_step=True)); the clean context call runs at t=0.
    ModelFamily(
        name="causvid",
        description=f"CausVid autoregressive 3-step (Wan2.1-T2V-1.3B), {_OFFICIAL_DESCRIPTION}",
        checkpoint="causvid",
        lengths=OFFICIAL_LENGTHS,
        model_config=WanConfig(),
        latent_hw=OFFICIAL_LATENT_HW,
        denoising_steps=(1000, 757, 522),
        warp_denoising_step=False,
        shift=8.0,
        license="MIT",  # huggingface.co/tianweiy/CausVid: License: mit (the code's LICENSE is MIT too)
    ),
    # from JaydenLyh/Reward-Forcing configs/reward_forcing.yaml (read in its copy
    # geezhi/Gibbs-Candidate-Matching): num_frame_per_block 3, steps [1000, 750, 500, 250] warped,
    # timestep_shift 5.0, model_kwargs local_attn_size 9 and sink_size 3. Its own cache
    # (wan/modules/causal_model.py, read in YepicAI/Reward-Forcing) folds evicted frames into the sink
    # with an EMA (compression_alpha 0.999); memrope keeps its window of 9 frames and sink of 3, with the
    # MemRoPE memory (9 = 3 sink + 2 memory + 1 recent + 3 chunk).
    ModelFamily(
        name="reward-forcing",
        description="Reward Forcing (Re-DMD) 4-step (Wan2.1-T2V-1.3B), {length} ({latent_frames} latent "
        "frames), {height}x{width}, MemRoPE cache of its 9-frame window",
        checkpoint="reward-forcing",
        lengths=OFFICIAL_LENGTHS,
        model_config=WanConfig(),
        latent_hw=OFFICIAL_LATENT_HW,
        cache=MemRoPEConfig(cache_frames=9, sink_frames=3),
        # huggingface.co/JaydenLu666/Reward-Forcing-T2V-1.3B has no license metadata ("empty or missing
        # yaml metadata in repo card") and its README names none.
        license=f"{LICENSE_NOT_STATED} (see model card)",
    ),
    # from krea-ai/realtime-video configs/self_forcing_server_14b.yaml: num_frame_per_block 3,
    # denoising_step_list [1000, 750, 500, 250], warp_denoising_step true, timestep_shift 5.0; its
    # release_server.py GenerateParams: 832x480, context_noise 0.0, kv_cache_num_frames 3 with
    # do_kv_recomp (the cache is recomputed from the last 3 frames; memrope's MemRoPE cache replaces it),
    # and a default of 6 linspace steps (num_denoising_steps, "use 4 for performance") that memrope leaves
    # to --steps. Text encoder and VAE: those of Wan2.1 (its README downloads Wan-AI/Wan2.1-T2V-1.3B).
    ModelFamily(
        name="krea-realtime-14b",
        description=f"Krea Realtime 14B (Wan2.1-T2V-14B, Self-Forcing distilled), {_OFFICIAL_DESCRIPTION}",
        checkpoint="krea-realtime-video-14b",
        lengths=OFFICIAL_LENGTHS,
        model_config=WAN21_T2V_14B_CONFIG,
        latent_hw=OFFICIAL_LATENT_HW,
        # huggingface.co/krea/krea-realtime-video front matter: license: apache-2.0 (the inference code in
        # krea-ai/realtime-video is CC BY-NC-SA 4.0; memrope does not use it).
        license="Apache-2.0",
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
        raise KeyError(unknown_preset_message(name)) from None


def families_named(name: str) -> list[ModelFamily]:
    """The family called ``name``, else every family whose name starts with ``name`` (none for ``""``)."""
    if name in MODEL_FAMILIES:
        return [MODEL_FAMILIES[name]]
    return [family for family in MODEL_FAMILIES.values() if name and family.name.startswith(name)]


def unknown_preset_message(name: str) -> str:
    """Why ``name`` is not a preset: the nearest preset, its family's lengths and the other families.

    Every family's presets differ only in the default length, so the message also says that
    ``--seconds`` / ``--num-frames`` give any length with any of them.
    """
    starting = families_named(str(name))
    if len(starting) > 1:
        return (
            f"unknown preset {name!r}; it starts the families {', '.join(family.name for family in starting)}: "
            "name one of them "
            "(`memrope presets` lists every preset)"
        )
    nearest = difflib.get_close_matches(str(name), list(PRESETS), n=1, cutoff=0.0)
    family = PRESETS[nearest[0]].family if nearest else None
    same_family = [preset for preset in PRESETS.values() if preset.family == family]
    other_families = [other for other in MODEL_FAMILIES if other != family]
    parts = [f"unknown preset {name!r}"]
    if nearest:
        parts.append(f"nearest: {nearest[0]!r}")
        parts.append(f"family {family!r} has {', '.join(preset.name for preset in same_family)}")
    parts.append(f"other families: {', '.join(other_families)} (`memrope presets` lists every preset)")
    return "; ".join(parts) + "; any preset makes any length with --seconds or --num-frames"


def _family_names(family: str, members: list[Preset]) -> tuple[str, str]:
    """Names and lengths of a family's presets: ``("self-forcing-<length>", "30s, 60s")`` when they are
    named ``family-<length>``, else their names and lengths in seconds."""
    prefix = f"{family}-"
    if len(members) > 1 and all(member.name.startswith(prefix) for member in members):
        return prefix + "<length>", ", ".join(member.name.removeprefix(prefix) for member in members)
    return (
        ", ".join(member.name for member in members),
        ", ".join(_format_seconds(member.seconds) for member in members),
    )


def _format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.1f} s"


def _format_bytes(count: int) -> str:
    return f"{count / GIB:.1f} GiB" if count >= GIB / 10 else f"{count / 1024**2:.1f} MiB"


def presets_table(presets: Mapping[str, Preset] | None = None, *, every_preset: bool = False) -> str:
    """A plain-text table of the presets, then their memory plan (:func:`memrope.memory_plan.memory_table`).

    One row per family (its presets differ only in the default length, listed in ``lengths``), or
    with ``every_preset`` one row per preset with its latent and video frames. Columns: checkpoint,
    length, video size, chunk, cache layout, steps, estimated GPU memory and the weights' license.
    """
    presets = PRESETS if presets is None else presets
    groups: dict[str, list[Preset]] = {}
    for preset in presets.values():
        groups.setdefault(preset.name if every_preset else preset.family, []).append(preset)
    if every_preset:
        header: tuple[str, ...] = ("preset", "checkpoint", "latent", "frames", "length")
    else:
        header = ("presets", "checkpoint", "lengths")
    header += ("video", "chunk", "cache", "steps", "GPU mem", "license")
    rows = [header]
    for members in groups.values():
        first = members[0]
        cache = first.cache
        layout = (
            f"{cache.policy} {cache.cache_frames}={cache.sink_frames}s+{cache.memory_frames}m+"
            f"{cache.recent_frames}r+{cache.chunk_frames}c"
        )
        if every_preset:
            named: tuple[str, ...] = (
                first.name,
                first.checkpoint or "(random, seeded)",
                str(first.latent_frames),
                str(first.video_frames),
                _format_seconds(first.seconds),
            )
        else:
            names, lengths = _family_names(first.family, members)
            named = (names, first.checkpoint or "(random, seeded)", lengths)
        rows.append(
            named
            + (
                f"{first.height}x{first.width}",
                str(first.chunk_frames),
                layout,
                f"{len(first.denoising_steps)}{' warped' if first.warp_denoising_step else ''}",
                "~" + _format_bytes(first.memory_estimate().peak),
                first.license,
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
            "presets: NAME-<length> is one preset per length (`memrope presets --all`: one row each, with "
            "latent and video frames; 30s = 120 latent frames = 29.8 s); --seconds makes any length with any preset."
        ),
        (
            "latent: latent frames; frames: video frames at 16 fps (4N-3); chunk: latent frames per chunk; "
            "steps: denoising steps per chunk (warped: onto the shifted schedule; the lists and shifts are in "
            "`memrope presets --json`)."
        ),
        f"Official presets read umT5-XXL and the Wan2.1 VAE from {WAN21_DIFFUSERS_REPO}; weights: {weights}.",
        (
            "GPU mem: estimated peak in bf16, batch 1 = max(text encoder phase, DiT weights + cache + "
            "activations + VAE); constant in the video length (see Preset.memory_estimate)."
        ),
        (
            "license: of the weights, as their publisher states it (model cards on the Hugging Face Hub); "
            "memrope bundles none of them (toy: its own, trained by scripts/train_toy.py)."
        ),
    ]
    plan = ["", "memory plan (peak GPU memory, GiB):", memory_table(presets)]
    return "\n".join(lines + notes + plan)

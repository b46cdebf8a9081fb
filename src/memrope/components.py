"""Build the parts of a :class:`~memrope.presets.Preset`: DiT, text encoder, decoder and pipeline.

The same code serves ``memrope generate`` and Python users::

    from memrope import components
    from memrope.presets import get_preset

    preset = get_preset("self-forcing-60s")
    encoder = components.load_text_encoder(preset, device="cuda")
    prompt = encoder.encode(["a red fox running through snow"])
    del encoder                                   # umT5-XXL is 10.6 GiB in bf16: free it first
    # or, where the GPU cannot hold umT5: umT5 on the CPU, freed before this returns
    prompt = components.encode_prompts(preset, ["a red fox running through snow"], device="cpu")
    model = components.load_model(preset, device="cuda")          # downloads the checkpoint once
    decoder = components.load_decoder(preset, device="cuda")

For a model split over devices, pass ``placement=plan_devices("split", ["cuda:0", "cuda:1"], ...)``
(:mod:`memrope.devices`) to :func:`load_model` and use ``plan.text_encoder_device`` /
``plan.vae_device`` (and their ``offload_*`` flags) for the encoder and the decoder.
    pipeline = components.make_pipeline(preset, model, decoder=decoder)
    for chunk in pipeline.stream(prompt, num_frames=preset.latent_frames, seed=0,
                                 latent_hw=preset.latent_hw):
        ...                                       # chunk.frames: [1, T, 3, 480, 832] in [-1, 1]

Loading errors keep their types: :class:`FileNotFoundError` for a checkpoint that is not there (and,
offline, not cached), :class:`~memrope.loading.CheckpointFormatError` for a file that is empty,
truncated or in no checkpoint format, :class:`~memrope.loading.CheckpointKeyError` for weights that do
not fit, :class:`~memrope.errors.NonFiniteError` for weights or LoRA factors holding NaN or infinity,
:class:`ImportError` naming the extra to install for the umT5 encoder or the Wan VAE.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from memrope.config import MemRoPEConfig
from memrope.devices import DevicePlan, default_device, place_model
from memrope.encoders import HashTextEncoder, TextEncoder, UMT5TextEncoder
from memrope.loading import CheckpointKind, load_wan_weights
from memrope.models.wan import CausalWanModel
from memrope.pipeline import CausalInferencePipeline
from memrope.presets import TINY_MODEL_CONFIG, Preset, tiny_decoder, tiny_model
from memrope.vae import VideoDecoder, WanVAEDecoder

__all__ = [
    "default_device",
    "encode_prompts",
    "load_decoder",
    "load_model",
    "load_text_encoder",
    "make_initial_latents",
    "make_pipeline",
]

PathLike = str | os.PathLike[str]


def _device(device: torch.device | str | None) -> torch.device:
    return default_device() if device is None else torch.device(device)


def load_model(
    preset: Preset,
    *,
    checkpoint: PathLike | None = None,
    lora: PathLike | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    placement: DevicePlan | None = None,
) -> CausalWanModel:
    """The preset's DiT with its weights, in eval mode without gradients.

    Args:
        preset: what to build.
        checkpoint: weights instead of the preset's (local file or folder, ``hf://owner/name/path``
            or a :data:`memrope.loading.CHECKPOINTS` name); the tiny preset's default is its
            seeded random weights.
        lora: a PEFT LoRA merged into ``checkpoint`` (LongLive's ``lora.pt``).
        device: where the weights go (default: CUDA when available).
        dtype: weight dtype (default: the preset's on an accelerator, float32 on the CPU).
        placement: a :class:`~memrope.devices.DevicePlan` putting each module on its device
            instead of ``device`` (e.g. the official 2-GPU split).

    The weights are materialised straight on their devices in ``dtype`` (no float32 copy first).
    """
    if placement is not None and device is not None:
        raise ValueError("pass device or placement, not both")
    target = placement.primary_device if placement is not None else _device(device)
    if dtype is None:
        dtype = preset.default_dtype if target.type != "cpu" else torch.float32
    if lora is not None and checkpoint is None:
        raise ValueError("lora needs checkpoint (the registered presets bring their own LoRA)")
    source = checkpoint if checkpoint is not None else preset.checkpoint
    if source is None:
        seeded = tiny_model().to(dtype=dtype)
        return place_model(seeded, placement) if placement is not None else seeded.to(target)
    with torch.device("meta"):
        model = CausalWanModel(preset.model_config).to(dtype=dtype)
    if placement is not None:
        model = place_model(model, placement, empty=True)
    else:
        model = model.to_empty(device=target)
    kind: CheckpointKind = preset.lora_checkpoint_kind if lora is not None else "auto"
    load_wan_weights(model, source, kind=kind, lora=lora)
    return model.eval().requires_grad_(False)


def load_text_encoder(
    preset: Preset,
    source: str | Path | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    offload: bool = False,
) -> TextEncoder:
    """The preset's text encoder: ``"hash"`` (download-free) or umT5-XXL from a Hub id / local folder.

    ``source`` overrides the preset's; ``dtype`` defaults to bfloat16 on CUDA and float32 on the CPU;
    ``offload`` keeps umT5 on the CPU between :meth:`~memrope.encoders.TextEncoder.encode` calls.
    """
    source = preset.text_encoder if source is None else source
    config = preset.model_config
    if source == "hash":
        return HashTextEncoder(text_len=config.text_len, text_dim=config.text_dim)
    return UMT5TextEncoder.from_pretrained(
        source, dtype=dtype, device=_device(device), offload=offload, text_len=config.text_len
    )


def encode_prompts(
    preset: Preset,
    prompts: Sequence[str],
    source: str | Path | None = None,
    *,
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype | None = torch.bfloat16,
) -> torch.Tensor:
    """Encode ``prompts`` with the preset's text encoder, free the encoder, return ``[B, text_len, text_dim]``.

    The embeddings come back in float32 on the CPU, and the encoder is gone (host memory collected, the
    CUDA cache emptied) before this returns, so the DiT loads into a GPU that never held both. By
    default umT5 runs on the CPU in bfloat16: nothing on the GPU, 10.6 GiB of host memory (22.7 in
    float32), the dtype it has on a GPU; slower than a GPU (about a minute per prompt on a desktop CPU).
    ``device="cuda"`` encodes on the GPU instead (it must then hold the encoder's ~11.6 GiB alone).
    """
    encoder = load_text_encoder(preset, source, device=device, dtype=dtype)
    embeddings = encoder.encode(list(prompts)).float().cpu()
    on_cuda = _device(device).type == "cuda"
    del encoder
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    return embeddings


def load_decoder(
    preset: Preset,
    source: str | Path | None = None,
    *,
    device: torch.device | str | None = None,
    offload: bool = False,
) -> VideoDecoder:
    """The preset's streaming decoder: ``"tiny"`` or ``"toy"`` (weight-free) or the Wan VAE (float32) from a
    Hub id / folder.

    ``offload`` keeps the Wan VAE's weights on the CPU between chunks (the tiny decoder has none).
    """
    source = preset.vae if source is None else source
    if source == "tiny":
        if preset.model_config.out_dim != TINY_MODEL_CONFIG.out_dim:
            raise ValueError(f"the tiny decoder decodes {TINY_MODEL_CONFIG.out_dim}-channel latents only")
        return tiny_decoder()
    if source == "toy":
        from memrope.toy import TOY_MODEL_CONFIG, ToyDecoder

        if preset.model_config.out_dim != TOY_MODEL_CONFIG.out_dim:
            raise ValueError(f"the toy decoder decodes {TOY_MODEL_CONFIG.out_dim}-channel toy latents only")
        return ToyDecoder()
    return WanVAEDecoder.from_pretrained(source, dtype=torch.float32, device=_device(device), offload=offload)


def make_initial_latents(preset: Preset, *, seed: int, batch_size: int = 1) -> torch.Tensor | None:
    """The clean latents ``[B, f, C, H, W]`` the preset's videos start from (``preset.initial_latents``),
    for ``CausalInferencePipeline.stream(initial_latents=...)``; ``None`` when it generates every chunk.

    ``"toy-world"``: the first :data:`~memrope.toy.TOY_GIVEN_FRAMES` latent frames (the sink) of the toy
    world's videos of ``seed`` (:func:`memrope.toy.world.world_latents`: ``batch_size`` scenes drawn
    from it).
    """
    if preset.initial_latents is None:
        return None
    if preset.initial_latents == "toy-world":
        from memrope.toy import TOY_GIVEN_FRAMES
        from memrope.toy.world import world_latents

        return world_latents(seed, TOY_GIVEN_FRAMES, batch_size)
    raise ValueError(f"preset {preset.name!r}: unknown initial_latents source {preset.initial_latents!r}")


def make_pipeline(
    preset: Preset,
    model: CausalWanModel,
    *,
    cache: MemRoPEConfig | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    decoder: VideoDecoder | None = None,
    kv_dtype: torch.dtype | str | None = None,
    key_workspace: Literal["per_layer", "shared"] | None = None,
) -> CausalInferencePipeline:
    """A pipeline with the preset's sampler and cache policy (``cache`` overrides the policy).

    ``device`` and ``dtype`` default to the model's (its first parameter's); ``kv_dtype`` stores the
    cached keys and values in 8 bits (``torch.float8_e4m3fn``, ``torch.float8_e5m2``, ``torch.int8`` or
    ``"fp8"``, ...; ``None``: in ``dtype``) and ``key_workspace`` picks the RoPE'd-key workspace
    (``"shared"``: least memory), see :class:`~memrope.cache.MemRoPECache`.
    """
    weight = next(model.parameters())
    storage: dict[str, Any] = {} if kv_dtype is None else {"kv_dtype": kv_dtype}
    if key_workspace is not None:
        storage["key_workspace"] = key_workspace
    return CausalInferencePipeline(
        model,
        preset.cache if cache is None else cache,
        denoising_steps=preset.denoising_steps,
        first_chunk_denoising_steps=preset.first_chunk_denoising_steps,
        warp_denoising_step=preset.warp_denoising_step,
        shift=preset.shift,
        context_noise=preset.context_noise,
        noised_context=preset.noised_context,
        dtype=weight.dtype if dtype is None else dtype,
        device=weight.device if device is None else device,
        decoder=decoder,
        **storage,
    )

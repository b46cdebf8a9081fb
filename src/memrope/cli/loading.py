"""``memrope generate`` loading what it runs: weights found first, then the text encoder, VAE and DiT;
a failure becomes a one-line :class:`CLIError`."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch

from memrope.cli.generate_plan import Plan, Video
from memrope.errors import EXIT_FAILURE, CLIError, NonFiniteError

__all__ = ["_encode_prompts", "_load_decoder", "_load_model", "_load_text_encoder", "_resolve_weights"]


def _resolve_weights(plan: Plan) -> None:
    """Find (or download) the checkpoint before anything else, so a missing file fails fast.

    Fills ``plan.weight_files`` with the local weight files (for the resume fingerprint).
    """
    if plan.checkpoint is None:
        return
    from memrope.loading import CHECKPOINTS, resolve_checkpoint

    try:
        files = [("checkpoint", resolve_checkpoint(plan.checkpoint))]
        entry = CHECKPOINTS.get(plan.checkpoint) if not Path(plan.checkpoint).exists() else None
        if plan.lora is not None:
            files.append(("lora", resolve_checkpoint(plan.lora)))
        elif entry is not None and entry.lora is not None:
            files.append(("lora", resolve_checkpoint(entry.lora.uri)))
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(f"checkpoint not available: {error}", EXIT_FAILURE) from None
    plan.weight_files = files


def _load_text_encoder(plan: Plan) -> Any:
    from memrope.components import load_text_encoder

    device = plan.placement.text_encoder_device
    # umT5 on the CPU beside a DiT on a GPU (--text-encoder-device): bf16 as on a GPU, half the RAM of float32
    dtype = torch.bfloat16 if device.type == "cpu" and plan.device.type != "cpu" else None
    try:
        return load_text_encoder(
            plan.preset,
            plan.text_encoder,
            device=device,
            dtype=dtype,
            offload=plan.placement.offload_text_encoder,
        )
    except ImportError as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    except (OSError, ValueError) as error:
        raise CLIError(
            f"could not load the umT5 text encoder from {plan.text_encoder!r}: {error}. Download it with "
            f"`huggingface-cli download {plan.text_encoder} --include 'text_encoder/*' 'tokenizer/*'` "
            "or pass --text-encoder LOCAL_FOLDER",
            EXIT_FAILURE,
        ) from None


def _prompt_embeds(encoder: Any, prompt: str, config: Any) -> torch.Tensor:
    """``[1, L, text_dim]`` CPU embeddings of ``prompt`` with the trailing (zero) padding rows dropped."""
    try:
        embeds = encoder.encode([prompt]).float().cpu()
    except NonFiniteError as error:
        raise CLIError(f"the text embeddings of the prompt {prompt!r}: {error}", EXIT_FAILURE) from None
    if embeds.ndim != 3 or embeds.shape[1] > config.text_len or embeds.shape[2] != config.text_dim:
        raise CLIError(
            f"the text encoder gives {list(embeds.shape)} embeddings but the model needs "
            f"[1, <= {config.text_len}, {config.text_dim}]",
            EXIT_FAILURE,
        )
    if not bool(torch.isfinite(embeds).all()):
        raise CLIError(
            f"the text embeddings of the prompt {prompt!r} hold NaN or infinity: the text encoder is "
            "broken (check its weights, or --text-encoder)",
            EXIT_FAILURE,
        )
    used = embeds[0].abs().sum(dim=-1).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    return embeds[:, :length].contiguous()


def _encode_prompts(plan: Plan, videos: list[Video]) -> None:
    """Text embeddings of the videos to start (and of their prompt switches), on the CPU.

    The DiT zero-pads embeddings back to ``text_len``, so dropping the (exactly zero) padding rows
    changes nothing and keeps the embeddings small; the encoder is freed afterwards.
    """
    if not videos:
        return
    encoder = _load_text_encoder(plan)
    config = plan.preset.model_config
    for video in videos:
        video.embeds = _prompt_embeds(encoder, video.prompt, config)
        video.switch_embeds = [_prompt_embeds(encoder, entry.prompt, config) for entry in video.switches]
    del encoder
    gc.collect()  # umT5 on the CPU holds 10.6 GiB of host memory: release it before the DiT loads
    if plan.placement.text_encoder_device.type == "cuda":
        torch.cuda.empty_cache()


def _load_model(plan: Plan) -> Any:
    """The DiT the pipeline drives: memrope's ``CausalWanModel`` (``--backend memrope``), or its weights
    in a diffusers ``WanTransformer3DModel`` behind memrope's diffusers adapter (``--backend diffusers``)."""
    from memrope.components import load_model

    try:
        model = load_model(
            plan.preset,
            checkpoint=plan.checkpoint,
            lora=plan.lora,
            dtype=plan.dtype,
            placement=plan.placement,
        )
    except (
        FileNotFoundError,
        ValueError,
        NonFiniteError,
    ) as error:  # CheckpointKeyError/FormatError: ValueErrors
        raise CLIError(f"cannot load the checkpoint {plan.checkpoint!r}: {error}", EXIT_FAILURE) from None
    if plan.backend == "memrope":
        return model
    from memrope.adapters.diffusers_wan import attach, diffusers_transformer

    transformer = diffusers_transformer(model, model.config)
    return attach(transformer, plan.cache, text_len=model.config.text_len)


def _load_decoder(plan: Plan) -> Any:
    from memrope.components import load_decoder

    try:
        return load_decoder(
            plan.preset, plan.vae, device=plan.placement.vae_device, offload=plan.placement.offload_vae
        )
    except ImportError as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    except (OSError, ValueError) as error:
        if plan.vae in ("tiny", "toy"):
            raise CLIError(f"--vae {plan.vae}: {error}") from None
        raise CLIError(
            f"could not load the Wan VAE from {plan.vae!r}: {error}. Download it with "
            f"`huggingface-cli download {plan.vae} --include 'vae/*'` or pass --vae LOCAL_FOLDER",
            EXIT_FAILURE,
        ) from None


# --------------------------------------------------------------------------------------------------
# memrope generate: running

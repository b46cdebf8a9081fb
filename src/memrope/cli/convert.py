"""``memrope convert SRC DST --to {diffusers,original}``, and :func:`convert_checkpoint` behind it.

``--to diffusers`` writes a ``WanTransformer3DModel`` folder (``config.json`` +
``diffusion_pytorch_model.safetensors``, sharded above ``--max-shard-size``); ``--to original`` writes one
safetensors file with the official Wan names. SRC: a Self-Forcing / LongLive ``.pt`` training checkpoint
(EMA weights unless ``--no-ema``; ``--lora FILE`` merged), safetensors, a registry name, or a diffusers
transformer (a local folder or a Hub id ``owner/name``).

:func:`convert_checkpoint` lives here, above both :mod:`memrope.loading` (which reads the checkpoints
and imports :mod:`memrope.convert` for the names) and :mod:`memrope.convert` (names, configs, writers).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from memrope.cli.registry import Command, register_command
from memrope.errors import EXIT_FAILURE, EXIT_OK, CLIError, NonFiniteError

if TYPE_CHECKING:
    import torch

    from memrope.checkpoint_files import PathLike
    from memrope.convert import ConversionResult, Layout
    from memrope.loading import CheckpointKind
    from memrope.models.wan_config import WanConfig

# The library modules are imported where they are used: every ``memrope`` command imports this module.

__all__ = ["CONVERT_COMMAND", "convert_checkpoint", "parse_size", "read_official_weights"]

#: diffusers' ``save_pretrained`` default (``memrope.convert.DEFAULT_MAX_SHARD_BYTES``)
_DEFAULT_MAX_SHARD_SIZE = "10GB"

_LAYOUT_ALIASES: dict[str, Layout] = {
    "diffusers": "diffusers",
    "original": "original",
    "official": "original",
}

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?i?b?)\s*", re.IGNORECASE)
_UNIT_BYTES = {
    "": 1,
    "b": 1,
    **{f"{prefix}b": 1000**power for power, prefix in enumerate("kmgt", start=1)},
    **{f"{prefix}": 1000**power for power, prefix in enumerate("kmgt", start=1)},
    **{f"{prefix}ib": 1024**power for power, prefix in enumerate("kmgt", start=1)},
    **{f"{prefix}i": 1024**power for power, prefix in enumerate("kmgt", start=1)},
}

_DESCRIPTION = """\
Convert Wan DiT weights between the official Wan / Self-Forcing / LongLive names and diffusers'
WanTransformer3DModel. Tensors are written as read (bit-exact); every tensor must map, and the
weights must be exactly those of one Wan DiT (missing, unexpected or mis-shaped tensors are errors).

examples:
  memrope convert self_forcing_dmd.pt sf-diffusers --to diffusers
  memrope convert longlive_base.pt longlive-diffusers --to diffusers --lora lora.pt
  memrope convert sf-diffusers sf.safetensors --to original
  memrope convert owner/name wan.safetensors --to original      (a diffusers transformer on the Hub)
"""


def parse_size(text: str) -> int:
    """Bytes of a size as a person types it: ``10GB`` (10**10), ``500MB``, ``2GiB`` (2 * 2**30), ``1000``."""
    match = _SIZE.fullmatch(text)
    if match is None or match.group(2).lower() not in _UNIT_BYTES:
        raise argparse.ArgumentTypeError(
            f"a size such as 10GB, 500MB, 2GiB or a number of bytes, got {text!r}"
        )
    size = int(float(match.group(1)) * _UNIT_BYTES[match.group(2).lower()])
    if size < 1:
        raise argparse.ArgumentTypeError(f"the size must be at least 1 byte, got {text!r}")
    return size


def read_official_weights(
    source: PathLike,
    *,
    lora: PathLike | None = None,
    lora_alpha: float | None = None,
    use_ema: bool | None = None,
    kind: CheckpointKind = "auto",
    cache_dir: PathLike | None = None,
) -> dict[str, torch.Tensor]:
    """Official-name weights of a checkpoint :func:`memrope.loading.load_wan_weights` reads, LoRA merged,
    without building a model.

    Args:
        source: a ``.pt`` training checkpoint, a bare state dict, safetensors file(s), ``hf://owner/name/file``
            or a registry name (``longlive`` brings its LoRA).
        lora / lora_alpha: a PEFT LoRA merged as ``W += (alpha / rank) * B @ A`` (alpha None: the rank).
        use_ema: take ``generator_ema`` of a training checkpoint; None: the registry entry's choice, else True.
        kind / cache_dir: as for :func:`memrope.loading.read_state_dict` / ``resolve_checkpoint``.

    Raises:
        CheckpointFormatError / CheckpointKeyError / NonFiniteError / FileNotFoundError: as the loader.
    """
    from memrope.checkpoint_files import NONFINITE_WEIGHTS_ADVICE, _check_finite_tensors
    from memrope.loading import CHECKPOINTS, read_state_dict, resolve_checkpoint

    entry = None if Path(source).expanduser().exists() else CHECKPOINTS.get(os.fspath(source))
    effective_kind: CheckpointKind = entry.kind if kind == "auto" and entry is not None else kind
    if use_ema is None:
        use_ema = entry.use_ema if entry is not None else True
    path = resolve_checkpoint(source, cache_dir=cache_dir)
    state_dict = read_state_dict(path, use_ema=use_ema, kind=effective_kind)
    _check_finite_tensors(state_dict, origin=f"checkpoint {path}", advice=NONFINITE_WEIGHTS_ADVICE)
    lora_source = lora if lora is not None else (entry.lora.uri if entry is not None and entry.lora else None)
    if lora_source is not None:
        return _merge_lora_file(state_dict, lora_source, alpha=lora_alpha, cache_dir=cache_dir)
    if effective_kind == "longlive":
        raise ValueError("kind='longlive' needs LongLive's LoRA: pass lora=<path to lora.pt> (--lora FILE)")
    return state_dict


def _merge_lora_file(
    state_dict: dict[str, torch.Tensor],
    lora: PathLike,
    *,
    alpha: float | None,
    cache_dir: PathLike | None,
) -> dict[str, torch.Tensor]:
    from memrope.checkpoint_files import NONFINITE_WEIGHTS_ADVICE, _check_finite_tensors
    from memrope.loading import merge_lora, read_lora_state_dict, resolve_checkpoint

    lora_path = resolve_checkpoint(lora, cache_dir=cache_dir)
    lora_state_dict = read_lora_state_dict(lora_path)
    _check_finite_tensors(lora_state_dict, origin=f"LoRA {lora_path}", advice=NONFINITE_WEIGHTS_ADVICE)
    return merge_lora(state_dict, lora_state_dict, alpha=alpha)


def _layout(to: object) -> Layout:
    layout = _LAYOUT_ALIASES.get(to.strip().lower()) if isinstance(to, str) else None
    if layout is None:
        raise ValueError(
            f"to must be one of {sorted(_LAYOUT_ALIASES)} ('official' means 'original'), got {to!r}"
        )
    return layout


def convert_checkpoint(
    source: PathLike,
    destination: PathLike,
    *,
    to: Layout | str,
    lora: PathLike | None = None,
    lora_alpha: float | None = None,
    use_ema: bool | None = None,
    config: WanConfig | None = None,
    num_heads: int | None = None,
    revision: str | None = None,
    subfolder: str | None = "transformer",
    cache_dir: PathLike | None = None,
    force: bool = False,
    max_shard_bytes: int | None = None,
) -> ConversionResult:
    """Convert a Wan DiT checkpoint to a diffusers folder (``to="diffusers"``) or an official-name
    safetensors file (``to="original"``). Tensors are written as read: the conversion is bit-exact
    (a merged LoRA changes the weights it adapts, as loading does).

    Args:
        source: anything :func:`read_official_weights` reads, or a diffusers transformer (a local model
            folder, a pipeline folder with ``subfolder/``, or a Hub id ``owner/name``: see
            :func:`memrope.convert.read_diffusers_transformer`).
        destination: the folder (diffusers) or file (original) to write; its parent folder must exist.
        to: ``"diffusers"`` or ``"original"`` (also ``"official"``; any case).
        lora / lora_alpha: a PEFT LoRA merged into the weights (LongLive's ``lora.pt``).
        use_ema: take ``generator_ema`` of a training checkpoint (None: the registry entry's choice, else True).
        config: the DiT sizes the weights must have (checked); default: read from the shapes (official
            weights; ``num_heads`` is ``dim // 128`` unless given) or from the diffusers ``config.json``.
        revision / subfolder / cache_dir: where to find a diffusers source.
        force: replace an existing destination.
        max_shard_bytes: a diffusers folder above this many bytes of tensors is sharded (None: 10 GB, as
            diffusers).

    Returns:
        What was written (:meth:`~memrope.convert.ConversionResult.summary` says it in one line).

    Raises:
        FileExistsError: ``destination`` exists and not ``force``.
        CheckpointFormatError / CheckpointKeyError: not a checkpoint; missing, unexpected or mis-shaped
            tensors (for ``config``).
        ValueError: a bad argument, or ``config`` differs from the diffusers ``config.json``.
    """
    from memrope.checkpoint_files import NONFINITE_WEIGHTS_ADVICE, _check_finite_tensors
    from memrope.convert import (
        DEFAULT_MAX_SHARD_BYTES,
        check_official_state_dict,
        describe_config,
        is_diffusers_source,
        read_diffusers_transformer,
        wan_config_from_state_dict,
        write_diffusers_folder,
        write_original_file,
    )
    from memrope.models.wan_config import WanConfig

    layout = _layout(to)
    if config is not None and not isinstance(config, WanConfig):
        raise TypeError(f"config must be a memrope WanConfig or None, got {type(config).__name__}")
    if is_diffusers_source(source, subfolder=subfolder):
        state_dict, found = read_diffusers_transformer(
            source, revision=revision, subfolder=subfolder, cache_dir=cache_dir
        )
        _check_finite_tensors(
            state_dict, origin=f"diffusers transformer {source}", advice=NONFINITE_WEIGHTS_ADVICE
        )
        if config is not None and dataclasses.replace(found, text_len=config.text_len) != config:
            raise ValueError(
                f"config ({describe_config(config)}) differs from the diffusers transformer's config.json "
                f"({describe_config(found)})"
            )
        config = config or found
        if lora is not None:
            state_dict = _merge_lora_file(state_dict, lora, alpha=lora_alpha, cache_dir=cache_dir)
    else:
        state_dict = read_official_weights(
            source, lora=lora, lora_alpha=lora_alpha, use_ema=use_ema, cache_dir=cache_dir
        )
        if config is None:
            config = wan_config_from_state_dict(state_dict, num_heads=num_heads)
    check_official_state_dict(state_dict, config, origin=f"checkpoint {source}")
    if layout == "diffusers":
        return write_diffusers_folder(
            state_dict,
            config,
            destination,
            force=force,
            max_shard_bytes=DEFAULT_MAX_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes,
        )
    return write_original_file(state_dict, config, destination, force=force)


def _configure_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", metavar="SRC", help="checkpoint to read (file, folder, registry name or Hub id)"
    )
    parser.add_argument("destination", metavar="DST", help="folder (--to diffusers) or file (--to original)")
    parser.add_argument(
        "--to",
        required=True,
        type=str.lower,
        choices=("diffusers", "original", "official"),
        help="the layout to write: a diffusers model folder, or one safetensors file with the official names",
    )
    parser.add_argument(
        "--lora", metavar="FILE", help="a PEFT LoRA to merge into the weights (LongLive's lora.pt)"
    )
    parser.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the rank, i.e. scale 1)")
    parser.add_argument(
        "--no-ema",
        action="store_true",
        help="take 'generator' rather than 'generator_ema' of a training checkpoint",
    )
    parser.add_argument(
        "--config",
        metavar="JSON|PRESET",
        help="the DiT sizes the weights must have: a config.json (diffusers or official Wan) or a preset name "
        "(default: read from the weights, or from the diffusers config.json)",
    )
    parser.add_argument(
        "--num-heads",
        type=int,
        help="attention heads, when the weights' dim is not 128 per head (official SRC)",
    )
    parser.add_argument("--revision", help="branch, tag or commit of a Hub SRC")
    parser.add_argument(
        "--subfolder",
        default="transformer",
        help="the transformer's folder in a diffusers pipeline SRC (default: transformer; '' for none)",
    )
    parser.add_argument(
        "--max-shard-size",
        type=parse_size,
        default=_DEFAULT_MAX_SHARD_SIZE,
        metavar="SIZE",
        help="--to diffusers: shard the weights above this size (default 10GB, as diffusers)",
    )
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")


def _config_argument(text: str) -> WanConfig:
    """The WanConfig of ``--config``: a preset name, else a JSON file."""
    from memrope.convert import wan_config_from_json
    from memrope.presets import PRESETS

    if text in PRESETS and not Path(text).exists():
        return PRESETS[text].model_config
    try:
        return wan_config_from_json(text)
    except ValueError as error:
        raise CLIError(f"--config: {error} (or give a preset name: {', '.join(PRESETS)})") from None


def _run_convert(args: argparse.Namespace) -> int:
    config = _config_argument(args.config) if args.config is not None else None
    try:
        result = convert_checkpoint(
            args.source,
            args.destination,
            to=args.to,
            lora=args.lora,
            lora_alpha=args.lora_alpha,
            use_ema=False if args.no_ema else None,
            config=config,
            num_heads=args.num_heads,
            revision=args.revision,
            subfolder=args.subfolder or None,
            force=args.force,
            max_shard_bytes=args.max_shard_size,
        )
    except (FileExistsError, IsADirectoryError) as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    except (FileNotFoundError, ValueError, NonFiniteError) as error:
        raise CLIError(f"cannot convert {args.source!r}: {error}", EXIT_FAILURE) from None
    print(result.summary())
    return EXIT_OK


CONVERT_COMMAND = register_command(
    Command(
        "convert",
        "convert Wan DiT weights between the official and diffusers layouts",
        _configure_convert,
        _run_convert,
        description=_DESCRIPTION,
    )
)

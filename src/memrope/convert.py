"""Wan DiT weights both ways: official Wan / Self-Forcing / LongLive names <-> diffusers ``WanTransformer3DModel``.

The two layouts hold the same tensors, with the same shapes, under different names (the table is
diffusers' ``convert_wan_transformer_to_diffusers``; the modulation tables are ``[1, 6, dim]`` per
block and ``[1, 2, dim]`` for the head in both, so nothing is reshaped):

============================================  ==============================================
official (memrope's ``CausalWanModel``)        diffusers ``WanTransformer3DModel``
============================================  ==============================================
``patch_embedding.*``                          ``patch_embedding.*``
``text_embedding.{0,2}.*``                     ``condition_embedder.text_embedder.linear_{1,2}.*``
``time_embedding.{0,2}.*``                     ``condition_embedder.time_embedder.linear_{1,2}.*``
``time_projection.1.*``                        ``condition_embedder.time_proj.*``
``blocks.i.modulation``                        ``blocks.i.scale_shift_table``
``blocks.i.self_attn.{q,k,v,o}.*``             ``blocks.i.attn1.{to_q,to_k,to_v,to_out.0}.*``
``blocks.i.self_attn.norm_{q,k}.weight``       ``blocks.i.attn1.norm_{q,k}.weight``
``blocks.i.cross_attn.*``                      ``blocks.i.attn2.*`` (as ``self_attn``)
``blocks.i.norm3.*`` (affine, before cross)    ``blocks.i.norm2.*``
``blocks.i.norm2.*`` (no weights in either)    ``blocks.i.norm3.*``
``blocks.i.ffn.{0,2}.*``                       ``blocks.i.ffn.net.0.proj.*`` / ``ffn.net.2.*``
``head.head.*``                                ``proj_out.*``
``head.modulation``                            ``scale_shift_table``
============================================  ==============================================

Conversion only renames: the output dicts hold the input tensor objects themselves, so a round
trip is bit-exact. Both directions are strict: a name outside the table raises ``ValueError``
naming it.

Also here: the configs both ways (:func:`diffusers_config`, :func:`wan_config_from_diffusers`,
:func:`wan_config_from_state_dict`), reading a diffusers transformer from a folder or the Hub
(:func:`read_diffusers_transformer`, :func:`load_diffusers_into_wan`) and writing either layout
(:func:`write_diffusers_folder`, :func:`write_original_file`). This module never imports diffusers;
``memrope convert`` and :func:`memrope.cli.convert.convert_checkpoint` convert checkpoint files.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from memrope._files import atomic_replace, default_file_mode, swap_folder
from memrope.checkpoint_files import (
    NONFINITE_WEIGHTS_ADVICE,
    CheckpointFormatError,
    CheckpointKeyError,
    PathLike,
    _check_finite_tensors,
    _count,
    _first_names,
    _read_safetensors,
)
from memrope.config import DEFAULT_MAX_POSITIONS
from memrope.models.wan_config import WanConfig

if TYPE_CHECKING:
    from memrope.models.wan import CausalWanModel

# memrope.loading imports this module (it reads diffusers-named checkpoints), so this one never imports
# memrope.loading; converting a checkpoint file, which needs both, is memrope.cli.convert.convert_checkpoint.

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "DIFFUSERS_CLASS_NAME",
    "DIFFUSERS_QK_NORM",
    "LAYOUTS",
    "ConversionResult",
    "Layout",
    "check_official_state_dict",
    "describe_config",
    "diffusers_config",
    "from_diffusers_state_dict",
    "is_diffusers_source",
    "load_diffusers_into_wan",
    "official_shapes",
    "read_diffusers_transformer",
    "to_diffusers_state_dict",
    "wan_config_from_diffusers",
    "wan_config_from_json",
    "wan_config_from_state_dict",
    "write_diffusers_folder",
    "write_original_file",
]

Layout = Literal["diffusers", "original"]
LAYOUTS: tuple[str, ...] = get_args(Layout)

DIFFUSERS_CLASS_NAME = "WanTransformer3DModel"
#: diffusers' name for Wan's RMS norm of q and k over all heads together (the only one Wan uses)
DIFFUSERS_QK_NORM = "rms_norm_across_heads"
DIFFUSERS_CONFIG_NAME = "config.json"
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_WEIGHTS_PATTERN = "diffusion_pytorch_model{suffix}.safetensors"  # huggingface_hub's shard names
#: the files of a diffusers model folder (all a Hub download fetches); pickled ``.bin`` weights are not read
_DIFFUSERS_FILE_PATTERNS = (
    DIFFUSERS_CONFIG_NAME,
    DIFFUSERS_WEIGHTS_NAME,
    f"{DIFFUSERS_WEIGHTS_NAME}.index.json",
    "diffusion_pytorch_model-*-of-*.safetensors",
)
#: diffusers' ``save_pretrained`` default ``max_shard_size`` ("10GB")
DEFAULT_MAX_SHARD_BYTES = 10 * 10**9
_WAN_HEAD_DIM = 128  # every released Wan2.1 DiT: 1536 / 12 heads, 5120 / 40 heads
_HUB_ID = re.compile(r"(?:hf://)?([A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)/?")

# official module -> diffusers module, outside the blocks; their tensors are ``weight`` and ``bias``
_TOP_MODULES: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
# official parameter -> diffusers parameter (a tensor that is not the weight or bias of a module)
_TOP_PARAMETERS: dict[str, str] = {"head.modulation": "scale_shift_table"}
# the same, inside ``blocks.<i>.``
_BLOCK_MODULES: dict[str, str] = {
    **{
        f"{official}.{projection}": f"{diffusers}.to_{projection}"
        for official, diffusers in (("self_attn", "attn1"), ("cross_attn", "attn2"))
        for projection in "qkv"
    },
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.o": "attn2.to_out.0",
    **{
        f"{official}.norm_{which}": f"{diffusers}.norm_{which}"
        for official, diffusers in (("self_attn", "attn1"), ("cross_attn", "attn2"))
        for which in "qk"
    },
    "norm1": "norm1",
    "norm3": "norm2",
    "norm2": "norm3",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_BLOCK_PARAMETERS: dict[str, str] = {"modulation": "scale_shift_table"}
_MODULE_TENSORS = ("weight", "bias")
_BLOCK_NAME = re.compile(r"blocks\.(0|[1-9][0-9]*)\.(.+)")

# WanTransformer3DModel's constructor defaults, for keys a diffusers config leaves out (diffusers does
# the same when it builds the model)
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": DIFFUSERS_QK_NORM,
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": DEFAULT_MAX_POSITIONS,
    "pos_embed_seq_len": None,
}


class _NameTable:
    """One direction of the renaming: names outside the blocks, and names inside ``blocks.<i>.``."""

    def __init__(self, top: Mapping[str, str], block: Mapping[str, str]) -> None:
        self.top = dict(top)
        self.block = dict(block)

    @classmethod
    def of_modules(
        cls,
        top_modules: Mapping[str, str],
        top_parameters: Mapping[str, str],
        block_modules: Mapping[str, str],
        block_parameters: Mapping[str, str],
    ) -> _NameTable:
        """The table of every ``weight`` / ``bias`` of the modules, plus the bare parameters."""
        return cls(
            {**_module_tensors(top_modules), **top_parameters},
            {**_module_tensors(block_modules), **block_parameters},
        )

    def inverse(self) -> _NameTable:
        return _NameTable(
            {dst: src for src, dst in self.top.items()}, {dst: src for src, dst in self.block.items()}
        )

    def rename(self, name: str) -> str | None:
        """The name in the other layout, or None when ``name`` is not in the table."""
        if name in self.top:
            return self.top[name]
        match = _BLOCK_NAME.fullmatch(name)
        if match is None or match.group(2) not in self.block:
            return None
        return f"blocks.{match.group(1)}.{self.block[match.group(2)]}"


def _module_tensors(modules: Mapping[str, str]) -> dict[str, str]:
    return {f"{src}.{leaf}": f"{dst}.{leaf}" for src, dst in modules.items() for leaf in _MODULE_TENSORS}


_TO_DIFFUSERS = _NameTable.of_modules(_TOP_MODULES, _TOP_PARAMETERS, _BLOCK_MODULES, _BLOCK_PARAMETERS)
_FROM_DIFFUSERS = _TO_DIFFUSERS.inverse()


def _rename(
    state_dict: Mapping[str, torch.Tensor], table: _NameTable, *, source: str, target: str, hint: str
) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of name -> tensor, got {type(state_dict).__name__}")
    renamed: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] must be a torch.Tensor, got {type(tensor).__name__}")
        new_name = table.rename(name) if isinstance(name, str) else None
        if new_name is None:
            unmapped.append(str(name))
        else:
            renamed[new_name] = tensor
    if unmapped:
        unmapped.sort()
        raise ValueError(
            f"state_dict has {_count(unmapped, 'tensor')} with no {target} name (names must be {source} "
            f"names; {hint}): {_first_names(unmapped)}"
        )
    return renamed


def to_diffusers_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename official Wan DiT weights to the names of diffusers' ``WanTransformer3DModel``.

    Args:
        state_dict: name -> tensor with the names of ``memrope.models.wan.CausalWanModel.state_dict()``
            (official Wan / Self-Forcing / LongLive names without training-wrapper prefixes, as
            :func:`memrope.loading.read_state_dict` returns them); any subset of the model's tensors.

    Returns:
        A new dict, diffusers name -> the same tensor object (nothing is copied or reshaped).

    Raises:
        ValueError: names outside the table (the first few and how many).
        TypeError: ``state_dict`` is not a mapping of tensors.
    """
    return _rename(
        state_dict,
        _TO_DIFFUSERS,
        source="official Wan",
        target="diffusers",
        hint="read checkpoints with memrope.loading.read_state_dict, which removes wrapper prefixes",
    )


def from_diffusers_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers ``WanTransformer3DModel`` weights to the official Wan names; the inverse of
    :func:`to_diffusers_state_dict`.

    Returns:
        A new dict, official name -> the same tensor object.

    Raises:
        ValueError: names outside the table, e.g. the image-to-video ``add_k_proj`` / ``image_embedder``
            tensors, which memrope's text-to-video DiT does not have.
        TypeError: ``state_dict`` is not a mapping of tensors.
    """
    return _rename(
        state_dict,
        _FROM_DIFFUSERS,
        source="diffusers WanTransformer3DModel",
        target="official Wan",
        hint="only text-to-video Wan transformers convert",
    )


def diffusers_config(config: WanConfig, *, rope_max_seq_len: int = DEFAULT_MAX_POSITIONS) -> dict[str, Any]:
    """Keyword arguments of ``diffusers.WanTransformer3DModel(**kwargs)`` for a DiT of ``config``'s sizes.

    Args:
        config: the sizes of the official DiT.
        rope_max_seq_len: length of diffusers' own RoPE tables (1024, Wan's; memrope's cache replaces
            them, so this only matters to diffusers' own forward).

    Raises:
        ValueError: ``config.qk_norm`` is False: diffusers' Wan attention always normalises q and k,
            so a DiT without that norm has no diffusers equivalent.
    """
    if not isinstance(config, WanConfig):
        raise TypeError(f"config must be a memrope WanConfig, got {type(config).__name__}")
    if not config.qk_norm:
        raise ValueError(
            "config.qk_norm must be True to convert to diffusers: WanTransformer3DModel always applies "
            "the RMS norm of q and k, a DiT without it has no diffusers equivalent"
        )
    if isinstance(rope_max_seq_len, bool) or not isinstance(rope_max_seq_len, int) or rope_max_seq_len < 1:
        raise ValueError(f"rope_max_seq_len must be an int >= 1, got {rope_max_seq_len!r}")
    return {
        "patch_size": tuple(config.patch_size),
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "in_channels": config.in_dim,
        "out_channels": config.out_dim,
        "text_dim": config.text_dim,
        "freq_dim": config.freq_dim,
        "ffn_dim": config.ffn_dim,
        "num_layers": config.num_layers,
        "cross_attn_norm": config.cross_attn_norm,
        "qk_norm": DIFFUSERS_QK_NORM,
        "eps": config.eps,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": rope_max_seq_len,
        "pos_embed_seq_len": None,
    }


def wan_config_from_diffusers(config: Mapping[str, Any], *, text_len: int = WanConfig.text_len) -> WanConfig:
    """The :class:`WanConfig` of a diffusers ``WanTransformer3DModel`` config (its ``config.json`` as a dict).

    Keys the dict leaves out take ``WanTransformer3DModel``'s defaults (as in diffusers); keys starting
    with ``_`` (``_class_name``, ``_diffusers_version``) and ``rope_max_seq_len`` (memrope's cache has
    its own RoPE tables, ``MemRoPEConfig.max_positions``) are not part of the sizes. Other unknown keys
    are ignored with a warning.

    Args:
        config: e.g. ``json.loads(Path("transformer/config.json").read_text())`` or ``model.config``.
        text_len: the padded prompt length (512 for Wan's umT5), which diffusers' config does not hold.

    Raises:
        ValueError: ``_class_name`` is another model's; an image-to-video config (``image_dim`` or
            ``added_kv_proj_dim`` set); a ``qk_norm`` other than ``"rms_norm_across_heads"``; sizes
            that make no Wan DiT.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (a diffusers config.json), got {type(config).__name__}")
    class_name = config.get("_class_name", DIFFUSERS_CLASS_NAME)
    if class_name != DIFFUSERS_CLASS_NAME:
        raise ValueError(f"config must be a {DIFFUSERS_CLASS_NAME} config, got _class_name={class_name!r}")
    unknown = sorted(
        str(key) for key in config if not str(key).startswith("_") and key not in _DIFFUSERS_DEFAULTS
    )
    if unknown:
        warnings.warn(
            f"diffusers config keys {unknown} are not WanTransformer3DModel arguments memrope knows; ignored",
            UserWarning,
            stacklevel=2,
        )
    values = {**_DIFFUSERS_DEFAULTS, **{key: config[key] for key in _DIFFUSERS_DEFAULTS if key in config}}
    image_keys = {key: values[key] for key in ("image_dim", "added_kv_proj_dim") if values[key] is not None}
    if image_keys:
        raise ValueError(
            f"config is an image-to-video Wan transformer ({', '.join(f'{k}={v!r}' for k, v in image_keys.items())}); "
            "memrope's DiT is text-to-video: image_dim and added_kv_proj_dim must be None"
        )
    if values["qk_norm"] != DIFFUSERS_QK_NORM:
        raise ValueError(f"config qk_norm must be {DIFFUSERS_QK_NORM!r} (Wan's), got {values['qk_norm']!r}")
    heads, head_dim = values["num_attention_heads"], values["attention_head_dim"]
    for name, value in (("num_attention_heads", heads), ("attention_head_dim", head_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config {name} must be an int >= 1, got {value!r}")
    in_channels = values["in_channels"]
    out_channels = values["out_channels"] if values["out_channels"] is not None else in_channels
    return WanConfig(
        dim=heads * head_dim,
        ffn_dim=values["ffn_dim"],
        num_heads=heads,
        num_layers=values["num_layers"],
        in_dim=in_channels,
        out_dim=out_channels,
        text_dim=values["text_dim"],
        text_len=text_len,
        freq_dim=values["freq_dim"],
        patch_size=tuple(values["patch_size"]),  # type: ignore[arg-type]
        eps=float(values["eps"]),
        qk_norm=True,
        cross_attn_norm=bool(values["cross_attn_norm"]),
    )


# --------------------------------------------------------------------------------------------------
# Shapes: the tensors a DiT of a config has, and the config of a set of tensors
# --------------------------------------------------------------------------------------------------


def official_shapes(config: WanConfig) -> dict[str, tuple[int, ...]]:
    """Official name -> shape of every tensor of a Wan DiT of ``config``, in ``state_dict()`` order.

    The names and shapes of :class:`~memrope.models.wan.CausalWanModel` (docs/design.md §9), worked out
    from the sizes without building a model: linear weights ``[out, in]``, modulation tables
    ``[1, 6, dim]`` per block and ``[1, 2, dim]`` for the head.
    """
    dim, ffn_dim = config.dim, config.ffn_dim
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, in_features: int, out_features: int) -> None:
        shapes[f"{name}.weight"] = (out_features, in_features)
        shapes[f"{name}.bias"] = (out_features,)

    shapes["patch_embedding.weight"] = (dim, config.in_dim, *config.patch_size)
    shapes["patch_embedding.bias"] = (dim,)
    linear("text_embedding.0", config.text_dim, dim)
    linear("text_embedding.2", dim, dim)
    linear("time_embedding.0", config.freq_dim, dim)
    linear("time_embedding.2", dim, dim)
    linear("time_projection.1", dim, 6 * dim)
    for layer in range(config.num_layers):
        block = f"blocks.{layer}"
        shapes[f"{block}.modulation"] = (1, 6, dim)
        for attention in ("self_attn", "cross_attn"):
            for projection in "qkvo":
                linear(f"{block}.{attention}.{projection}", dim, dim)
            if config.qk_norm:
                shapes[f"{block}.{attention}.norm_q.weight"] = (dim,)
                shapes[f"{block}.{attention}.norm_k.weight"] = (dim,)
            if attention == "self_attn" and config.cross_attn_norm:
                shapes[f"{block}.norm3.weight"] = (dim,)
                shapes[f"{block}.norm3.bias"] = (dim,)
        linear(f"{block}.ffn.0", dim, ffn_dim)
        linear(f"{block}.ffn.2", ffn_dim, dim)
    shapes["head.modulation"] = (1, 2, dim)
    linear("head.head", dim, math.prod(config.patch_size) * config.out_dim)
    return shapes


def check_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: WanConfig, *, origin: str
) -> None:
    """Raise ``CheckpointKeyError`` unless ``state_dict`` has exactly the tensors (names, shapes) of ``config``."""
    expected = official_shapes(config)
    mismatches = [
        (name, tuple(tensor.shape), expected[name])
        for name, tensor in state_dict.items()
        if name in expected and tuple(tensor.shape) != expected[name]
    ]
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    if missing or unexpected or mismatches:
        raise CheckpointKeyError(
            f"{origin} does not match a Wan DiT of {describe_config(config)}",
            missing=missing,
            unexpected=unexpected,
            shape_mismatches=mismatches,
        )


def wan_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    eps: float = WanConfig.eps,
    text_len: int = WanConfig.text_len,
) -> WanConfig:
    """The sizes of the DiT whose official-name tensors ``state_dict`` holds.

    Every size but the head count shows in a shape: ``dim`` / ``in_dim`` / ``patch_size`` from
    ``patch_embedding.weight`` ``[dim, in_dim, 1, ph, pw]``, ``text_dim`` / ``freq_dim`` from the
    embeddings, ``ffn_dim`` from ``blocks.0.ffn.0.weight``, ``out_dim`` from ``head.head.weight``,
    ``num_layers`` from the block indices, ``qk_norm`` / ``cross_attn_norm`` from whether
    ``norm_q`` / ``norm3`` have weights. ``num_heads`` defaults to ``dim // 128`` (every released Wan2.1
    DiT has heads of 128 dims: 12 for 1.3B, 40 for 14B).

    Raises:
        ValueError: a tensor the sizes are read from is absent, or ``dim`` is no multiple of 128 and
            ``num_heads`` is not given.
    """
    needed = (
        "patch_embedding.weight",
        "text_embedding.0.weight",
        "time_embedding.0.weight",
        "blocks.0.ffn.0.weight",
        "head.head.weight",
    )
    absent = [name for name in needed if name not in state_dict]
    if absent:
        raise ValueError(
            f"cannot read the DiT sizes: the weights lack {absent} (not a Wan DiT checkpoint?); "
            "pass the config explicitly"
        )
    dim, in_dim, *patch = (int(size) for size in state_dict["patch_embedding.weight"].shape)
    if num_heads is None:
        if dim % _WAN_HEAD_DIM:
            raise ValueError(
                f"the weights have dim={dim}, not a multiple of Wan's head_dim {_WAN_HEAD_DIM}: pass num_heads "
                "(--num-heads) or a config (--config) to say how many heads"
            )
        num_heads = dim // _WAN_HEAD_DIM
    layers = {int(match.group(1)) for name in state_dict if (match := _BLOCK_NAME.fullmatch(name))}
    return WanConfig(
        dim=dim,
        ffn_dim=int(state_dict["blocks.0.ffn.0.weight"].shape[0]),
        num_heads=num_heads,
        num_layers=max(layers) + 1,
        in_dim=in_dim,
        out_dim=int(state_dict["head.head.weight"].shape[0]) // math.prod(patch),
        text_dim=int(state_dict["text_embedding.0.weight"].shape[1]),
        text_len=text_len,
        freq_dim=int(state_dict["time_embedding.0.weight"].shape[1]),
        patch_size=tuple(patch),  # type: ignore[arg-type]
        eps=eps,
        qk_norm="blocks.0.self_attn.norm_q.weight" in state_dict,
        cross_attn_norm="blocks.0.norm3.weight" in state_dict,
    )


def describe_config(config: WanConfig) -> str:
    """The sizes of ``config`` on one line (``dim=1536, num_heads=12, ...``), for messages."""
    return (
        f"dim={config.dim}, num_heads={config.num_heads}, num_layers={config.num_layers}, "
        f"ffn_dim={config.ffn_dim}, in_dim={config.in_dim}, out_dim={config.out_dim}, "
        f"text_dim={config.text_dim}, freq_dim={config.freq_dim}, patch_size={list(config.patch_size)}"
    )


# --------------------------------------------------------------------------------------------------
# Reading a diffusers transformer (local folder, Hub id, or a model object)
# --------------------------------------------------------------------------------------------------


def _is_diffusers_folder(folder: Path) -> bool:
    config_file = folder / DIFFUSERS_CONFIG_NAME
    if not config_file.is_file():
        return False
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("_class_name") == DIFFUSERS_CLASS_NAME


def _transformer_folder(folder: Path, subfolder: str | None, *, origin: str) -> Path:
    """The folder holding ``config.json`` and the weights: ``folder/subfolder`` if there, else ``folder``."""
    candidates = [folder / subfolder, folder] if subfolder else [folder]
    for candidate in candidates:
        if (candidate / DIFFUSERS_CONFIG_NAME).is_file():
            return candidate
    looked = " or ".join(str(candidate / DIFFUSERS_CONFIG_NAME) for candidate in candidates)
    raise CheckpointFormatError(f"{origin} is not a diffusers model folder: there is no {looked}")


def _diffusers_weight_files(folder: Path) -> tuple[list[Path], set[str] | None]:
    """The safetensors files of a diffusers model folder and the names its index promises (or None)."""
    index = folder / f"{DIFFUSERS_WEIGHTS_NAME}.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointFormatError(f"{index} is not a safetensors index ({err})") from err
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [shard.name for shard in shards if not shard.is_file()]
        if absent:
            raise CheckpointFormatError(f"{index} lists shard files that are not in {folder}: {absent}")
        return shards, set(weight_map)
    single = folder / DIFFUSERS_WEIGHTS_NAME
    if single.is_file():
        return [single], None
    pickled = sorted(path.name for path in folder.glob("diffusion_pytorch_model*.bin"))
    refused = (
        f" ({pickled} are pickles, which memrope never loads: convert them to safetensors)" if pickled else ""
    )
    raise CheckpointFormatError(f"{folder} has neither {DIFFUSERS_WEIGHTS_NAME} nor its index{refused}")


def _read_diffusers_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Diffusers-name tensors and the config dict of one diffusers model folder."""
    config_file = folder / DIFFUSERS_CONFIG_NAME
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointFormatError(f"{config_file} is not a JSON config ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointFormatError(f"{config_file} holds a {type(config).__name__}, expected a JSON object")
    shards, indexed = _diffusers_weight_files(folder)
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        part = _read_safetensors(shard)
        repeated = sorted(tensors.keys() & part.keys())
        if repeated:
            raise CheckpointFormatError(
                f"{shard} repeats tensors of earlier shards: {_first_names(repeated)}"
            )
        tensors.update(part)
    if indexed is not None and indexed != tensors.keys():
        raise CheckpointKeyError(
            f"the shards in {folder} do not match their index",
            missing=indexed - tensors.keys(),
            unexpected=tensors.keys() - indexed,
        )
    return tensors, config


def _download_diffusers(
    repo_id: str, *, subfolder: str | None, revision: str | None, cache_dir: PathLike | None
) -> Path:
    """Fetch just the transformer files of a Hub repository (``subfolder/`` or its top level)."""
    from huggingface_hub import snapshot_download

    def fetch(prefix: str) -> Path:
        patterns = [f"{prefix}{name}" for name in _DIFFUSERS_FILE_PATTERNS]
        try:
            folder = snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
                allow_patterns=patterns,
            )
        except (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
            HfHubHTTPError,
        ) as err:
            offline = " (HF_HUB_OFFLINE is set)" if hub_constants.HF_HUB_OFFLINE else ""
            raise FileNotFoundError(
                f"{repo_id!r} is no local folder, and as a Hub id of a diffusers transformer it is neither in "
                f"the Hugging Face cache nor downloadable{offline}: "
                f"{type(err).__name__}: {err}. Run `hf download {repo_id} --include "
                f"'{prefix}*'` with network access, or pass a local folder"
            ) from err
        return Path(folder)

    snapshot = fetch(f"{subfolder}/" if subfolder else "")
    if subfolder and not (snapshot / subfolder / DIFFUSERS_CONFIG_NAME).is_file():
        snapshot = fetch("")
    return snapshot


def read_diffusers_transformer(
    source: PathLike | torch.nn.Module,
    *,
    revision: str | None = None,
    subfolder: str | None = "transformer",
    cache_dir: PathLike | None = None,
    text_len: int = WanConfig.text_len,
) -> tuple[dict[str, torch.Tensor], WanConfig]:
    """Read a diffusers ``WanTransformer3DModel`` as official-name weights and their :class:`WanConfig`.

    Args:
        source: a local folder (a pipeline folder with ``subfolder/``, or the transformer folder itself),
            a Hub id ``owner/name`` or ``hf://owner/name`` (only ``config.json`` and ``diffusion_pytorch_model*.safetensors`` of
            ``subfolder/`` are downloaded, or of the top level when the repository has no ``subfolder/``),
            or a ``WanTransformer3DModel`` object. Weights are read from safetensors only (one file, or
            shards listed by ``diffusion_pytorch_model.safetensors.index.json``); pickles are refused.
        revision: branch, tag or commit of a Hub repository.
        subfolder: where a pipeline keeps its transformer; None: the folder itself.
        cache_dir: Hugging Face cache folder (default ``HF_HUB_CACHE``).
        text_len: the padded prompt length of the returned config (diffusers does not record it).

    Returns:
        ``(state_dict, config)``: official name -> CPU tensor (exactly the tensors of a DiT of ``config``).

    Raises:
        CheckpointFormatError: not a diffusers model folder, a damaged file, pickled weights only.
        CheckpointKeyError: missing, unexpected or mis-shaped tensors for the config.
        ValueError: the config is not a text-to-video ``WanTransformer3DModel``.
        FileNotFoundError: a Hub id that is neither cached nor downloadable.
    """
    if isinstance(source, torch.nn.Module):
        model_config = getattr(source, "config", None)
        if not isinstance(model_config, Mapping):
            raise TypeError(
                f"source module must be a diffusers WanTransformer3DModel, got {type(source).__name__}"
            )
        tensors, config_dict, origin = source.state_dict(), dict(model_config), type(source).__name__
        config_dict.setdefault("_class_name", type(source).__name__)
    else:
        local = Path(source).expanduser()
        text = os.fspath(source)
        if local.is_dir():
            folder = _transformer_folder(local, subfolder, origin=str(local))
        elif local.exists():
            raise CheckpointFormatError(
                f"{local} is a file; a diffusers transformer is a folder (config.json + weights)"
            )
        elif hub_id := _HUB_ID.fullmatch(text):
            repo_id = hub_id.group(1)
            snapshot = _download_diffusers(
                repo_id, subfolder=subfolder, revision=revision, cache_dir=cache_dir
            )
            folder = _transformer_folder(snapshot, subfolder, origin=f"Hub repository {repo_id!r}")
        else:
            raise FileNotFoundError(
                f"source {text!r} is neither an existing folder nor a Hub id 'owner/name' (or 'hf://owner/name')"
            )
        tensors, config_dict = _read_diffusers_folder(folder)
        origin = str(folder)
    config = wan_config_from_diffusers(config_dict, text_len=text_len)
    state_dict = from_diffusers_state_dict(tensors)
    check_official_state_dict(state_dict, config, origin=f"diffusers transformer {origin}")
    return state_dict, config


def load_diffusers_into_wan(
    source: PathLike | torch.nn.Module,
    *,
    revision: str | None = None,
    subfolder: str | None = "transformer",
    cache_dir: PathLike | None = None,
    text_len: int = WanConfig.text_len,
    dtype: torch.dtype | None = None,
) -> CausalWanModel:
    """memrope's own DiT (:class:`~memrope.models.wan.CausalWanModel`) holding a diffusers Wan transformer's weights.

    ``source`` and the other arguments as for :func:`read_diffusers_transformer`; the load is strict.
    ``dtype``: cast the model after loading (None keeps float32, the tensors being copied into it).

    Raises:
        NonFiniteError: a weight holds NaN or infinity.
    """
    from memrope.models.wan import CausalWanModel

    state_dict, config = read_diffusers_transformer(
        source, revision=revision, subfolder=subfolder, cache_dir=cache_dir, text_len=text_len
    )
    _check_finite_tensors(state_dict, origin="diffusers transformer", advice=NONFINITE_WEIGHTS_ADVICE)
    model = CausalWanModel(config)
    model.load_state_dict(state_dict, strict=True)  # the names and shapes were checked
    if dtype is not None:
        model.to(dtype)
    return model


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`write_diffusers_folder` or :func:`write_original_file` wrote.

    Attributes:
        destination: the diffusers folder or the safetensors file.
        layout: ``"diffusers"`` or ``"original"``.
        files: the files written (inside ``destination`` for a folder).
        tensors: how many tensors.
        tensor_bytes: their bytes (``numel * element_size`` summed).
        config: the DiT sizes.
        dtypes: the tensors' dtypes (``"bfloat16"``, ...), as read: nothing is cast.
    """

    destination: Path
    layout: Layout
    files: tuple[Path, ...]
    tensors: int
    tensor_bytes: int
    config: WanConfig
    dtypes: tuple[str, ...]

    def summary(self) -> str:
        """One line for humans: what was written, how big, and the DiT shape."""
        what = (
            "diffusers WanTransformer3DModel folder"
            if self.layout == "diffusers"
            else "official-name safetensors"
        )
        names = ", ".join(path.name for path in self.files)
        return (
            f"wrote {self.destination} ({what}: {names}): {self.tensors} tensors ({', '.join(self.dtypes)}), "
            f"{self.tensor_bytes:,} bytes; Wan DiT {describe_config(self.config)}"
        )


def _dtype_names(tensors: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    return tuple(sorted({str(tensor.dtype).removeprefix("torch.") for tensor in tensors.values()}))


def _tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def _storable(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors needs contiguous tensors (``contiguous()`` returns a contiguous tensor itself)."""
    return {name: tensor.contiguous() for name, tensor in tensors.items()}


def _check_destination(destination: Path, *, force: bool, folder: bool) -> None:
    if not destination.parent.is_dir():
        raise FileNotFoundError(f"the folder of the destination {destination} does not exist")
    if not destination.exists() or (folder and destination.is_dir() and not any(destination.iterdir())):
        return  # an empty folder is replaced as if it were not there
    if not force:
        raise FileExistsError(f"{destination} exists; pass force=True (--force) to replace it")
    if folder and not destination.is_dir():
        raise FileExistsError(f"{destination} is a file; a diffusers model is written as a folder")
    if not folder and destination.is_dir():
        raise IsADirectoryError(
            f"{destination} is a folder; give a file name for the official weights, e.g. {destination / 'wan.safetensors'}"
        )
    if folder:
        foreign = sorted(
            entry.name
            for entry in destination.iterdir()
            if not any(fnmatch.fnmatch(entry.name, p) for p in _DIFFUSERS_FILE_PATTERNS)
        )
        if foreign:
            raise FileExistsError(
                f"{destination} holds files that are not a diffusers model's ({_first_names(foreign)}); "
                "--force replaces only a folder memrope convert (or diffusers) wrote"
            )


def write_diffusers_folder(
    state_dict: Mapping[str, torch.Tensor],
    config: WanConfig,
    destination: PathLike,
    *,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> ConversionResult:
    """Write official-name weights as a diffusers ``WanTransformer3DModel`` folder.

    The folder gets ``config.json`` (``_class_name: WanTransformer3DModel``) and
    ``diffusion_pytorch_model.safetensors``, or shards ``diffusion_pytorch_model-0000i-of-0000n.safetensors``
    with ``diffusion_pytorch_model.safetensors.index.json`` when the tensors exceed ``max_shard_bytes``
    (as diffusers' ``save_pretrained``). It is written beside ``destination`` and moved into place, so a
    failure leaves ``destination`` as it was. ``WanTransformer3DModel.from_pretrained(destination)`` loads it.

    Raises:
        FileExistsError: ``destination`` exists and not ``force``, or it holds files other than a model's.
        CheckpointKeyError: ``state_dict`` is not exactly the tensors of a DiT of ``config``.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    target = Path(destination).expanduser()
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be an int >= 1, got {max_shard_bytes!r}")
    check_official_state_dict(state_dict, config, origin="the weights")
    _check_destination(target, force=force, folder=True)
    tensors = _storable(to_diffusers_state_dict(state_dict))
    split = split_torch_state_dict_into_shards(
        tensors, filename_pattern=DIFFUSERS_WEIGHTS_PATTERN, max_shard_size=max_shard_bytes
    )
    config_json = {"_class_name": DIFFUSERS_CLASS_NAME, **_diffusers_version(), **diffusers_config(config)}
    config_json["patch_size"] = list(config.patch_size)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        written = [staging / DIFFUSERS_CONFIG_NAME]
        written[0].write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for filename, names in split.filename_to_tensors.items():
            save_file({name: tensors[name] for name in names}, staging / filename, metadata={"format": "pt"})
            written.append(staging / filename)
        if split.is_sharded:
            index = {
                "metadata": {**split.metadata, "total_size": _tensor_bytes(tensors)},
                "weight_map": split.tensor_to_filename,
            }
            written.append(staging / f"{DIFFUSERS_WEIGHTS_NAME}.index.json")
            written[-1].write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        mode = default_file_mode()
        for path in written:
            os.chmod(path, mode)
        os.chmod(staging, _default_folder_mode())
        swap_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ConversionResult(
        destination=target,
        layout="diffusers",
        files=tuple(target / path.name for path in written),
        tensors=len(tensors),
        tensor_bytes=_tensor_bytes(tensors),
        config=config,
        dtypes=_dtype_names(tensors),
    )


def _default_folder_mode() -> int:
    """Permission bits of a newly created folder under the current umask (``0o777 & ~umask``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _diffusers_version() -> dict[str, str]:
    try:
        return {"_diffusers_version": importlib.metadata.version("diffusers")}
    except importlib.metadata.PackageNotFoundError:
        return {}


def write_original_file(
    state_dict: Mapping[str, torch.Tensor], config: WanConfig, destination: PathLike, *, force: bool = False
) -> ConversionResult:
    """Write official-name weights as one safetensors file (memrope's loader reads it; atomic replace).

    The file's metadata holds ``format: pt`` and the DiT sizes as JSON under ``wan_config``.

    Raises:
        FileExistsError: ``destination`` exists and not ``force``.
        IsADirectoryError: ``destination`` is a folder.
        CheckpointKeyError: ``state_dict`` is not exactly the tensors of a DiT of ``config``.
    """
    from safetensors.torch import save_file

    target = Path(destination).expanduser()
    check_official_state_dict(state_dict, config, origin="the weights")
    _check_destination(target, force=force, folder=False)
    tensors = _storable(state_dict)
    metadata = {"format": "pt", "wan_config": json.dumps(config.to_dict(), sort_keys=True)}
    with atomic_replace(target) as temporary:
        save_file(tensors, temporary, metadata=metadata)
    return ConversionResult(
        destination=target,
        layout="original",
        files=(target,),
        tensors=len(tensors),
        tensor_bytes=_tensor_bytes(tensors),
        config=config,
        dtypes=_dtype_names(tensors),
    )


def wan_config_from_json(path: PathLike) -> WanConfig:
    """The :class:`WanConfig` in a JSON file: a diffusers ``WanTransformer3DModel`` ``config.json``, an official
    Wan ``config.json`` (``dim``, ``num_heads``, ...) or :meth:`WanConfig.to_dict` output."""
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"config {file} is not a readable JSON file ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"config {file} holds a {type(data).__name__}, expected a JSON object")  # noqa: TRY004 (a bad file, not a bad type)
    if data.get("_class_name") == DIFFUSERS_CLASS_NAME or "num_attention_heads" in data:
        return wan_config_from_diffusers(data)
    absent = [name for name in ("dim", "num_heads", "num_layers") if name not in data]
    if absent:
        raise ValueError(
            f"config {file} is neither a diffusers WanTransformer3DModel config nor an official Wan config: "
            f"it lacks {absent}"
        )
    return WanConfig.from_dict(data)


def is_diffusers_source(source: PathLike, *, subfolder: str | None = "transformer") -> bool:
    """Whether ``source`` names a diffusers transformer: a local diffusers model folder (or a folder with
    one in ``subfolder/``), or a Hub id ``owner/name`` / ``hf://owner/name`` that is not a local path."""
    local = Path(source).expanduser()
    if local.is_dir():
        return _is_diffusers_folder(local) or (
            subfolder is not None and _is_diffusers_folder(local / subfolder)
        )
    return not local.exists() and _HUB_ID.fullmatch(os.fspath(source)) is not None

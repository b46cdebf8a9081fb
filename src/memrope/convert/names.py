"""Wan DiT weight names both ways: official Wan / Self-Forcing / LongLive <-> diffusers ``WanTransformer3DModel``.

The name table, the configs both ways and the official tensor shapes; see :mod:`memrope.convert`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from memrope.checkpoint_files import (
    CheckpointKeyError,
    _count,
    _first_names,
)
from memrope.config import DEFAULT_MAX_POSITIONS
from memrope.models.wan_config import WanConfig

# memrope.loading imports this module (it reads diffusers-named checkpoints), so this one never imports
# memrope.loading; converting a checkpoint file, which needs both, is memrope.cli.convert.convert_checkpoint.


DIFFUSERS_CLASS_NAME = "WanTransformer3DModel"
#: diffusers' name for Wan's RMS norm of q and k over all heads together (the only one Wan uses)
DIFFUSERS_QK_NORM = "rms_norm_across_heads"
_WAN_HEAD_DIM = 128  # every released Wan2.1 DiT: 1536 / 12 heads, 5120 / 40 heads

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

"""Sizes of a Wan2.1 DiT (:class:`WanConfig`), given or read from any module tree with the official names.

:meth:`WanConfig.from_module` reads them from the modules of ``memrope``'s
:class:`~memrope.models.wan.CausalWanModel`, of the upstream Self-Forcing / LongLive / official
MemRoPE ``CausalWanModel``, or of anything else with the module names of docs/design.md §9;
LoRA-wrapped Linear layers (PEFT's ``base_layer``) count with their base sizes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

__all__ = ["WAN_MODULES", "WanConfig", "linear_features"]

# the submodules every Wan DiT has under these names (docs/design.md §9)
WAN_MODULES = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "blocks", "head")
_DEFAULT_TEXT_LEN = 512


@dataclass(frozen=True)
class WanConfig:
    """Constructor arguments of the Wan DiT; defaults are Wan2.1-T2V-1.3B."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        for name in (
            "dim",
            "ffn_dim",
            "num_heads",
            "num_layers",
            "in_dim",
            "out_dim",
            "text_dim",
            "text_len",
            "freq_dim",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(
                f"dim must be a multiple of num_heads with an even head_dim, got dim={self.dim}, num_heads={self.num_heads}"
            )
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {self.freq_dim}")
        if len(self.patch_size) != 3 or self.patch_size[0] != 1 or any(p < 1 for p in self.patch_size):
            raise ValueError(f"patch_size must be (1, ph, pw) with ph, pw >= 1, got {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["patch_size"] = list(self.patch_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WanConfig:
        """Build from a dict such as an official ``config.json``; unknown keys (``model_type``, ...) are ignored."""
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)

    @classmethod
    def from_module(cls, model: object) -> WanConfig:
        """The sizes of a Wan DiT module tree with the official names (docs/design.md §9).

        Read from the modules: ``dim`` / ``in_dim`` / ``patch_size`` from ``patch_embedding`` (a
        Conv3d), ``text_dim`` from ``text_embedding[0]``, ``freq_dim`` from ``time_embedding[0]``,
        ``ffn_dim`` from ``blocks[0].ffn[0]``, ``out_dim`` from ``head.head`` (``prod(patch)*out_dim``
        features), ``num_layers`` from ``len(blocks)``, ``num_heads`` from
        ``blocks[0].self_attn.num_heads``, ``eps`` from ``blocks[0].norm1``, ``qk_norm`` /
        ``cross_attn_norm`` from whether ``norm_q`` / ``norm3`` are more than ``nn.Identity``.
        Linear layers may be LoRA-wrapped (``base_layer``). ``text_len`` (the padded prompt length,
        which no module shows) is the model's ``text_len`` attribute or its ``config.text_len``, else 512.

        Raises:
            TypeError: when ``model`` lacks one of the official submodules (names them).
            ValueError: when the sizes read do not make a Wan DiT (says which).
        """
        missing = [name for name in WAN_MODULES if not isinstance(getattr(model, name, None), nn.Module)]
        if missing:
            raise TypeError(
                f"model must have the Wan DiT submodules {list(WAN_MODULES)} (docs/design.md §9); "
                f"{type(model).__name__} lacks {missing}"
            )
        wan: Any = model
        patch = wan.patch_embedding
        patch_size = tuple(int(p) for p in patch.kernel_size)
        if len(wan.blocks) == 0:
            raise ValueError("the Wan model has no blocks")
        block = wan.blocks[0]
        attention = block.self_attn
        dim = int(patch.out_channels)
        num_heads = int(attention.num_heads)
        head_dim = getattr(attention, "head_dim", None)
        if head_dim is not None and num_heads * int(head_dim) != dim:
            raise ValueError(
                f"the Wan model's attention has num_heads={num_heads} of head_dim={head_dim}, which does not "
                f"make its dim={dim}"
            )
        head_features = linear_features(wan.head.head)[1]
        if len(patch_size) != 3 or head_features % math.prod(patch_size):
            raise ValueError(
                f"the Wan model's head gives {head_features} features, not a multiple of its patch {patch_size}"
            )
        return cls(
            dim=dim,
            ffn_dim=linear_features(block.ffn[0])[1],
            num_heads=num_heads,
            num_layers=len(wan.blocks),
            in_dim=int(patch.in_channels),
            out_dim=head_features // math.prod(patch_size),
            text_dim=linear_features(wan.text_embedding[0])[0],
            text_len=_text_len(wan),
            freq_dim=linear_features(wan.time_embedding[0])[0],
            patch_size=patch_size,  # type: ignore[arg-type]
            eps=float(getattr(block.norm1, "eps", cls.eps)),
            qk_norm=not isinstance(attention.norm_q, nn.Identity),
            cross_attn_norm=not isinstance(block.norm3, nn.Identity),
        )


def _text_len(model: object) -> int:
    """``model.text_len`` (the official model), else ``model.config.text_len`` (ours), else Wan's 512."""
    for owner in (model, getattr(model, "config", None)):
        value = getattr(owner, "text_len", None)
        if value is not None:
            return int(value)
    return _DEFAULT_TEXT_LEN


def linear_features(module: Any) -> tuple[int, int]:
    """``(in_features, out_features)`` of a Linear layer, LoRA-wrapped (``base_layer``) or not."""
    base = getattr(module, "base_layer", module)
    return int(base.in_features), int(base.out_features)

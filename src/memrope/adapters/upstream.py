"""Make Self-Forcing / LongLive / official-MemRoPE inference code generate with a MemRoPE cache.

Upstream code (docs/design.md §12) holds a causal inference *pipeline* whose ``generator`` (a
``WanDiffusionWrapper``) wraps a causal Wan DiT (``generator.model``; LongLive wraps it with PEFT,
the Wan model then sits at ``generator.model.base_model.model``). The pipeline allocates per-block
cache dicts (``_initialize_kv_cache``, ``_initialize_crossattn_cache``) and calls the wrapper once per
denoising step and once more on the clean chunk, passing ``current_start`` as a *token* offset.

:func:`attach` accepts any of those three objects and patches, on the instance only:

* the Wan model's ``forward``: calls that carry a cache (a list per block, or ``kv_cache=True`` with
  the lists kept on the model as ``_kv_cache_attr`` / ``_crossattn_cache_attr``, as the official
  MemRoPE 2-GPU mode does) run :func:`memrope.models.wan_forward.wan_forward`, the forward pass of
  memrope's own ``CausalWanModel``, on the upstream modules' own parameters (nothing is copied;
  LoRA layers are called as they are, so a PEFT ``Linear`` computes ``base + scale * B(A(x))``
  itself) with a :class:`MemRoPECache` created lazily for the batch size and latent size of the
  call. Calls without a cache (training, the bidirectional model) go to the original ``forward``.
* when a pipeline is given, its ``_initialize_kv_cache`` and ``_initialize_crossattn_cache``: they
  store small placeholder dicts with the upstream keys (``k``/``v`` with 0 tokens,
  ``global_end_index``, ``local_end_index``; ``k``/``v``/``is_init`` for text), so no upstream
  cache is ever allocated and upstream code that resets those entries keeps working.

A new video starts (the MemRoPE cache is reset) when the per-block lists change (the pipeline
re-initialises its caches), when the pipeline resets their ``global_end_index`` entries (Self-Forcing
re-assigns them; an in-place ``fill_`` is noticed too), or when a call starts at frame 0 that cannot
belong to the current video. Cross-attention keys and values are computed once per prompt: they are
reused while the same context tensor comes back and the ``is_init`` flag of the text cache (which
this adapter sets) has not been reset.

The cache policy is the official MemRoPE pipeline's own when the upstream objects carry its
settings (``compression_method``, ``ema_alpha_long`` / ``ema_alpha_short``, ``ema_adaptive``,
``local_attn_size``, ``sink_size`` on the attention modules or in ``pipeline.args.model_kwargs``),
else the paper's; ``attach(..., cache_config=...)`` or ``MemRoPEConfig`` options override it.

The upstream pipeline shapes (``docs/design.md`` §3, §12):

* classifier-free guidance (Self-Forcing's ``CausalDiffusionInferencePipeline``: ``kv_cache_pos`` /
  ``kv_cache_neg`` used in turn): every upstream KV list, told apart by its block-0 ``k`` tensor, gets
  its own MemRoPE cache (:attr:`Attachment.caches`; at most :data:`MAX_BRANCHES`), and its own text
  context. One cache per branch rather than a batch-of-two cache, since upstream calls the branches
  one after the other with different prompts, and each branch's calls advance and rewrite its chunk
  on their own; memory is that of two caches, as upstream.
* a first chunk of another size (Self-Forcing's ``independent_first_frame=True``: 1 frame, then
  chunks of ``num_frame_per_block``): ``MemRoPEConfig.first_chunk_frames=1``, read from the pipeline
  or the model (or passed to :func:`attach`).
* LongLive's KV re-cache after a prompt switch (``InteractiveCausalInferencePipeline``: one call of up
  to ``local_attn_size`` clean frames ending at the current frame, ``block_mask`` ignored) runs as
  :meth:`MemRoPECache.recaching`: its last frames, the recache window (the real frames after the
  sink), are re-encoded under the new prompt; the sink and the memory keep the past. Upstream
  discards the call's output; frames before the window get zeros.

Refused with a message naming the feature: a cached call that is neither one chunk nor a re-cache,
``cache_start`` other than ``current_start``, LongLive's ``sink_recache_after_switch`` and
image-to-video inputs (``clip_fea`` / ``y``). The modules must be on real devices (accelerate's
meta-device offloading hooks are bypassed; a model dispatched over several GPUs works, each layer's
cache lives beside its block).

This module registers itself as the adapter ``upstream`` of :func:`memrope.attach` (see
:mod:`memrope.adapters.registry`).
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from memrope.adapters.peft_lora import lora_layers, merge_lora_layer, unmerge_lora_layer
from memrope.adapters.registry import Adapter, AttachmentContext, register_adapter
from memrope.cache import MemRoPECache
from memrope.config import MemRoPEConfig
from memrope.kv_storage import kv_format
from memrope.models.wan_config import WAN_MODULES, WanConfig
from memrope.models.wan_forward import (
    CrossAttentionContext,
    encode_text,
    new_wan_cache,
    token_grid,
    wan_forward,
)

__all__ = ["DESCRIPTION", "UPSTREAM_ADAPTER", "Attachment", "attach", "recognises"]

Kind = Literal["pipeline", "wrapper", "model"]
_CONFIG_FIELDS = frozenset(field.name for field in dataclasses.fields(MemRoPEConfig))
_ADAPTER_OPTIONS = frozenset({"merge_lora", "key_workspace", "kv_dtype"})
_CALL_ARGUMENTS = (
    "x",
    "t",
    "context",
    "seq_len",
    "clip_fea",
    "y",
    "kv_cache",
    "crossattn_cache",
    "current_start",
    "cache_start",
)
_ATTACHED: weakref.WeakKeyDictionary[nn.Module, Attachment] = weakref.WeakKeyDictionary()
_MISSING = object()
# passed by LongLive's re-cache call: the MemRoPE cache decides what the re-cached frames attend to
_IGNORED_ARGUMENTS = frozenset({"block_mask"})
_NOT_YET = "is not supported yet by memrope.attach"
# the per-block cache lists a pipeline holds: one (kv_cache1) or, with classifier-free guidance, one per branch
_SINGLE_CACHE_ATTRIBUTES = (("kv_cache1",), ("crossattn_cache",))
_CFG_CACHE_ATTRIBUTES = (("kv_cache_pos", "kv_cache_neg"), ("crossattn_cache_pos", "crossattn_cache_neg"))
MAX_BRANCHES = 2  # MemRoPE caches held at once: one per CFG branch (conditional, unconditional)
# the official CausalWanModel's defaults for the cache settings its attention modules hold
_OFFICIAL_DEFAULTS: dict[str, object] = {
    "compression_method": "eviction",
    "local_attn_size": -1,
    "sink_size": 0,
    "ema_alpha_long": 0.01,
    "ema_alpha_short": 0.1,
    "ema_adaptive": False,
}


# ---------------------------------------------------------------------------------------- discovery
def _is_wan(module: object) -> bool:
    """Whether ``module`` itself holds the causal Wan submodules (registered children, not forwarded).

    PEFT's ``PeftModel`` and ``LoraModel`` forward unknown attributes to the model they wrap, so
    ``hasattr`` alone would take a wrapper for the Wan model; the submodules must be its own.
    """
    if not isinstance(module, nn.Module):
        return False
    children = module.__dict__.get("_modules", {})
    return all(name in children for name in WAN_MODULES)


def _resolve_wan(module: object) -> nn.Module | None:
    """The causal Wan model inside ``module``: itself, or PEFT's ``base_model.model`` (or ``base_model``)."""
    if _is_wan(module):
        return module  # type: ignore[return-value]
    if not isinstance(module, nn.Module):
        return None
    base = module.__dict__.get("_modules", {}).get("base_model")
    if base is None:
        return None
    inner = base.__dict__.get("_modules", {}).get("model")
    if _is_wan(inner):
        return inner  # type: ignore[no-any-return]
    if _is_wan(base):
        return base  # type: ignore[no-any-return]
    return None


_TAKES = (
    "a causal inference pipeline (with .generator.model), its WanDiffusionWrapper (with .model) or the causal "
    "Wan model itself (with patch_embedding, text_embedding, time_embedding, time_projection, blocks, head; "
    "PEFT-wrapped at .base_model.model)"
)
DESCRIPTION = f"Self-Forcing / LongLive / official-MemRoPE code: {_TAKES}"


def _find(obj: object) -> tuple[Kind, Any, object | None, object | None] | None:
    """``(kind, wan model, wrapper, pipeline)`` of an upstream object, ``None`` for anything else."""
    generator = getattr(obj, "generator", None)
    if generator is not None:
        wan = _resolve_wan(getattr(generator, "model", None))
        if wan is not None:
            return "pipeline", wan, generator, obj
    wan = _resolve_wan(obj)
    if wan is not None:
        return "model", wan, None, None
    wan = _resolve_wan(getattr(obj, "model", None))
    if wan is not None:
        return "wrapper", wan, obj, None
    return None


def recognises(obj: object) -> bool:
    """Whether ``obj`` is an upstream pipeline, generator wrapper or causal Wan model (see :data:`DESCRIPTION`)."""
    return _find(obj) is not None


def _classify(obj: object) -> tuple[Kind, Any, object | None, object | None]:
    """:func:`_find`, or ``TypeError`` saying what :func:`attach` takes."""
    found = _find(obj)
    if found is None:
        raise TypeError(f"attach() needs {_TAKES}, got {type(obj).__name__}")
    return found


# ------------------------------------------------------------------------------ change detection
def _version(tensor: torch.Tensor) -> int | None:
    """The in-place write counter of ``tensor`` (``None`` for inference tensors, which have none)."""
    try:
        return int(tensor._version)
    except RuntimeError:
        return None


def _kv_token(kv_cache: object) -> tuple[object, int | None]:
    """What identifies one upstream cache allocation and its resets, without reading device values.

    The block-0 ``global_end_index`` tensor (re-assigned by Self-Forcing's reset, re-created by every
    allocation) and its write counter (an in-place ``fill_(0)`` reset); else the list itself.
    """
    if isinstance(kv_cache, (list, tuple)) and kv_cache and isinstance(kv_cache[0], dict):
        marker = kv_cache[0].get("global_end_index")
        if isinstance(marker, torch.Tensor):
            return marker, _version(marker)
    return kv_cache, None


def _same_token(a: tuple[object, int | None] | None, b: tuple[object, int | None]) -> bool:
    return a is not None and a[0] is b[0] and a[1] == b[1]


def _list_anchor(kv_cache: object) -> torch.Tensor | None:
    """The block-0 ``k`` tensor of an upstream cache list: what stays the same while the list lives.

    Self-Forcing resets a list by re-assigning its end indices, so the ``k`` buffer tells the lists of
    two CFG branches apart across videos; LongLive and the official code allocate new lists per video.
    """
    if isinstance(kv_cache, (list, tuple)) and kv_cache and isinstance(kv_cache[0], dict):
        keys = kv_cache[0].get("k")
        if isinstance(keys, torch.Tensor):
            return keys
    return None


def _flag_token(crossattn_cache: object) -> tuple[object, object] | None:
    """State of the block-0 ``is_init`` flag of an upstream text cache, or ``None`` without one."""
    if not isinstance(crossattn_cache, (list, tuple)) or not crossattn_cache:
        return None
    entry = crossattn_cache[0]
    if not isinstance(entry, dict) or "is_init" not in entry:
        return None
    flag = entry["is_init"]
    if isinstance(flag, torch.Tensor):
        return flag, _version(flag)
    return entry, bool(flag)


def _mark_text_cache_initialised(crossattn_cache: object) -> None:
    """Set every block's ``is_init`` to true, as upstream attention does after filling it."""
    if not isinstance(crossattn_cache, (list, tuple)):
        return
    for entry in crossattn_cache:
        if not isinstance(entry, dict) or "is_init" not in entry:
            continue
        flag = entry["is_init"]
        if isinstance(flag, torch.Tensor):
            try:
                flag.fill_(True)
            except RuntimeError:  # an inference tensor outside inference mode: leave it
                pass
        else:
            entry["is_init"] = True


def _context_token(context: object) -> tuple[object, ...]:
    tensors = list(context) if isinstance(context, (list, tuple)) else [context]
    return tuple(
        (tensor, _version(tensor) if isinstance(tensor, torch.Tensor) else None) for tensor in tensors
    )


def _same_context(a: tuple[object, ...] | None, b: tuple[object, ...]) -> bool:
    return a is not None and len(a) == len(b) and all(x[0] is y[0] and x[1] == y[1] for x, y in zip(a, b))  # type: ignore[index]


# ------------------------------------------------------------------------------------ attachment
@dataclass
class _TextState:
    context: CrossAttentionContext
    source: tuple[object, ...]
    flag: tuple[object, object] | None


@dataclass
class _Branch:
    """One upstream KV cache list (a CFG branch, or the only list) and the MemRoPE cache standing in for it.

    ``anchor``: a weak reference to the list's block-0 ``k`` tensor (``None``: a list without one);
    ``kv``: the reset token of the list (:func:`_kv_token`); ``text``: the branch's encoded prompt.
    """

    anchor: weakref.ref[torch.Tensor] | None
    cache: MemRoPECache
    cache_key: tuple[object, ...]
    kv: tuple[object, int | None] | None = None
    text: _TextState | None = None
    last_use: int = 0

    def holds(self, anchor: torch.Tensor | None) -> bool:
        if self.anchor is None or anchor is None:
            return self.anchor is None and anchor is None
        return self.anchor() is anchor

    @property
    def alive(self) -> bool:
        return self.anchor is None or self.anchor() is not None


class Attachment(AttachmentContext):
    """A live :func:`attach`: the patched objects, the MemRoPE caches and how to undo it all.

    Use it as a context manager or call :meth:`remove`. Attributes: ``kind`` (``"pipeline"``,
    ``"wrapper"`` or ``"model"``), ``model`` (the causal Wan model that was patched), ``wrapper``,
    ``pipeline`` (``None`` when not given), ``cache_config`` and ``config_source`` (where it came
    from: the ``cache_config`` argument, the official MemRoPE settings of the upstream objects, or the
    :class:`MemRoPEConfig` defaults, with any overriding options named). :attr:`cache` is the MemRoPE
    cache of the current video, :attr:`caches` one per upstream cache list (two with CFG).
    """

    def __init__(
        self,
        *,
        kind: Kind,
        wan: Any,
        wrapper: object | None,
        pipeline: object | None,
        cache_config: MemRoPEConfig,
        config_source: str,
        key_workspace: str,
        kv_dtype: torch.dtype | str | None = None,
    ) -> None:
        self.kind = kind
        self.model: Any = wan
        self.wrapper = wrapper
        self.pipeline = pipeline
        self.cache_config = cache_config
        self.config_source = config_source
        self.key_workspace = key_workspace
        self.kv_dtype = kv_dtype
        self.model_config = WanConfig.from_module(wan)
        self._branches: list[_Branch] = []
        self._calls = 0
        self._patches: list[tuple[object, str, object]] = []
        self._merged: list[tuple[Any, list[str]]] = []
        self._placeholders: list[object] = []
        self._original_forward: Callable[..., Any] = wan.forward
        self.active = False

    # ----------------------------------------------------------------------------- public API
    @property
    def geometry(self) -> WanConfig:
        """Deprecated: :attr:`model_config` (the upstream model's sizes, read by :meth:`WanConfig.from_module`)."""
        warnings.warn(
            "Attachment.geometry is deprecated; use Attachment.model_config", DeprecationWarning, stacklevel=2
        )
        return self.model_config

    @property
    def cache(self) -> MemRoPECache | None:
        """The MemRoPE cache of the current video (``None`` before the first cached call).

        With classifier-free guidance, the cache of the branch whose list came first (the conditional
        one in Self-Forcing's ``CausalDiffusionInferencePipeline``); :attr:`caches` lists them all.
        """
        return self._branches[0].cache if self._branches else None

    @property
    def caches(self) -> tuple[MemRoPECache, ...]:
        """One MemRoPE cache per upstream KV cache list in use (two with CFG), in order of first use."""
        return tuple(branch.cache for branch in self._branches)

    def reset(self) -> None:
        """Forget the current video and prompt: the next call starts a new video."""
        for branch in self._branches:
            branch.cache.reset()
            branch.kv = None
            branch.text = None

    def remove(self) -> None:
        """Undo :func:`attach`: restore every patched attribute, unmerge LoRA, drop the cache.

        Placeholder cache lists still held by the pipeline (``kv_cache1``, ``crossattn_cache``; with CFG
        ``kv_cache_pos`` / ``kv_cache_neg`` and ``crossattn_cache_pos`` / ``crossattn_cache_neg``) or by
        the model (``_kv_cache_attr``, ``_crossattn_cache_attr``) are set to ``None`` so the upstream
        code allocates its own again. Calling it twice is harmless.
        """
        if not self.active:
            return
        for owner, name, previous in reversed(self._patches):
            if previous is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)
        self._patches.clear()
        while self._merged:
            layer, names = self._merged.pop()
            unmerge_lora_layer(layer, names)
        kv_names, text_names = self._cache_attributes
        holders: list[tuple[object, tuple[str, ...]]] = [
            (self.pipeline, (*kv_names, *text_names)),
            (self.model, ("_kv_cache_attr", "_crossattn_cache_attr")),
        ]
        for holder, attributes in holders:
            for name in attributes:
                if holder is not None and any(getattr(holder, name, None) is p for p in self._placeholders):
                    setattr(holder, name, None)
        self._placeholders.clear()
        self._branches = []
        self.active = False
        if _ATTACHED.get(self.model) is self:
            del _ATTACHED[self.model]

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return (
            f"Attachment({self.kind}, {type(self.model).__name__}, policy={self.cache_config.policy!r}, "
            f"{state}, cache={'none' if not self._branches else 'allocated'})"
        )

    # ------------------------------------------------------------------------------- patching
    def _patch(self, owner: object, name: str, value: object) -> None:
        previous = owner.__dict__.get(name, _MISSING)
        setattr(owner, name, value)
        self._patches.append((owner, name, previous))

    def _install(self, merge_lora: bool) -> None:
        self.active = True
        try:
            if merge_lora:
                for layer in lora_layers(self.model):
                    record = merge_lora_layer(layer)
                    if record is not None:
                        self._merged.append(record)

            def forward(*args: Any, **kwargs: Any) -> Any:
                return self._forward(*args, **kwargs)

            self._patch(self.model, "forward", forward)
            pipeline = self.pipeline
            if pipeline is not None:
                if hasattr(pipeline, "_initialize_kv_cache"):
                    self._patch(pipeline, "_initialize_kv_cache", self._placeholder_kv_cache)
                if hasattr(pipeline, "_initialize_crossattn_cache"):
                    self._patch(pipeline, "_initialize_crossattn_cache", self._placeholder_text_cache)
                # drop caches upstream allocated before attach(): they would be passed to us and stay resident
                for name in (*self._cache_attributes[0], *self._cache_attributes[1]):
                    if getattr(pipeline, name, None) is not None:
                        setattr(pipeline, name, None)
        except BaseException:
            self.remove()
            raise
        _ATTACHED[self.model] = self

    @property
    def _cache_attributes(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The pipeline's KV and text cache-list attributes: one each, or one per CFG branch."""
        if self.pipeline is not None and hasattr(self.pipeline, _CFG_CACHE_ATTRIBUTES[0][0]):
            return _CFG_CACHE_ATTRIBUTES
        return _SINGLE_CACHE_ATTRIBUTES

    def _block_devices(self, device: torch.device | str | None) -> list[torch.device | str | None]:
        devices = getattr(self.pipeline, "block_devices", None)
        if devices is not None and len(devices) == self.model_config.num_layers:
            return list(devices)
        return [device] * self.model_config.num_layers

    def _placeholder_kv_cache(
        self,
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Stand-in for the pipeline's ``_initialize_kv_cache``: tiny dicts with the upstream keys (one list per branch)."""
        heads, head_dim = self.model_config.num_heads, self.model_config.head_dim

        def placeholder() -> list[dict[str, torch.Tensor]]:
            return [
                {
                    "k": torch.zeros([batch_size, 0, heads, head_dim], dtype=dtype, device=d),
                    "v": torch.zeros([batch_size, 0, heads, head_dim], dtype=dtype, device=d),
                    "global_end_index": torch.tensor([0], dtype=torch.long, device=d),
                    "local_end_index": torch.tensor([0], dtype=torch.long, device=d),
                }
                for d in self._block_devices(device)
            ]

        self._set_placeholders(self._cache_attributes[0], placeholder)

    def _set_placeholders(
        self, names: tuple[str, ...], make: Callable[[], list[dict[str, torch.Tensor]]]
    ) -> None:
        """Give the pipeline a fresh placeholder list under each of ``names``; forget the ones they replace."""
        replaced = [getattr(self.pipeline, name, None) for name in names]
        self._placeholders = [p for p in self._placeholders if not any(p is old for old in replaced)]
        for name in names:
            caches = make()
            self._placeholders.append(caches)
            setattr(self.pipeline, name, caches)

    def _placeholder_text_cache(
        self,
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Stand-in for the pipeline's ``_initialize_crossattn_cache``: tiny dicts with ``is_init`` (one list per branch)."""
        heads, head_dim = self.model_config.num_heads, self.model_config.head_dim

        def placeholder() -> list[dict[str, torch.Tensor]]:
            return [
                {
                    "k": torch.zeros([batch_size, 0, heads, head_dim], dtype=dtype, device=d),
                    "v": torch.zeros([batch_size, 0, heads, head_dim], dtype=dtype, device=d),
                    "is_init": torch.zeros([1], dtype=torch.bool, device=d),
                }
                for d in self._block_devices(device)
            ]

        self._set_placeholders(self._cache_attributes[1], placeholder)

    # -------------------------------------------------------------------------------- forward
    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if len(args) > len(_CALL_ARGUMENTS):
            raise TypeError(
                f"the Wan model takes at most {len(_CALL_ARGUMENTS)} positional arguments, got {len(args)}"
            )
        call = dict(zip(_CALL_ARGUMENTS, args))
        for name, value in kwargs.items():
            if name in call:
                raise TypeError(f"got multiple values for argument {name!r}")
            call[name] = value
        return call

    def _forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        call = self._bind(args, kwargs)
        kv_cache = call.get("kv_cache")
        if kv_cache is None or kv_cache is False:
            return self._original_forward(*args, **kwargs)  # type: ignore[no-any-return]
        crossattn_cache = call.get("crossattn_cache")
        if kv_cache is True:
            kv_cache = getattr(self.model, "_kv_cache_attr", None)
            if crossattn_cache is None:
                crossattn_cache = getattr(self.model, "_crossattn_cache_attr", None)
        for name in ("clip_fea", "y"):
            if call.get(name) is not None:
                raise NotImplementedError(
                    f"the MemRoPE adapter supports text-to-video only ({name} was given)"
                )
        if call.get("sink_recache_after_switch"):
            raise NotImplementedError(
                f"sink_recache_after_switch=True (LongLive's KV re-cache of the sink after a prompt switch) "
                f"{_NOT_YET}: the MemRoPE cache keeps the sink and its memory across a switch and re-caches the "
                "frames after them (attach the InteractiveCausalInferencePipeline without this flag)"
            )
        for name, value in call.items():
            if (
                name not in _CALL_ARGUMENTS
                and name not in _IGNORED_ARGUMENTS
                and value is not None
                and value is not False
            ):
                raise NotImplementedError(f"the MemRoPE adapter does not support {name}={value!r}")
        return self._cached_forward(call, kv_cache, crossattn_cache)

    def _cached_forward(
        self, call: dict[str, Any], kv_cache: object, crossattn_cache: object
    ) -> torch.Tensor:
        config = self.model_config
        x = call.get("x")
        if isinstance(x, (list, tuple)):
            x = torch.stack(list(x))
        if not isinstance(x, torch.Tensor) or x.ndim != 5:
            raise ValueError(
                f"x must be latents [B, C, F, H, W] (or a list of [C, F, H, W]), got {type(x).__name__}"
            )
        batch, _, frames, height, width = x.shape
        grid = token_grid(config, (height, width))
        frame_seqlen = grid[0] * grid[1]
        timesteps = call.get("t")
        if not isinstance(timesteps, torch.Tensor):
            raise TypeError("t must be a tensor of timesteps [B, F] (or [B])")
        if timesteps.ndim == 1:
            timesteps = timesteps[:, None].expand(batch, frames)
        if tuple(timesteps.shape) != (batch, frames):
            raise ValueError(f"t must have shape [B, F] = {[batch, frames]}, got {list(timesteps.shape)}")
        current_start = int(call.get("current_start") or 0)
        cache_start = call.get("cache_start")
        if cache_start is not None and int(cache_start) != current_start:
            raise NotImplementedError(
                f"cache_start={int(cache_start)} != current_start={current_start} (a KV cache window that "
                f"starts elsewhere than the frames written, e.g. video extension from start_frame_index) {_NOT_YET}"
            )
        if current_start % frame_seqlen:
            raise ValueError(
                f"current_start={current_start} is not a whole number of frames of {frame_seqlen} tokens "
                f"(latents {height}x{width}, patch {config.patch_size[1:]})"
            )
        start_frame = current_start // frame_seqlen
        dtype = self.model.patch_embedding.weight.dtype
        branch = self._branch_for(batch, grid, dtype, kv_cache, start_frame, frames)
        cache = branch.cache
        context = self._text_context(call.get("context"), crossattn_cache, batch, branch)
        state = cache.layers[0]
        # LongLive's re-cache: the frames up to the current end, from before the current chunk, or with
        # the block_mask only that call passes (a re-cache of the first chunk alone looks like a rewrite)
        recache_start = start_frame < state.chunk_start or call.get("block_mask") is not None
        if state.end_frame > 0 and start_frame + frames == state.end_frame and recache_start:
            return self._recache_forward(cache, x, timesteps, context, start_frame)
        expected = cache.chunk_frames_at(start_frame)
        if frames != expected:
            first = cache.config.first_chunk_frames
            hint = (
                " (a 1-frame first block is Self-Forcing's independent_first_frame=True: attach(..., "
                "first_chunk_frames=1))"
                if first is None and start_frame == 0 and frames == 1
                else ""
            )
            raise ValueError(
                f"a cached call at current_start={current_start} (frame {start_frame}) must carry one chunk of "
                f"{expected} latent frames, got {frames}{hint}; a call of several chunks ending at frame "
                f"{state.end_frame} re-caches them (LongLive's prompt switch)"
            )
        return wan_forward(
            self.model,
            x,
            timesteps,
            context,
            cache=cache,
            start_frame=start_frame,
            config=config,
            channels_first=True,
        )

    def _recache_forward(
        self,
        cache: MemRoPECache,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: CrossAttentionContext,
        start_frame: int,
    ) -> torch.Tensor:
        """LongLive's KV re-cache call ``x [B, C, F, H, W]`` of frames ``start_frame ..`` up to the cache's end.

        It is mapped onto :meth:`MemRoPECache.recaching`: the last frames of the call, those of the
        :meth:`~MemRoPECache.recache_window` (the real frames after the sink), are re-encoded under the
        new prompt; the sink and memory slots keep the past (``docs/design.md`` §3). Upstream discards
        the output: the window's frames get the model's flow, the frames before it zeros.
        """
        window_start, window_frames = cache.recache_window()
        output = torch.zeros_like(x)
        if window_frames == 0:
            return output  # every frame is a sink frame: nothing to re-cache (the new prompt is taken)
        offset = window_start - start_frame
        if offset < 0:
            raise ValueError(
                f"a re-cache call from frame {start_frame} must cover the frames after the sink, "
                f"{window_start}..{window_start + window_frames - 1}; pass at least those"
            )
        with cache.recaching():
            output[:, :, offset:] = wan_forward(
                self.model,
                x[:, :, offset:],
                timesteps[:, offset:],
                context,
                cache=cache,
                start_frame=window_start,
                config=self.model_config,
                channels_first=True,
            )
        return output

    # ---------------------------------------------------------------------------------- caches
    def _branch_for(
        self,
        batch: int,
        grid: tuple[int, int],
        dtype: torch.dtype,
        kv_cache: object,
        start_frame: int,
        frames: int,
    ) -> _Branch:
        """The branch of the call's upstream cache list, with a MemRoPE cache ready for the call.

        Every distinct list (told apart by its block-0 ``k`` tensor) has its own MemRoPE cache, so the
        two caches of classifier-free guidance stay apart; at most :data:`MAX_BRANCHES` are held (the
        least recently used, or one whose list is gone, is reused for a new list).
        """
        layer_devices = [block.modulation.device for block in self.model.blocks]
        key = (batch, grid, dtype, tuple(layer_devices))
        anchor = _list_anchor(kv_cache)
        self._calls += 1
        branch = next((b for b in self._branches if b.holds(anchor)), None)
        if branch is None:
            branch = self._new_branch(anchor, key, layer_devices)
        branch.last_use = self._calls
        token = _kv_token(kv_cache)
        new_video = not _same_token(branch.kv, token)
        if branch.cache_key != key:
            branch.cache = self._new_cache(key, layer_devices)
            branch.cache_key = key
        elif new_video:
            branch.cache.reset()
        else:
            state = branch.cache.layers[0]
            recache = frames == state.end_frame  # LongLive's re-cache of every frame so far
            if start_frame == 0 and state.end_frame > 0 and state.chunk_start != 0 and not recache:
                branch.cache.reset()  # a new video in the same lists, without a reset we could see
        branch.kv = token
        return branch

    def _new_branch(
        self, anchor: torch.Tensor | None, key: tuple[object, ...], layer_devices: list[torch.device]
    ) -> _Branch:
        reference = None if anchor is None else weakref.ref(anchor)
        spare = [b for b in self._branches if not b.alive]
        if not spare and len(self._branches) >= MAX_BRANCHES:
            spare = [min(self._branches, key=lambda b: b.last_use)]
        if spare:
            branch = spare[0]
            self._branches.remove(branch)
            branch.cache.reset()
            branch.anchor, branch.kv, branch.text = reference, None, None
        else:
            branch = _Branch(reference, self._new_cache(key, layer_devices), key)
        self._branches.append(branch)
        return branch

    def _new_cache(self, key: tuple[object, ...], layer_devices: list[torch.device]) -> MemRoPECache:
        batch, grid, dtype, _ = key
        return new_wan_cache(
            self.model_config,
            self.cache_config,
            batch,  # type: ignore[arg-type]
            grid,  # type: ignore[arg-type]
            dtype=dtype,  # type: ignore[arg-type]
            layer_devices=layer_devices,
            key_workspace=self.key_workspace,  # type: ignore[arg-type]
            kv_dtype=self.kv_dtype,
        )

    def _text_context(
        self, context: object, crossattn_cache: object, batch: int, branch: _Branch
    ) -> CrossAttentionContext:
        source = _context_token(context)
        text = branch.text
        if text is not None and _same_context(text.source, source):
            flag = _flag_token(crossattn_cache)
            if flag is None or (
                text.flag is not None and flag[0] is text.flag[0] and flag[1] == text.flag[1]
            ):
                return text.context
        encoded = encode_text(self.model, context, self.model_config, argument="context")  # type: ignore[arg-type]
        if encoded.batch_size != batch:
            raise ValueError(f"context batch {encoded.batch_size} does not match latents batch {batch}")
        _mark_text_cache_initialised(crossattn_cache)
        branch.text = _TextState(encoded, source, _flag_token(crossattn_cache))
        return encoded


# ------------------------------------------------------------------------- first chunk
def _upstream_first_chunk(pipeline: object | None, wan: Any, chunk_frames: int) -> tuple[int, str] | None:
    """``(1, where)`` when the pipeline or the model has ``independent_first_frame=True`` (Self-Forcing's
    1-frame first block before blocks of ``num_frame_per_block``), else ``None``."""
    if chunk_frames == 1:
        return None
    for owner in (pipeline, wan):
        if owner is not None and getattr(owner, "independent_first_frame", False) is True:
            return 1, f"{type(owner).__name__}.independent_first_frame=True"
    return None


# ------------------------------------------------------------------- official MemRoPE settings
def _setting(source: object, name: str) -> object:
    """``source[name]`` for a mapping (an OmegaConf ``DictConfig`` is both), else ``source.name``."""
    if isinstance(source, Mapping):
        return source.get(name, _MISSING)
    return getattr(source, name, _MISSING)


def _official_settings(wan: Any, pipeline: object | None) -> tuple[dict[str, object], str] | None:
    """The official MemRoPE cache settings of the upstream objects and where they were read; ``None`` if absent.

    The attention modules (``blocks[i].self_attn``) carry them in the official code; the pipeline's
    ``args.model_kwargs`` (what the modules were built from) is the fallback. Missing entries take the
    official ``CausalWanModel`` defaults. A setting that differs between blocks raises ``ValueError``.
    """
    modules = [block.self_attn for block in wan.blocks]
    if modules and all(hasattr(module, "compression_method") for module in modules):
        settings: dict[str, object] = {}
        for name, default in _OFFICIAL_DEFAULTS.items():
            values = [getattr(module, name, default) for module in modules]
            if any(value != values[0] for value in values[1:]):
                raise ValueError(
                    f"the attention modules disagree on {name}: {values}; the adapter needs one cache setting "
                    "for every block (pass cache_config= to choose)"
                )
            settings[name] = values[0]
        return settings, "blocks[*].self_attn"
    model_kwargs = getattr(getattr(pipeline, "args", None), "model_kwargs", None)
    if model_kwargs is not None and _setting(model_kwargs, "compression_method") is not _MISSING:
        settings = {}
        for name, default in _OFFICIAL_DEFAULTS.items():
            value = _setting(model_kwargs, name)
            settings[name] = default if value is _MISSING else value
        return settings, "pipeline.args.model_kwargs"
    return None


def _config_from_official_settings(
    settings: dict[str, object], where: str, chunk_frames: int
) -> MemRoPEConfig:
    """Map official settings onto a :class:`MemRoPEConfig` with :meth:`MemRoPEConfig.from_official`."""
    official = {
        "mode": settings["compression_method"],
        "local_attn_size": settings["local_attn_size"],
        "sink_size": settings["sink_size"],
        "ema_alpha_long": settings["ema_alpha_long"],
        "ema_alpha_short": settings["ema_alpha_short"],
        "per_position_pooling_and_adaptive_alpha": settings["ema_adaptive"],
    }
    try:
        return MemRoPEConfig.from_official(official, chunk_frames)
    except (TypeError, ValueError) as error:
        shown = ", ".join(f"{name}={value!r}" for name, value in settings.items())
        raise ValueError(
            f"the official MemRoPE settings of {where} ({shown}; compression_method is the official mode) "
            f"do not make a valid cache: {error}; pass cache_config= to override them"
        ) from error


# ---------------------------------------------------------------------------------------- attach
def _upstream_chunk(owner: object) -> int | None:
    chunk = getattr(owner, "num_frame_per_block", None)
    if isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1:
        return chunk
    return None


def attach(obj: object, cache_config: MemRoPEConfig | None = None, **options: Any) -> Attachment:
    """Make an upstream pipeline, ``WanDiffusionWrapper`` or causal Wan model generate with MemRoPE.

    Args:
        obj: a causal inference pipeline (``.generator.model``), its generator wrapper (``.model``),
            or the causal Wan model (bare or PEFT-wrapped: ``.base_model.model``).
        cache_config: the cache policy. Default: the upstream objects' own settings when they are the
            official MemRoPE code's (``compression_method`` 'ema' -> policy ``memrope``, 'eviction' ->
            ``sink``; ``local_attn_size`` -> ``cache_frames``, -1 -> policy ``full``; ``sink_size``;
            ``ema_alpha_long`` / ``ema_alpha_short``; ``ema_adaptive`` -> per-position pooling with the
            adaptive short rate), read from the attention modules or ``pipeline.args.model_kwargs``;
            else :class:`MemRoPEConfig` (paper settings). Either way ``chunk_frames`` is the upstream
            ``num_frame_per_block``, and ``first_chunk_frames`` is 1 when the pipeline or the model has
            ``independent_first_frame=True``. :attr:`Attachment.config_source` says which was used.
        **options: any :class:`MemRoPEConfig` field (overrides the settings above or ``cache_config``),
            plus ``merge_lora`` (default ``False``): merge the active LoRA adapters into the base
            weights in place for speed (PEFT's own ``merge()`` when the layer has it); :meth:`Attachment.remove`
            unmerges by subtracting the same delta, so the weights come back up to float rounding
            (not bit for bit), ``key_workspace`` (``"per_layer"`` or ``"shared"``) and ``kv_dtype``
            (8-bit keys and values: ``"fp8"``, ``"e5m2"``, ``"int8"`` or ``None``), see :class:`MemRoPECache`.

    Returns:
        the :class:`Attachment`; a context manager whose exit (or :meth:`Attachment.remove`)
        restores everything.

    Raises:
        TypeError: for an object of another shape or an unknown option.
        ValueError: when ``chunk_frames`` disagrees with the pipeline's ``num_frame_per_block`` (or
            ``first_chunk_frames`` with its ``independent_first_frame``), or the official settings read
            do not make a valid cache.
        RuntimeError: when the model is already attached (through any of the three objects).
    """
    unknown = sorted(set(options) - _CONFIG_FIELDS - _ADAPTER_OPTIONS)
    if unknown:
        raise TypeError(
            f"attach() got unknown options {unknown}; valid: {sorted(_CONFIG_FIELDS | _ADAPTER_OPTIONS)}"
        )
    if cache_config is not None and not isinstance(cache_config, MemRoPEConfig):
        raise TypeError(f"cache_config must be a MemRoPEConfig or None, got {type(cache_config).__name__}")
    kind, wan, wrapper, pipeline = _classify(obj)
    existing = _ATTACHED.get(wan)
    if existing is not None and existing.active:
        raise RuntimeError(f"this model is already attached ({existing!r}); remove() it first")
    upstream_chunk = _upstream_chunk(pipeline)
    chunk = upstream_chunk if upstream_chunk is not None else _upstream_chunk(wan)
    overrides = {name: value for name, value in options.items() if name in _CONFIG_FIELDS}
    if cache_config is not None:
        config_source = "cache_config argument"
    else:
        official = _official_settings(wan, pipeline)
        if official is not None:
            settings, where = official
            read_chunk = overrides.get(
                "chunk_frames", chunk if chunk is not None else MemRoPEConfig.chunk_frames
            )
            cache_config = _config_from_official_settings(settings, where, read_chunk)
            config_source = f"official MemRoPE settings of {where}"
        else:
            values: dict[str, Any] = {} if chunk is None else {"chunk_frames": chunk}
            cache_config = MemRoPEConfig(
                **{**values, **overrides}
            )  # at once: options may make room for the chunk
            config_source = "MemRoPEConfig defaults"
    if overrides:
        cache_config = dataclasses.replace(cache_config, **overrides)
        config_source += f", overridden by {sorted(overrides)}"
    if upstream_chunk is not None and upstream_chunk != cache_config.chunk_frames:
        raise ValueError(
            f"cache_config.chunk_frames={cache_config.chunk_frames} but the pipeline generates "
            f"num_frame_per_block={upstream_chunk} frames per chunk"
        )
    first_chunk = _upstream_first_chunk(pipeline, wan, cache_config.chunk_frames)
    if first_chunk is not None:
        frames, where = first_chunk
        if cache_config.first_chunk_frames is None and "first_chunk_frames" not in overrides:
            cache_config = dataclasses.replace(cache_config, first_chunk_frames=frames)
            config_source += f", first_chunk_frames=1 from {where}"
        elif cache_config.first_chunk_frames != frames:
            raise ValueError(
                f"cache_config.first_chunk_frames={cache_config.first_chunk_frames} but {where} generates a "
                f"first block of {frames} frame"
            )
    key_workspace = options.get("key_workspace", "per_layer")
    if key_workspace not in ("per_layer", "shared"):
        raise ValueError(f"key_workspace must be 'per_layer' or 'shared', got {key_workspace!r}")
    kv_dtype = options.get("kv_dtype")
    kv_format(kv_dtype, torch.float32)  # refuse a bad name now, not at the first call
    attachment = Attachment(
        kind=kind,
        wan=wan,
        wrapper=wrapper,
        pipeline=pipeline,
        cache_config=cache_config,
        config_source=config_source,
        key_workspace=key_workspace,
        kv_dtype=kv_dtype,
    )
    attachment._install(bool(options.get("merge_lora", False)))
    return attachment


UPSTREAM_ADAPTER = register_adapter(
    Adapter(name="upstream", description=DESCRIPTION, recognises=recognises, attach=attach)
)

"""Make a stock diffusers ``WanTransformer3DModel`` generate chunk by chunk with a MemRoPE cache.

:func:`attach` (the adapter ``diffusers`` of :func:`memrope.attach`) changes, on the given
transformer only, and undoes on :meth:`DiffusersAttachment.remove`:

* the processor of every ``blocks[i].attn1`` (self-attention): q/k/v projections, q/k RMS norm with
  its statistics in float32 (as the original Wan code; diffusers' ``nn.RMSNorm`` differs in the last
  bits), then :func:`memrope.rope_on_the_fly`: the chunk's un-roped keys/values go into the
  :class:`~memrope.cache.MemRoPECache` (layer ``i``), memrope's slot-relative RoPE is applied
  (diffusers' own ``rotary_emb`` is ignored: it always starts at frame 0 and stops at
  ``rope_max_seq_len`` frames), and the attention itself runs through diffusers'
  ``dispatch_attention_fn``, so ``transformer.set_attention_backend(...)`` is honoured;
* the processor of every ``blocks[i].attn2`` (cross-attention): its keys/values are computed once
  per prompt (:meth:`DiffusersAttachment.encode_context`) and read from the call; the
  ``encoder_hidden_states`` that goes through diffusers' forward is a 1-token dummy;
* a forward hook on ``condition_embedder.timesteps_proj`` that replaces diffusers' float32 time
  sinusoid by Wan's float64 one (:func:`memrope.models.wan_forward.sinusoidal_embedding`);
* forward pre-hooks on every block and on ``proj_out`` that move the activations onto the module's
  device (a transformer whose blocks are spread over several devices then runs as it is).

Per-frame timesteps go through diffusers' per-token timestep path (a 2-D ``timestep`` ``[B, L]``,
the Wan2.2 TI2V path, which modulates every token with its own frame's timestep).

The attachment is also the :class:`~memrope.pipeline.CausalVideoModel` that memrope's
:class:`~memrope.pipeline.CausalInferencePipeline` drives (``new_cache``, ``encode_context``,
``__call__`` on ``[B, F, C, H, W]`` latents, ``config``), so streaming, checkpoints/resume and prompt
switches work unchanged. While attached, the transformer is only usable through the attachment:
calling it directly raises ``RuntimeError``.

Not supported (refused at :func:`attach`): image-to-video transformers (``image_dim`` /
``added_kv_proj_dim``, Wan2.1 I2V), and a transformer that is already attached.

diffusers is imported only when :func:`attach` runs (``recognises`` looks at ``sys.modules``), so
``import memrope`` never imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import nn

from memrope.adapters.registry import Adapter, AttachmentContext, register_adapter
from memrope.attention import rope_on_the_fly
from memrope.cache import MemRoPECache
from memrope.config import MemRoPEConfig
from memrope.models.wan_config import WanConfig
from memrope.models.wan_forward import (
    CrossAttentionContext,
    new_wan_cache,
    pad_text,
    sinusoidal_embedding,
    token_grid,
)

__all__ = ["DiffusersAttachment", "attach", "diffusers_transformer", "recognises"]

_WAN_MODULE = "diffusers.models.transformers.transformer_wan"
_KEY_WORKSPACES = ("per_layer", "shared")
DEFAULT_TEXT_LEN = 512  # the Wan text encoder's padded prompt length; diffusers' config does not hold it


def _wan_transformer_class() -> type | None:
    """diffusers' ``WanTransformer3DModel`` when diffusers' Wan module is imported, else ``None``."""
    module = sys.modules.get(_WAN_MODULE)
    return getattr(module, "WanTransformer3DModel", None) if module is not None else None


def recognises(obj: object) -> bool:
    """Whether ``obj`` is a diffusers ``WanTransformer3DModel`` (never imports diffusers)."""
    wan_class = _wan_transformer_class()
    return wan_class is not None and isinstance(obj, wan_class)


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Wan's q/k RMS norm: statistics in float32, cast back, then ``* weight`` (``norm``: a ``nn.RMSNorm``).

    ``x`` ``[..., dim]``; any other norm module (``nn.Identity``, ...) is applied as it is.
    """
    if not isinstance(norm, nn.RMSNorm):
        return norm(x)  # type: ignore[no-any-return]
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    values = x.float()
    normed = (values * torch.rsqrt(values.pow(2).mean(dim=-1, keepdim=True) + eps)).type_as(x)
    return normed if norm.weight is None else normed * norm.weight


class _CallContext:
    """What one model call hands to the processors: the cache, the chunk's start frame, the prompt."""

    def __init__(self) -> None:
        self.cache: MemRoPECache | None = None
        self.start_frame = 0
        self.text: CrossAttentionContext | None = None

    def require(self) -> tuple[MemRoPECache, CrossAttentionContext]:
        if self.cache is None or self.text is None:
            raise RuntimeError(
                "this WanTransformer3DModel is attached to memrope: call the attachment "
                "(attachment(latents, timesteps, context, cache=..., start_frame=...)) instead of the "
                "transformer, or attachment.remove() first"
            )
        return self.cache, self.text


class _MemRoPEProcessor:
    """Base of the two processors: the layer index, the call context and diffusers' backend choice.

    ``_attention_backend`` / ``_parallel_config`` are the attributes diffusers'
    ``set_attention_backend`` writes; they start as the replaced processor's.
    """

    def __init__(self, call: _CallContext, layer: int, replaced: object) -> None:
        self.call = call
        self.layer = layer
        self._attention_backend = getattr(replaced, "_attention_backend", None)
        self._parallel_config = getattr(replaced, "_parallel_config", None)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """diffusers' attention dispatcher on ``[B, L, H, D]`` (no mask, scale ``1/sqrt(D)``)."""
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        return dispatch_attention_fn(  # type: ignore[no-any-return]
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=self._attention_backend
        )

    @staticmethod
    def _project_out(attention: Any, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``[B, L, H, D]`` -> ``to_out`` of ``[B, L, H*D]`` (in ``like``'s dtype)."""
        hidden = out.flatten(2, 3).type_as(like)
        return attention.to_out[1](attention.to_out[0](hidden))  # type: ignore[no-any-return]


class MemRoPESelfAttentionProcessor(_MemRoPEProcessor):
    """``blocks[layer].attn1``: causal self-attention of the chunk over the MemRoPE cache."""

    def __call__(
        self,
        attention: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: object = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``hidden_states`` ``[B, L, dim]`` of one chunk -> ``[B, L, dim]`` (``rotary_emb`` is ignored)."""
        cache, _ = self.call.require()
        heads = attention.heads
        query = _rms_norm(attention.norm_q, attention.to_q(hidden_states)).unflatten(2, (heads, -1))
        key = _rms_norm(attention.norm_k, attention.to_k(hidden_states)).unflatten(2, (heads, -1))
        value = attention.to_v(hidden_states).unflatten(2, (heads, -1))
        out = rope_on_the_fly(
            query,
            key,
            value,
            cache=cache,
            layer=self.layer,
            start_frame=self.call.start_frame,
            attention=self._attend,
        )
        return self._project_out(attention, out, query)


class MemRoPECrossAttentionProcessor(_MemRoPEProcessor):
    """``blocks[layer].attn2``: cross-attention to the prompt keys/values of the call context."""

    def __call__(
        self,
        attention: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: object = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``hidden_states`` ``[B, L, dim]`` -> ``[B, L, dim]``; ``encoder_hidden_states`` (the dummy) is ignored."""
        _, text = self.call.require()
        query = _rms_norm(attention.norm_q, attention.to_q(hidden_states)).unflatten(2, (attention.heads, -1))
        out = self._attend(query, text.keys[self.layer], text.values[self.layer])
        return self._project_out(attention, out, query)


def _to_device_of(parameter: str) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
    """A forward pre-hook moving a call's tensor arguments onto the device of the module's ``parameter``.

    The device is read at each call, so moving the transformer after :func:`attach` is fine.
    """

    def move(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        device = getattr(module, parameter).device
        return tuple(arg.to(device) if isinstance(arg, torch.Tensor) else arg for arg in args)

    return move


def _float64_sinusoid(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    """Forward hook on ``timesteps_proj``: Wan's float64 sinusoid ``[N, freq_dim]`` of the timesteps ``[N]``."""
    return sinusoidal_embedding(output.shape[-1], args[0]).to(output.dtype)


class DiffusersAttachment(AttachmentContext):
    """A live :func:`attach` on a diffusers ``WanTransformer3DModel``, and the model memrope's pipeline drives.

    Attributes:
        transformer: the attached transformer.
        cache_config: the cache policy of :meth:`new_cache` and of calls without a cache.
        config: the transformer's sizes as a :class:`WanConfig` (``text_len``: the prompt pad length).
        active: whether it is still attached.
    """

    def __init__(
        self,
        transformer: Any,
        cache_config: MemRoPEConfig,
        config: WanConfig,
        *,
        key_workspace: Literal["per_layer", "shared"] = "per_layer",
    ) -> None:
        self.transformer = transformer
        self.cache_config = cache_config
        self.config = config
        self.key_workspace = key_workspace
        self._call = _CallContext()
        self._cache: MemRoPECache | None = None
        self._text: tuple[torch.Tensor, CrossAttentionContext] | None = None  # (raw prompt, its context)
        self._processors: list[tuple[Any, object]] = []  # (attention module, original processor)
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.active = False

    # ----------------------------------------------------------------------------- install / undo
    def _install(self) -> None:
        self.active = True
        try:
            for layer, block in enumerate(self.transformer.blocks):
                for attention, processor_class in (
                    (block.attn1, MemRoPESelfAttentionProcessor),
                    (block.attn2, MemRoPECrossAttentionProcessor),
                ):
                    original = attention.processor
                    attention.set_processor(processor_class(self._call, layer, original))
                    self._processors.append((attention, original))
                self._hooks.append(block.register_forward_pre_hook(_to_device_of("scale_shift_table")))
            proj_out = self.transformer.proj_out
            self._hooks.append(proj_out.register_forward_pre_hook(_to_device_of("weight")))
            timesteps_proj = self.transformer.condition_embedder.timesteps_proj
            self._hooks.append(timesteps_proj.register_forward_hook(_float64_sinusoid))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Restore the original processors, remove the hooks, drop the cache (harmless twice)."""
        if not self.active:
            return
        for attention, original in reversed(self._processors):
            attention.set_processor(original)
        for hook in reversed(self._hooks):
            hook.remove()
        self._processors.clear()
        self._hooks.clear()
        self._cache, self._text = None, None
        self._call.cache, self._call.text = None, None
        self.active = False

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return (
            f"DiffusersAttachment({type(self.transformer).__name__}, policy={self.cache_config.policy!r}, "
            f"{state}, cache={'none' if self._cache is None else 'allocated'})"
        )

    # ----------------------------------------------------------------------------- AttachmentLike
    @property
    def cache(self) -> MemRoPECache | None:
        """The cache of the last call (``None`` before the first one)."""
        return self._cache

    def reset(self) -> None:
        """Forget the current video and prompt: the next call starts a new video."""
        if self._cache is not None:
            self._cache.reset()
        self._text = None

    # ----------------------------------------------------------------------------- CausalVideoModel
    def parameters(self) -> Iterator[nn.Parameter]:
        """The transformer's parameters (for code that reads a model's device and dtype from them)."""
        return self.transformer.parameters()  # type: ignore[no-any-return]

    def _require_active(self) -> None:
        if not self.active:
            raise RuntimeError("this DiffusersAttachment was removed; attach the transformer again")

    def new_cache(
        self,
        cache_config: MemRoPEConfig,
        batch_size: int,
        latent_hw: tuple[int, int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        kv_dtype: torch.dtype | str | None = None,
        key_workspace: Literal["per_layer", "shared"] | None = None,
    ) -> MemRoPECache:
        """A cache for this transformer: one layer per block, each beside its block unless ``device`` is given.

        ``dtype`` defaults to the dtype of ``patch_embedding``; ``kv_dtype`` stores the cached keys and
        values in 8 bits (see :class:`~memrope.cache.MemRoPECache`; ``None``: in ``dtype``);
        ``key_workspace`` overrides the attachment's.
        """
        self._require_active()
        return new_wan_cache(
            self.config,
            cache_config,
            batch_size,
            token_grid(self.config, latent_hw),
            dtype=self.transformer.patch_embedding.weight.dtype if dtype is None else dtype,
            layer_devices=[
                block.scale_shift_table.device if device is None else device
                for block in self.transformer.blocks
            ],
            key_workspace=self.key_workspace if key_workspace is None else key_workspace,
            kv_dtype=kv_dtype,
        )

    def encode_context(self, text_embeds: torch.Tensor) -> CrossAttentionContext:
        """Cross-attention keys/values ``[B, text_len, H, D]`` of every block for ``[B, L <= text_len, text_dim]``.

        As the original Wan: the prompt is zero-padded to ``text_len`` rows, put through
        ``condition_embedder.text_embedder``, then each block's ``attn2`` computes
        ``norm_k(to_k(.))`` (float32 statistics) and ``to_v(.)``, on the block's device.
        """
        self._require_active()
        embedder = self.transformer.condition_embedder.text_embedder
        weight = embedder.linear_1.weight
        padded = pad_text(text_embeds, self.config, argument="text_embeds")
        embedded = embedder(padded.to(device=weight.device, dtype=weight.dtype))
        heads, head_dim = self.config.num_heads, self.config.head_dim
        keys, values = [], []
        for block in self.transformer.blocks:
            attention = block.attn2
            source = embedded.to(block.scale_shift_table.device)
            keys.append(_rms_norm(attention.norm_k, attention.to_k(source)).unflatten(-1, (heads, head_dim)))
            values.append(attention.to_v(source).unflatten(-1, (heads, head_dim)))
        return CrossAttentionContext(tuple(keys), tuple(values))

    def _check_inputs(self, latents: torch.Tensor, timesteps: torch.Tensor, cache: MemRoPECache) -> None:
        if (
            not isinstance(latents, torch.Tensor)
            or latents.ndim != 5
            or latents.shape[2] != self.config.in_dim
        ):
            shape = list(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must have shape [B, F, {self.config.in_dim}, H, W], got {shape}")
        if not isinstance(timesteps, torch.Tensor) or tuple(timesteps.shape) != tuple(latents.shape[:2]):
            shape = list(timesteps.shape) if isinstance(timesteps, torch.Tensor) else type(timesteps).__name__
            raise ValueError(f"timesteps must have shape [B, F] = {list(latents.shape[:2])}, got {shape}")
        if not isinstance(cache, MemRoPECache):
            raise TypeError(f"cache must be a MemRoPECache, got {type(cache).__name__}")
        grid = token_grid(self.config, (latents.shape[3], latents.shape[4]))
        if grid != cache.frame_shape or cache.batch_size != latents.shape[0]:
            raise ValueError(
                f"latents of batch {latents.shape[0]} and {latents.shape[3]}x{latents.shape[4]} (token grid "
                f"{grid}) do not fit the cache, built for batch {cache.batch_size} and grid {cache.frame_shape}"
            )

    def _context(self, context: CrossAttentionContext | torch.Tensor) -> CrossAttentionContext:
        if isinstance(context, CrossAttentionContext):
            return context
        if self._text is None or self._text[0] is not context:  # raw text: encoded once per prompt
            self._text = (context, self.encode_context(context))
        return self._text[1]

    def __call__(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        context: CrossAttentionContext | torch.Tensor,
        *,
        cache: MemRoPECache | None = None,
        start_frame: int,
    ) -> torch.Tensor:
        """Flow prediction of one chunk through the diffusers transformer.

        Args:
            latents: noisy latents ``[B, F, C, H, W]`` of frames ``start_frame .. start_frame+F-1``.
            timesteps: per-frame timesteps ``[B, F]``.
            context: :meth:`encode_context` output, or raw text embeddings ``[B, L, text_dim]``
                (encoded once while the same tensor comes back).
            cache: the self-attention cache (advanced on the first call of a chunk); ``None``: the
                attachment's own, created for :attr:`cache_config` on first use (and when the batch
                size or the latent size changes).
            start_frame: global latent frame of the chunk's first frame.

        Returns:
            the flow prediction ``[B, F, C, H, W]`` in the dtype of ``proj_out``.
        """
        self._require_active()
        if cache is None:
            cache = self._own_cache(latents)
        self._check_inputs(latents, timesteps, cache)
        text = self._context(context)
        if text.batch_size != latents.shape[0]:
            raise ValueError(
                f"context batch {text.batch_size} does not match latents batch {latents.shape[0]}"
            )
        self._cache = cache
        transformer = self.transformer
        patch = transformer.patch_embedding.weight
        tokens_per_frame = cache.frame_seqlen
        time_device = transformer.condition_embedder.time_embedder.linear_1.weight.device
        token_timesteps = timesteps.to(time_device).repeat_interleave(tokens_per_frame, dim=1)
        text_weight = transformer.condition_embedder.text_embedder.linear_1.weight
        dummy_text = text_weight.new_zeros(latents.shape[0], 1, self.config.text_dim)
        self._call.cache, self._call.start_frame, self._call.text = cache, start_frame, text
        try:
            (flow,) = transformer(
                hidden_states=latents.transpose(1, 2).to(device=patch.device, dtype=patch.dtype),
                timestep=token_timesteps,
                encoder_hidden_states=dummy_text,
                return_dict=False,
            )
        finally:
            self._call.cache, self._call.text = None, None
        return flow.transpose(1, 2).contiguous()  # type: ignore[no-any-return]

    def _own_cache(self, latents: torch.Tensor) -> MemRoPECache:
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5:
            raise ValueError(
                f"latents must have shape [B, F, {self.config.in_dim}, H, W], got "
                f"{list(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}"
            )
        batch, hw = latents.shape[0], (latents.shape[3], latents.shape[4])
        grid = token_grid(self.config, hw)
        if self._cache is None or self._cache.frame_shape != grid or self._cache.batch_size != batch:
            self._cache = self.new_cache(self.cache_config, batch, hw)
        return self._cache


def diffusers_transformer(wan_model: nn.Module, config: WanConfig | None = None) -> Any:
    """A diffusers ``WanTransformer3DModel`` (eval mode) holding the weights of an official-names Wan DiT.

    Args:
        wan_model: memrope's :class:`~memrope.models.wan.CausalWanModel` (or any module tree with the
            official names, docs/design.md §9).
        config: its sizes (default :meth:`WanConfig.from_module`).

    The transformer's parameters *are* ``wan_model``'s tensors (:func:`memrope.convert.to_diffusers_state_dict`
    renames them, ``load_state_dict(assign=True)`` takes them): nothing is copied, each block stays on
    the device it was on (a model placed over several devices gives a transformer placed the same
    way), and changing one changes the other. With accelerate installed the transformer is built
    without initialising weights (``init_empty_weights``, as diffusers' ``from_pretrained``); its
    buffers (diffusers' RoPE tables) are made on the device of ``patch_embedding``.
    """
    from diffusers import WanTransformer3DModel

    from memrope.convert import diffusers_config, to_diffusers_state_dict

    config = WanConfig.from_module(wan_model) if config is None else config
    weight: torch.Tensor = wan_model.patch_embedding.weight  # type: ignore[union-attr, assignment]
    try:
        from accelerate import init_empty_weights  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        init_empty_weights = contextlib.nullcontext
    with torch.device(weight.device), init_empty_weights():
        transformer: Any = WanTransformer3DModel(**diffusers_config(config))
    transformer.load_state_dict(to_diffusers_state_dict(wan_model.state_dict()), strict=True, assign=True)
    return transformer.eval()


def _attached(transformer: Any) -> bool:
    return any(
        isinstance(block.attn1.processor, _MemRoPEProcessor)
        or isinstance(block.attn2.processor, _MemRoPEProcessor)
        for block in transformer.blocks
    )


def attach(obj: object, cache_config: MemRoPEConfig | None = None, **options: Any) -> DiffusersAttachment:
    """Make a diffusers ``WanTransformer3DModel`` generate with a MemRoPE cache.

    Args:
        obj: the transformer (``diffusers.WanTransformer3DModel``, text-to-video).
        cache_config: the cache policy (default :class:`MemRoPEConfig`, the paper's settings).
        **options: any :class:`MemRoPEConfig` field (overrides ``cache_config``), ``text_len`` (the
            prompt pad length, default 512 as Wan's umT5; diffusers' config does not hold it), ``key_workspace``
            (``"per_layer"`` or ``"shared"``, see :class:`MemRoPECache`).

    Returns:
        the :class:`DiffusersAttachment` (a context manager; leaving it, or ``remove()``, restores
        the transformer exactly).

    Raises:
        TypeError: for an object that is not a diffusers ``WanTransformer3DModel`` or an unknown option.
        ValueError: for an image-to-video transformer (``image_dim`` / ``added_kv_proj_dim`` set) or a
            bad option value.
        RuntimeError: when the transformer is already attached.
    """
    if not recognises(obj):
        raise TypeError(
            f"the diffusers adapter takes a diffusers WanTransformer3DModel, got {type(obj).__name__}"
        )
    from memrope.convert import wan_config_from_diffusers

    transformer: Any = obj
    if _attached(transformer):
        raise RuntimeError(
            "this WanTransformer3DModel is already attached to memrope; remove() that attachment first"
        )
    options = dict(options)
    text_len = options.pop("text_len", DEFAULT_TEXT_LEN)
    key_workspace = options.pop("key_workspace", "per_layer")
    if key_workspace not in _KEY_WORKSPACES:
        raise ValueError(f"key_workspace must be one of {list(_KEY_WORKSPACES)}, got {key_workspace!r}")
    fields = {field.name for field in dataclasses.fields(MemRoPEConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for the diffusers adapter; it takes text_len, key_workspace and "
            f"the MemRoPEConfig fields {sorted(fields)}"
        )
    config = cache_config or MemRoPEConfig()
    if options:
        config = dataclasses.replace(config, **options)
    model_config = wan_config_from_diffusers(dict(transformer.config), text_len=text_len)
    attachment = DiffusersAttachment(transformer, config, model_config, key_workspace=key_workspace)
    attachment._install()
    return attachment


register_adapter(
    Adapter(
        name="diffusers",
        description="a diffusers WanTransformer3DModel (text-to-video Wan2.1 / Wan2.2 layout)",
        recognises=recognises,
        attach=attach,
    )
)

"""The one Wan forward path (memrope.models.wan_forward) and WanConfig.from_module.

``CausalWanModel.forward`` and the upstream adapter both run :func:`wan_forward`; on the same weights
they must give the same bits, call after call, on every bundled parity set.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from einops import rearrange
from parity_sets import BUNDLED_PARITY_DIR
from torch import nn

from memrope import MemRoPEConfig
from memrope.adapters import attach
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.models.wan_forward import unpatchify, wan_forward
from memrope.testing.parity import find_parity_sets, load_parity_set
from memrope.testing.upstream import VARIANTS, LoraLinearStandin, build_pipeline

TINY = WanConfig(
    dim=32, ffn_dim=48, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=12, text_len=6, freq_dim=16
)
BUNDLED_SETS = find_parity_sets(BUNDLED_PARITY_DIR)


# ------------------------------------------------------------------------- WanConfig.from_module
@pytest.mark.parametrize(
    "config",
    [
        TINY,
        dataclasses.replace(TINY, qk_norm=False, cross_attn_norm=False, eps=1e-5),
        dataclasses.replace(TINY, patch_size=(1, 1, 2), out_dim=3, in_dim=5, num_layers=3, text_len=9),
    ],
    ids=["default", "no-norms", "odd-sizes"],
)
def test_from_module_reads_back_our_models_config(config: WanConfig) -> None:
    assert WanConfig.from_module(CausalWanModel(config)) == config


@pytest.mark.parametrize("variant", VARIANTS)
def test_from_module_reads_upstream_models_lora_wrapped_included(variant: str) -> None:
    sizes = {"dim": 32, "ffn_dim": 40, "num_heads": 4, "num_layers": 3, "in_dim": 4, "out_dim": 6}
    sizes |= {"text_dim": 10, "text_len": 7, "freq_dim": 16}
    wan = build_pipeline(variant, sizes).wan[0]
    assert isinstance(wan.blocks[0].ffn[0], LoraLinearStandin) == (variant == "longlive")  # PEFT-injected
    for sequential in (wan.text_embedding, wan.time_embedding):  # as a LoRA on every Linear would
        sequential[0] = LoraLinearStandin(sequential[0], rank=2, alpha=4.0)
    wan.head.head = LoraLinearStandin(wan.head.head, rank=2, alpha=4.0)
    assert WanConfig.from_module(wan) == WanConfig(**sizes)


def test_from_module_without_text_len_takes_512() -> None:
    wan = build_pipeline("self_forcing", {"dim": 32, "num_heads": 2, "text_dim": 10, "freq_dim": 16}).wan[0]
    del wan.text_len
    assert WanConfig.from_module(wan).text_len == 512


def test_from_module_names_what_is_missing_or_wrong() -> None:
    model = CausalWanModel(TINY)
    del model.head
    with pytest.raises(TypeError, match=r"submodules .* CausalWanModel lacks \['head'\]"):
        WanConfig.from_module(model)
    with pytest.raises(TypeError, match=r"Module lacks \['patch_embedding', 'text_embedding'"):
        WanConfig.from_module(nn.Module())
    model = CausalWanModel(TINY)
    model.blocks[0].self_attn.head_dim = 8
    with pytest.raises(ValueError, match="num_heads=2 of head_dim=8, which does not make its dim=32"):
        WanConfig.from_module(model)


# --------------------------------------------------------------------------------- unpatchify
@pytest.mark.parametrize("patch", [(1, 2, 2), (1, 1, 2), (1, 1, 1)])
def test_unpatchify_is_the_einops_rearrange_in_both_layouts(patch: tuple[int, int, int]) -> None:
    config = dataclasses.replace(TINY, patch_size=patch, out_dim=3)
    frames, grid = 2, (3, 4)
    tokens = torch.randn(2, frames * grid[0] * grid[1], patch[1] * patch[2] * 3)
    sizes = {"f": frames, "h": grid[0], "w": grid[1], "pf": 1, "ph": patch[1], "pw": patch[2], "c": 3}
    frames_first = rearrange(tokens, "b (f h w) (pf ph pw c) -> b (f pf) c (h ph) (w pw)", **sizes)
    channels_first = rearrange(tokens, "b (f h w) (pf ph pw c) -> b c (f pf) (h ph) (w pw)", **sizes)
    ours = unpatchify(tokens, frames, grid, config)
    ours_channels_first = unpatchify(tokens, frames, grid, config, channels_first=True)
    assert torch.equal(ours, frames_first) and ours.stride() == frames_first.stride()
    assert torch.equal(ours_channels_first, channels_first)
    assert ours_channels_first.stride() == channels_first.stride()


# ------------------------------------------------------------------------ one path, same bits
def _standin(parity: Any, variant: str) -> Any:
    settings = parity.pipeline
    pipe = build_pipeline(
        variant,
        parity.model_config.to_dict(),
        chunk_frames=settings.chunk_frames,
        latent_hw=settings.latent_hw,
        state_dict=parity.weights,
    )
    with torch.no_grad():  # LoRA layers stay in the call path with exact-zero deltas
        for module in pipe.wan[0].modules():
            if isinstance(module, LoraLinearStandin):
                module.lora_B["default"].weight.zero_()
    return pipe


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("path", BUNDLED_SETS, ids=[path.stem for path in BUNDLED_SETS])
def test_adapter_and_causal_wan_model_give_the_same_bits(path: Path, variant: str) -> None:
    """Every recorded call of the set, through CausalWanModel and through the attached stand-in."""
    parity = load_parity_set(path)
    model = parity.build_model()
    tensors = parity.tensors
    cache = model.new_cache(parity.cache_config, parity.pipeline.batch, parity.pipeline.latent_hw)
    context = model.encode_context(tensors["context"])
    pipe = _standin(parity, variant)
    batch = tensors["context"].shape[0]
    with attach(pipe, parity.cache_config), torch.no_grad():
        pipe._initialize_kv_cache(batch_size=batch, dtype=torch.float32, device=torch.device("cpu"))
        pipe._initialize_crossattn_cache(batch_size=batch, dtype=torch.float32, device=torch.device("cpu"))
        pipe.wan[0]._kv_cache_attr = pipe.kv_cache1
        pipe.wan[0]._crossattn_cache_attr = pipe.crossattn_cache
        for call in parity.calls:
            x, t = tensors[f"call{call.index}.x"], tensors[f"call{call.index}.t"]
            ours = model(x, t, context, cache=cache, start_frame=call.start_frame)
            through_adapter, _ = pipe.generator(
                noisy_image_or_video=x,
                conditional_dict={"prompt_embeds": tensors["context"]},
                timestep=t,
                kv_cache=pipe.kv_cache1,
                crossattn_cache=pipe.crossattn_cache,
                current_start=call.start_frame * parity.frame_seqlen,
            )
            assert torch.equal(ours, through_adapter), f"call {call.index}: the two paths differ"


def test_wan_forward_runs_a_foreign_module_tree_like_our_model() -> None:
    """The upstream stand-in's modules through wan_forward directly: the bits of CausalWanModel's forward."""
    torch.manual_seed(0)
    model = CausalWanModel(TINY).eval()
    wan = build_pipeline("self_forcing", TINY.to_dict(), state_dict=model.state_dict()).wan[0]
    config = WanConfig.from_module(wan)
    cache_config = MemRoPEConfig(cache_frames=7, sink_frames=1, chunk_frames=2)
    ours_cache, their_cache = (model.new_cache(cache_config, 1, (4, 6)) for _ in range(2))
    text = torch.randn(1, 5, TINY.text_dim)
    context = model.encode_context(text)
    with torch.no_grad():
        for start in range(0, 8, 2):
            latents = torch.randn(1, 2, TINY.in_dim, 4, 6)
            t = torch.full((1, 2), 500.0)
            ours = model(latents, t, context, cache=ours_cache, start_frame=start)
            theirs = wan_forward(
                wan, latents.transpose(1, 2), t, context, cache=their_cache, start_frame=start, config=config
            )
            assert torch.equal(ours, theirs)


def test_attachment_geometry_is_a_deprecated_model_config() -> None:
    pipe = build_pipeline("self_forcing", TINY.to_dict())
    with attach(pipe) as attachment:
        assert attachment.model_config == TINY
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert attachment.geometry is attachment.model_config
        assert [warning.category for warning in caught] == [DeprecationWarning]
        assert "use Attachment.model_config" in str(caught[0].message)

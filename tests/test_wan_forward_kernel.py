"""The self-attention kernel threaded through :func:`memrope.models.wan_forward.wan_forward`."""

from __future__ import annotations

import torch

from memrope.attention import attend
from memrope.config import MemRoPEConfig
from memrope.models.wan import CausalWanModel
from memrope.models.wan_forward import wan_forward
from memrope.presets import TINY_MODEL_CONFIG

LATENT_HW = (4, 6)


def _run(model: CausalWanModel, **kernel: object) -> torch.Tensor:
    """Flow of the first chunk ``[1, C, 3, 4, 6]`` (channels first) through a fresh cache."""
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(1, TINY_MODEL_CONFIG.in_dim, 3, *LATENT_HW, generator=generator)
    text = torch.randn(1, 2, TINY_MODEL_CONFIG.text_dim, generator=generator)
    cache = model.new_cache(MemRoPEConfig(), 1, LATENT_HW)
    timesteps = torch.full((1, 3), 500.0)
    return wan_forward(
        model,
        video,
        timesteps,
        model.encode_context(text),
        cache=cache,
        start_frame=0,
        config=model.config,
        channels_first=True,
        **kernel,  # type: ignore[arg-type]
    )


def test_custom_attention_kernel_is_used_by_every_block_and_the_default_is_attend() -> None:
    torch.manual_seed(0)
    model = CausalWanModel(TINY_MODEL_CONFIG).eval()
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def recording(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        shapes.append((tuple(query.shape), tuple(key.shape)))
        return attend(query, key, value)

    with torch.no_grad():
        default = _run(model)
        recorded = _run(model, attention=recording)
        silenced = _run(model, attention=lambda query, key, value: torch.zeros_like(query))
    _, patch_h, patch_w = TINY_MODEL_CONFIG.patch_size
    tokens = 3 * (LATENT_HW[0] // patch_h) * (LATENT_HW[1] // patch_w)
    shape = (1, tokens, TINY_MODEL_CONFIG.num_heads, TINY_MODEL_CONFIG.head_dim)
    assert shapes == [(shape, shape)] * TINY_MODEL_CONFIG.num_layers
    assert torch.equal(recorded, default)
    assert not torch.allclose(silenced, default)

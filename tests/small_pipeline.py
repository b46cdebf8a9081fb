"""What the pipeline-feature test modules share: a small random Wan DiT, its latent size and cache."""

from __future__ import annotations

import torch

from memrope.config import MemRoPEConfig
from memrope.models.wan import CausalWanModel, WanConfig

TINY = WanConfig(
    dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=8, text_len=6, freq_dim=16
)
LATENT_HW = (4, 6)
CACHE = MemRoPEConfig(cache_frames=8, sink_frames=1, chunk_frames=2)
STEPS = (1000, 750, 500, 250)


def small_model() -> CausalWanModel:
    """The DiT of :data:`TINY` with the weights of ``torch.manual_seed(0)``, in eval mode."""
    torch.manual_seed(0)
    return CausalWanModel(TINY).eval()

"""Use MemRoPECache and rope_on_the_fly inside your own autoregressive video DiT.

A complete toy model: latents [B, F, C, H, W] are cut into tokens, a few transformer blocks attend
over a fixed-size MemRoPE cache, and a short denoising loop generates the video chunk by chunk, as a
Self-Forcing-style pipeline does. The cache never grows, whatever --chunks says.

    python examples/own_dit.py --chunks 20
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import memrope


class ToyBlock(nn.Module):
    """Pre-norm transformer block whose self-attention goes through the MemRoPE cache."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(
        self, x: torch.Tensor, cache: memrope.MemRoPECache, layer: int, start_frame: int
    ) -> torch.Tensor:
        # x: [B, L, dim] tokens of one chunk; q, k, v: un-roped [B, L, heads, head_dim]
        query, key, value = (
            self.qkv(self.norm1(x)).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(2)
        )
        attended = memrope.rope_on_the_fly(
            query, key, value, cache=cache, layer=layer, start_frame=start_frame
        )
        x = x + self.out(attended.flatten(2))
        return x + self.mlp(self.norm2(x))


class ToyVideoDiT(nn.Module):
    """Latents [B, F, C, H, W] + a noise level -> predicted clean latents, chunk by chunk."""

    def __init__(self, channels: int = 4, dim: int = 64, num_heads: int = 2, num_layers: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(channels, dim)
        self.noise_level = nn.Linear(1, dim)
        self.blocks = nn.ModuleList(ToyBlock(dim, num_heads) for _ in range(num_layers))
        self.unembed = nn.Linear(dim, channels)

    def new_cache(
        self, config: memrope.MemRoPEConfig, batch: int, latent_hw: tuple[int, int]
    ) -> memrope.MemRoPECache:
        block = self.blocks[0]
        return memrope.MemRoPECache(
            config,
            num_layers=len(self.blocks),
            batch_size=batch,
            num_heads=block.num_heads,
            head_dim=block.head_dim,
            frame_shape=latent_hw,
        )

    def forward(
        self, latents: torch.Tensor, sigma: float, cache: memrope.MemRoPECache, start_frame: int
    ) -> torch.Tensor:
        batch, frames, channels, height, width = latents.shape
        # one token per latent pixel, in (frame, row, column) order as the cache expects
        tokens = latents.permute(0, 1, 3, 4, 2).reshape(batch, frames * height * width, channels)
        x = self.embed(tokens) + self.noise_level(torch.full((1, 1), sigma))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, start_frame)
        return self.unembed(x).reshape(batch, frames, height, width, channels).permute(0, 1, 4, 2, 3)


def generate(model: ToyVideoDiT, chunks: int, seed: int = 0) -> tuple[torch.Tensor, memrope.MemRoPECache]:
    config = memrope.MemRoPEConfig()  # 12 frames = 3 sink + 2 memory + 4 recent + 3 chunk
    batch, channels, latent_hw = 1, 4, (6, 8)
    cache = model.new_cache(config, batch, latent_hw)
    generator = torch.Generator().manual_seed(seed)
    sigmas = [1.0, 0.75, 0.5, 0.25]
    video = []
    with torch.no_grad():
        for chunk in range(chunks):
            start = chunk * config.chunk_frames
            x = torch.randn(batch, config.chunk_frames, channels, *latent_hw, generator=generator)
            for step, sigma in enumerate(sigmas):
                # every call of a chunk uses the same start_frame: the first advances the cache,
                # the later ones rewrite the chunk's slots in place
                clean = model(x, sigma, cache, start)
                if step + 1 < len(sigmas):
                    noise = torch.randn(x.shape, generator=generator)
                    x = (1 - sigmas[step + 1]) * clean + sigmas[step + 1] * noise
            model(clean, 0.0, cache, start)  # write the clean chunk's keys and values
            video.append(clean)
    return torch.cat(video, dim=1), cache


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10, help="chunks of 3 latent frames to generate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = ToyVideoDiT().eval()
    video, cache = generate(model, args.chunks, args.seed)
    print(f"generated latents {list(video.shape)}; the cache holds {cache.resident_bytes()} bytes:")
    print(cache.summary())


if __name__ == "__main__":
    main()

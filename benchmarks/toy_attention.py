"""Where the toy model's attention heads look when it draws a frame: which frame, and which neighbour.

The toy world moves each object at most one native pixel per axis per latent frame, a quarter of a
token (a token is 4x4 native pixels). To move an object the model must read, for each token of the
frame it draws, the previous frame at that token *and at its neighbours* (an edge crossing into a
token comes from the token beside it). This measures whether its heads do: the model draws latent
frame ``--frame`` from the world's own frames before it (the pipeline run with ``initial_latents`` =
those frames, the toy preset's sampler), and an attention hook
(:meth:`memrope.cache.MemRoPECache.register_attention_hook`) takes the first denoising call of that
frame (``s = 1``, where the sampler decides where the objects go). Per layer and head, over the
frame's queries and the batch:

* ``entropy`` of the attention over the whole context, in nats (``uniform``: every key alike);
* ``frames``: the share on each frame of the context, oldest first, the frame being drawn last;
* ``previous 3x3``: the share on the previous frame's token at each offset (row, column) from the
  query's own token, ``[-1, 0, 1]`` both ways (the centre is "the same token": copying in place;
  an offset beyond the frame's border holds nothing), so the nine sum to at most the previous
  frame's share.

Run: ``python benchmarks/toy_attention.py [--weights FILE] [--batch 4] [--frame 8] [--threads 2]
[--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from toy_drift import toy_pipeline

from memrope.cache import CacheContext, MemRoPECache
from memrope.models.wan_forward import token_grid
from memrope.toy import TOY_GIVEN_FRAMES, TOY_LATENT_FRAMES
from memrope.toy.world import world_latents


class FirstCallAttention:
    """Attention hook keeping, per layer, the softmax attention ``[B, H, Lq, Lk]`` of its first call
    over ``key_tokens`` keys: the first denoising call of the frame being drawn (the context call of
    the frame before it has one frame of keys less)."""

    def __init__(self, key_tokens: int) -> None:
        self.key_tokens = key_tokens
        self.weights: dict[int, torch.Tensor] = {}

    def __call__(
        self, cache: MemRoPECache, layer: int, query: torch.Tensor, context: CacheContext, /
    ) -> None:
        if layer in self.weights or context.keys.shape[1] != self.key_tokens:
            return
        queries = query.float().transpose(1, 2)  # [B, H, Lq, D]
        keys = context.keys.float().transpose(1, 2)  # [B, H, Lk, D]
        scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
        self.weights[layer] = scores.softmax(dim=-1)


def head_statistics(weights: torch.Tensor, grid: tuple[int, int]) -> dict[str, object]:
    """Entropy, per-frame shares and the previous frame's 3x3 shares of one head's attention ``[B, Lq, Lk]``."""
    height, width = grid
    tokens = height * width
    batch, query_count, key_count = weights.shape
    frames = key_count // tokens
    entropy = -(weights * weights.clamp(min=1e-12).log()).sum(dim=-1).mean()
    per_frame = weights.view(batch, query_count, frames, tokens).sum(dim=-1).mean(dim=(0, 1))
    previous = weights.view(batch, height, width, frames, height, width)[..., frames - 2, :, :]
    padded = torch.nn.functional.pad(previous, (1, 1, 1, 1))  # offsets beyond the border hold nothing
    neighbourhood = torch.zeros(3, 3)
    for row in range(height):
        for col in range(width):
            neighbourhood += padded[:, row, col, row : row + 3, col : col + 3].mean(dim=0)
    neighbourhood /= height * width
    return {
        "entropy": float(entropy),
        "uniform": math.log(key_count),
        "frames": [round(float(share), 3) for share in per_frame],
        "previous_3x3": [[round(float(share), 3) for share in row] for row in neighbourhood],
    }


def measure_attention(
    weights: str | None, batch: int, frame: int, seed: int, noise_seed: int
) -> dict[str, object]:
    """Per layer and head, the statistics of :func:`head_statistics` for drawing latent frame ``frame``."""
    preset, pipeline, text = toy_pipeline(weights, batch)
    world = world_latents(seed, frame, batch)
    grid = token_grid(preset.model_config, preset.latent_hw)
    hook = FirstCallAttention((frame + 1) * grid[0] * grid[1])
    with torch.no_grad():
        stream = pipeline.stream(
            text, num_frames=frame + 1, seed=noise_seed, initial_latents=world, latent_hw=preset.latent_hw
        )
        for _ in range(frame):  # the given frames, one chunk each
            next(stream)
        cache = pipeline.cache
        assert cache is not None
        handle = cache.register_attention_hook(hook)
        try:
            next(stream)
        finally:
            handle.remove()
    layers = []
    for layer in sorted(hook.weights):
        weights_of_layer = hook.weights[layer]
        layers.append(
            [head_statistics(weights_of_layer[:, head], grid) for head in range(weights_of_layer.shape[1])]
        )
    return {"weights": weights or "shipped", "batch": batch, "frame": frame, "seed": seed, "layers": layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--weights", default=None, help="a toy checkpoint (default: the shipped one)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frame", type=int, default=8, help="the latent frame drawn (within the trained 12)")
    parser.add_argument("--seed", type=int, default=0, help="world scenes")
    parser.add_argument("--noise-seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not TOY_GIVEN_FRAMES <= args.frame < TOY_LATENT_FRAMES:
        parser.error(f"--frame must be in [{TOY_GIVEN_FRAMES}, {TOY_LATENT_FRAMES}), got {args.frame}")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = measure_attention(args.weights, args.batch, args.frame, args.seed, args.noise_seed)
    result["seconds"] = round(time.perf_counter() - started, 1)
    layers = result["layers"]
    assert isinstance(layers, list)
    for layer, heads in enumerate(layers):
        for head, stats in enumerate(heads):
            centre = stats["previous_3x3"]
            print(
                f"layer {layer} head {head}: entropy {stats['entropy']:.2f} of {stats['uniform']:.2f}, "
                f"previous frame {stats['frames'][-2]:.2f} (same token {centre[1][1]:.2f}, its 8 neighbours "
                f"{sum(map(sum, centre)) - centre[1][1]:.2f}), own frame {stats['frames'][-1]:.2f}"
            )
    print(f"({args.batch} videos of world seed {args.seed}, frame {args.frame}, {result['seconds']} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

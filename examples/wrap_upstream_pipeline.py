"""Make an existing Self-Forcing (or LongLive, or official MemRoPE) pipeline generate with MemRoPE.

One call, `memrope.attach(pipeline)`, replaces the pipeline's growing/sliding KV cache with a
fixed-size MemRoPE cache (sink + 2 EMA memory frames + recent + chunk, keys re-roped on the fly),
sharing the model's weights (nothing is copied). Leaving the `with` block restores the pipeline.

With the Self-Forcing repository (github.com/guandeh17/Self-Forcing, its requirements installed)
and its checkpoint, from inside that repository:

    python /path/to/memrope/examples/wrap_upstream_pipeline.py \\
        --config configs/self_forcing_dmd.yaml --checkpoint checkpoints/self_forcing_dmd.pt \\
        --prompt "a red fox running through snow" --num-frames 240 --output fox.mp4

Without it, on any machine in seconds: --tiny builds small stand-ins of the same classes
(`memrope.testing.upstream`: same module tree, call signatures and cache-list protocol).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

import memrope
from memrope.loading import load_wan_weights
from memrope.video import Mp4Writer

FPS = 16


def self_forcing_pipeline(config_path: str, checkpoint: str, device: torch.device) -> Any:
    """The pipeline exactly as Self-Forcing's inference.py builds it (run from its repository)."""
    from omegaconf import OmegaConf
    from pipeline import CausalInferencePipeline  # Self-Forcing's own package

    config = OmegaConf.merge(OmegaConf.load("configs/default_config.yaml"), OmegaConf.load(config_path))
    pipeline = CausalInferencePipeline(config, device=device)
    # memrope's loader: weights_only=True, EMA weights, FSDP/wrapper prefixes handled, strict keys
    load_wan_weights(pipeline.generator.model, checkpoint, use_ema=True)
    pipeline = pipeline.to(dtype=torch.bfloat16)
    for part in (pipeline.text_encoder, pipeline.generator, pipeline.vae):
        part.to(device=device)
    return pipeline


def run_upstream(args: argparse.Namespace) -> None:
    device = torch.device("cuda")
    pipeline = self_forcing_pipeline(args.config, args.checkpoint, device)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    noise = torch.randn([1, args.num_frames, 16, 60, 104], generator=generator).to(device, torch.bfloat16)
    with memrope.attach(pipeline) as attachment:  # the one call
        video = pipeline.inference(noise=noise, text_prompts=[args.prompt])  # [1, T, 3, 480, 832] in [0, 1]
        print(attachment.cache)
    with Mp4Writer(args.output, fps=FPS) as writer:
        writer.write((video[0] * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    print(f"wrote {args.output}")


def run_tiny(args: argparse.Namespace) -> None:
    from memrope.testing.upstream import build_pipeline

    config = {"dim": 64, "ffn_dim": 128, "num_heads": 2, "num_layers": 2, "in_dim": 4, "out_dim": 4,
              "text_dim": 24, "text_len": 8}
    pipeline = build_pipeline("self_forcing", config, chunk_frames=3, latent_hw=(6, 8), seed=args.seed)
    prompt = torch.randn(1, 5, config["text_dim"], generator=torch.Generator().manual_seed(1))
    noise = torch.randn(1, args.num_frames, config["in_dim"], 6, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with memrope.attach(pipeline) as attachment:  # the one call
            latents = pipeline.inference(noise, prompt)
            print(f"generated latents {list(latents.shape)} with the MemRoPE cache:")
            print(attachment.cache)
        upstream = pipeline.inference(noise, prompt)  # detached: the pipeline's own cache again
    print(f"max difference to the upstream sink + sliding-window cache: {(latents - upstream).abs().max():.3g}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="stand-in pipeline instead of Self-Forcing (CPU)")
    parser.add_argument("--config", default="configs/self_forcing_dmd.yaml")
    parser.add_argument("--checkpoint", default="checkpoints/self_forcing_dmd.pt")
    parser.add_argument("--prompt", default="a red fox running through snow")
    parser.add_argument("--num-frames", type=int, default=240, help="latent frames, a multiple of 3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="memrope_upstream.mp4")
    args = parser.parse_args(argv)
    if args.tiny:
        run_tiny(args)
    else:
        run_upstream(args)


if __name__ == "__main__":
    main()

"""Make an existing Self-Forcing (or LongLive, or official MemRoPE) pipeline generate with MemRoPE.

One call, `memrope.attach(pipeline)`, replaces the pipeline's growing/sliding KV cache with a
fixed-size MemRoPE cache (sink + 2 EMA memory frames + recent + chunk, keys re-roped on the fly),
sharing the model's weights (nothing is copied). Leaving the `with` block restores the pipeline.

With the Self-Forcing repository (github.com/guandeh17/Self-Forcing, its requirements installed)
and its checkpoint, from inside that repository:

    python /path/to/memrope/examples/wrap_upstream_pipeline.py \
        --config configs/self_forcing_dmd.yaml --checkpoint checkpoints/self_forcing_dmd.pt \
        --prompt "a red fox running through snow" --num-frames 240 --output fox.mp4

The checkout is the working directory (or `--upstream DIR`: the script then runs from DIR, as
Self-Forcing's own code opens files relative to it; paths you give stay relative to where you
are). It runs on `--device` (default: cuda if available, else cpu) in `--dtype` (default: bfloat16
on CUDA, float32 on the CPU, where upstream's norms need it). The latent size comes from the
config (`latent_channels`, `latent_h`, `latent_w`; default 16 x 60 x 104, Wan 2.1 at 480p).

Without it, on any machine in seconds: --tiny builds small stand-ins of the same classes
(`memrope.testing.upstream`: same module tree, call signatures and cache-list protocol).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

import memrope
from memrope.devices import default_device
from memrope.loading import load_wan_weights
from memrope.video import Mp4Writer

FPS = 16
DEFAULT_CONFIG = "configs/self_forcing_dmd.yaml"
DEFAULT_CHECKPOINT = "checkpoints/self_forcing_dmd.pt"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
LATENT_DEFAULTS = {"latent_channels": 16, "latent_h": 60, "latent_w": 104}  # Wan 2.1 at 480p


def use_checkout(upstream: Path) -> None:
    """Import Self-Forcing's packages (``pipeline``, ``utils``, ...) from ``upstream`` and run from there."""
    if not (upstream / "pipeline").is_dir():
        raise SystemExit(
            f"{upstream} is not a Self-Forcing checkout (no pipeline/ package): run this script from inside "
            "one, or pass --upstream /path/to/Self-Forcing (or --tiny for the stand-ins)"
        )
    sys.path.insert(0, str(upstream))
    os.chdir(upstream)


def self_forcing_pipeline(
    config_path: Path, checkpoint: Path, device: torch.device, dtype: torch.dtype
) -> tuple[Any, Any]:
    """``(pipeline, config)`` exactly as Self-Forcing's inference.py builds them (run from its checkout)."""
    from omegaconf import OmegaConf
    from pipeline import CausalInferencePipeline  # Self-Forcing's own package

    config = OmegaConf.merge(OmegaConf.load("configs/default_config.yaml"), OmegaConf.load(config_path))
    pipeline = CausalInferencePipeline(config, device=device)
    # memrope's loader: weights_only=True, EMA weights, FSDP/wrapper prefixes handled, strict keys
    load_wan_weights(pipeline.generator.model, checkpoint, use_ema=True)
    pipeline = pipeline.to(dtype=dtype)
    for part in (pipeline.text_encoder, pipeline.generator, pipeline.vae):
        part.to(device=device)
    return pipeline, config


def run_upstream(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    # upstream's float32 LayerNorms with bfloat16 weights run on CUDA only
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    upstream = Path(args.upstream).resolve()
    # given paths are relative to where you are, the defaults to the checkout
    config_path = Path(args.config).resolve() if args.config else upstream / DEFAULT_CONFIG
    checkpoint = Path(args.checkpoint).resolve() if args.checkpoint else upstream / DEFAULT_CHECKPOINT
    output = Path(args.output).resolve()
    use_checkout(upstream)
    pipeline, config = self_forcing_pipeline(config_path, checkpoint, device, dtype)
    latent_shape = [getattr(config, name, default) for name, default in LATENT_DEFAULTS.items()]
    generator = torch.Generator("cpu").manual_seed(args.seed)
    noise = torch.randn([1, args.num_frames, *latent_shape], generator=generator).to(device, dtype)
    with memrope.attach(pipeline) as attachment, torch.no_grad():  # the one call
        video = pipeline.inference(noise=noise, text_prompts=[args.prompt])  # [1, T, 3, H, W] in [0, 1]
        print(attachment.cache)
    with Mp4Writer(output, fps=FPS) as writer:
        writer.write((video[0] * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    print(f"wrote {output} ({video.shape[1]} frames, on {device} in {str(dtype).removeprefix('torch.')})")


def run_tiny(args: argparse.Namespace) -> None:
    from memrope.testing.upstream import SMALL_MODEL, build_pipeline

    config = SMALL_MODEL
    pipeline = build_pipeline("self_forcing", config, chunk_frames=3, latent_hw=(6, 8), seed=args.seed)
    prompt = torch.randn(1, 5, config["text_dim"], generator=torch.Generator().manual_seed(1))
    noise = torch.randn(
        1, args.num_frames, config["in_dim"], 6, 8, generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():  # the same seed for the noise of the denoising steps: only the caches differ
        with memrope.attach(pipeline) as attachment:  # the one call
            latents = pipeline.inference(noise, prompt, generator=torch.Generator().manual_seed(3))
            print(f"generated latents {list(latents.shape)} with the MemRoPE cache:")
            print(attachment.cache)
        # detached: the pipeline's own cache again
        upstream = pipeline.inference(noise, prompt, generator=torch.Generator().manual_seed(3))
    print(
        f"max difference to the upstream sink + sliding-window cache: {(latents - upstream).abs().max():.3g}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="stand-in pipeline instead of Self-Forcing (CPU)")
    parser.add_argument("--config", help=f"Self-Forcing config (default: <upstream>/{DEFAULT_CONFIG})")
    parser.add_argument(
        "--checkpoint", help=f"Self-Forcing checkpoint (default: <upstream>/{DEFAULT_CHECKPOINT})"
    )
    parser.add_argument("--prompt", default="a red fox running through snow")
    parser.add_argument("--num-frames", type=int, default=240, help="latent frames, a multiple of 3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="memrope_upstream.mp4")
    parser.add_argument(
        "--upstream", default=".", help="the Self-Forcing checkout (default: the working directory)"
    )
    parser.add_argument(
        "--device", default=str(default_device()), help="cpu, cuda, cuda:1, ... (default: %(default)s)"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="default: bfloat16 on CUDA, float32 on the CPU"
    )
    args = parser.parse_args(argv)
    try:
        torch.device(args.device)
    except RuntimeError:
        parser.error(f"unknown --device {args.device!r}; use cpu, cuda or cuda:N")
    if args.tiny:
        run_tiny(args)
    else:
        run_upstream(args)


if __name__ == "__main__":
    main()

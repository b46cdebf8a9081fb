"""Generate a 60 s video from the official Hub checkpoints, streaming chunk by chunk to an mp4.

Self-Forcing or LongLive (Wan2.1-T2V-1.3B), the paper's MemRoPE cache (12 latent frames whatever
the length), umT5-XXL and the Wan VAE from Wan-AI/Wan2.1-T2V-1.3B-Diffusers. Memory stays constant:
each chunk is decoded (the VAE keeps its causal context, so there are no seams) and written as soon
as it is generated. On a GPU (about 20 GB, see `memrope presets`):

    pip install "memrope[text,vae,video]"
    python examples/generate_60s.py --model self-forcing --prompt "a red fox running through snow"

On any machine, in seconds, with the built-in tiny model (random weights, no download):

    python examples/generate_60s.py --tiny --output fox.mp4
"""

from __future__ import annotations

import argparse
import time

import torch

from memrope import components
from memrope.presets import FPS, get_preset
from memrope.video import Mp4Writer, to_uint8
from memrope.video_lengths import latent_frames_at_least


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["self-forcing", "longlive"], default="self-forcing")
    parser.add_argument(
        "--tiny", action="store_true", help="the built-in tiny model instead (CPU, no download)"
    )
    parser.add_argument("--prompt", default="a red fox running through snow, cinematic, golden hour")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="memrope_60s.mp4")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)

    preset = get_preset("tiny" if args.tiny else f"{args.model}-60s")
    device = components.default_device() if args.device is None else torch.device(args.device)
    # the shortest whole-chunk video at least this long (60 s -> 243 latent frames, 969 frames at 16 fps)
    num_frames = latent_frames_at_least(args.seconds, chunk_frames=preset.cache.chunk_frames)

    # 1. the prompt, then free the text encoder (umT5-XXL is 10.6 GiB in bf16) before the DiT loads
    encoder = components.load_text_encoder(preset, device=device)
    prompt = encoder.encode([args.prompt]).cpu()
    del encoder
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 2. the DiT (downloaded once into the Hugging Face cache), the streaming decoder, the pipeline
    model = components.load_model(preset, device=device)
    decoder = components.load_decoder(preset, device=device)
    pipeline = components.make_pipeline(preset, model, decoder=decoder)

    # 3. generate chunk by chunk; each chunk is decoded and appended to the mp4 as it arrives
    started = time.perf_counter()
    chunks = pipeline.stream(prompt, num_frames=num_frames, seed=args.seed, latent_hw=preset.latent_hw)
    with Mp4Writer(args.output, fps=FPS) as writer:
        for chunk in chunks:
            assert chunk.frames is not None  # a decoder is attached
            writer.write(to_uint8(chunk.frames[0]))
            done = chunk.start_frame + chunk.latents.shape[1]
            print(f"\rlatent frame {done}/{num_frames}, {writer.frames_written / FPS:.1f} s of video", end="")
    elapsed = time.perf_counter() - started
    print(f"\nwrote {args.output}: {writer.frames_written} frames in {elapsed:.1f} s")
    assert pipeline.cache is not None
    print(pipeline.cache.summary())


if __name__ == "__main__":
    main()

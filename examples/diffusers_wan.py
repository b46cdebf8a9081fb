"""Generate unbounded video with a stock diffusers `WanTransformer3DModel` and a fixed-size MemRoPE cache.

`memrope.attach(transformer)` installs memrope's attention processors on the diffusers transformer
(un-roped keys/values in a `MemRoPECache`, slot-relative RoPE, diffusers' attention dispatcher so
`transformer.set_attention_backend(...)` still applies) and returns the model memrope's pipeline
drives chunk by chunk. Leaving the `with` block restores the transformer exactly.

The transformer is either a diffusers-layout folder or Hub id holding a *causal* Wan DiT
(`--transformer`, e.g. Self-Forcing converted with `memrope convert --to diffusers`), or the
Self-Forcing checkpoint converted on the fly (the default). On a GPU:

    pip install "memrope[text,vae,video,diffusers]"
    python examples/diffusers_wan.py --prompt "a red fox running through snow" --seconds 30

On any machine, in seconds, with the built-in tiny model (random weights, no download): --tiny. It
also runs memrope's own DiT on the same weights and prints the largest difference.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import WanTransformer3DModel

import memrope
from memrope import components
from memrope.adapters.diffusers_wan import diffusers_transformer
from memrope.presets import FPS, get_preset
from memrope.video import Mp4Writer, to_uint8
from memrope.video_lengths import latent_frames_at_least


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny model (CPU, no download)")
    parser.add_argument(
        "--transformer",
        metavar="SOURCE",
        help="a diffusers-layout folder or Hub id of a causal Wan transformer (default: Self-Forcing, converted)",
    )
    parser.add_argument("--prompt", default="a red fox running through snow, cinematic, golden hour")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="memrope_diffusers.mp4")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)

    preset = get_preset("tiny" if args.tiny else "self-forcing-60s")
    device = components.default_device() if args.device is None else torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    num_frames = latent_frames_at_least(args.seconds, chunk_frames=preset.cache.chunk_frames)

    # 1. the prompt, then free the text encoder before the DiT loads
    encoder = components.load_text_encoder(preset, device=device)
    prompt = encoder.encode([args.prompt]).cpu()
    del encoder

    # 2. a diffusers WanTransformer3DModel: from a diffusers folder / Hub id, or converted from the
    #    preset's checkpoint (the transformer then shares memrope's tensors: nothing is copied)
    reference = None
    if args.transformer is not None:
        transformer = WanTransformer3DModel.from_pretrained(args.transformer, torch_dtype=dtype).to(device)
    else:
        reference = components.load_model(preset, device=device, dtype=dtype)
        transformer = diffusers_transformer(reference)

    # 3. attach memrope and generate chunk by chunk, decoding and writing each chunk as it arrives
    decoder = components.load_decoder(preset, device=device)
    with memrope.attach(transformer, preset.cache, text_len=preset.model_config.text_len) as dit:
        pipeline = components.make_pipeline(preset, dit, decoder=decoder, device=device, dtype=dtype)
        started = time.perf_counter()
        latents = []
        chunks = pipeline.stream(prompt, num_frames=num_frames, seed=args.seed, latent_hw=preset.latent_hw)
        with Mp4Writer(args.output, fps=FPS) as writer:
            for chunk in chunks:
                assert chunk.frames is not None  # a decoder is attached
                writer.write(to_uint8(chunk.frames[0]))
                latents.append(chunk.latents.cpu())
        elapsed = time.perf_counter() - started
        print(f"wrote {args.output}: {writer.frames_written} frames in {elapsed:.1f} s through diffusers")
        assert pipeline.cache is not None
        print(pipeline.cache.summary())

    if args.tiny and reference is not None:  # the same run through memrope's own DiT
        own = components.make_pipeline(preset, reference, device=device, dtype=dtype)
        expected = own.generate(prompt, num_frames=num_frames, seed=args.seed, latent_hw=preset.latent_hw)
        difference = (torch.cat(latents, dim=1) - expected.cpu()).abs().max().item()
        print(f"max difference to memrope's own DiT: {difference:.2e}")


if __name__ == "__main__":
    main()

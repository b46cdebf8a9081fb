"""Split the DiT over two GPUs, as the official 2-GPU mode does, for GPUs with less memory.

The embeddings and blocks 0-14 go on the first device; blocks 15-29, the head and the VAE on the
second; each layer's MemRoPE cache lives beside its block (it is never copied between devices), and
the text encoder visits the first GPU only while it encodes the prompt. On two GPUs:

    pip install "memrope[text,vae,video]"
    python examples/two_gpu_split.py --devices cuda:0,cuda:1 --prompt "a red fox running through snow"

On any machine, in seconds, with the built-in tiny model split over two CPU "devices" (it also
checks that the split video equals the single-device one):

    python examples/two_gpu_split.py --tiny
"""

from __future__ import annotations

import argparse

import torch

from memrope import components
from memrope.devices import plan_devices
from memrope.presets import FPS, get_preset
from memrope.video import Mp4Writer, to_uint8
from memrope.video_lengths import latent_frames_at_least


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny model over cpu,cpu")
    parser.add_argument("--model", choices=["self-forcing", "longlive"], default="self-forcing")
    parser.add_argument("--devices", default="cuda:0,cuda:1")
    parser.add_argument("--prompt", default="a red fox running through snow, cinematic")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="memrope_split.mp4")
    args = parser.parse_args(argv)

    preset = get_preset("tiny" if args.tiny else f"{args.model}-30s")
    devices = ["cpu", "cpu"] if args.tiny else args.devices.split(",")
    plan = plan_devices("split", devices, num_layers=preset.model_config.num_layers, offload=True)
    print(plan.describe())

    encoder = components.load_text_encoder(
        preset, device=plan.text_encoder_device, offload=plan.offload_text_encoder
    )
    prompt = encoder.encode([args.prompt]).cpu()
    del encoder
    model = components.load_model(preset, placement=plan)
    decoder = components.load_decoder(preset, device=plan.vae_device, offload=plan.offload_vae)
    pipeline = components.make_pipeline(preset, model, device=plan.primary_device, decoder=decoder)

    num_frames = latent_frames_at_least(args.seconds, chunk_frames=preset.cache.chunk_frames)
    chunks = pipeline.stream(prompt, num_frames=num_frames, seed=args.seed, latent_hw=preset.latent_hw)
    latents = []
    with Mp4Writer(args.output, fps=FPS) as writer:
        for chunk in chunks:
            assert chunk.frames is not None
            writer.write(to_uint8(chunk.frames[0]))
            latents.append(chunk.latents.cpu())
    assert pipeline.cache is not None
    cache_devices = sorted({str(device) for device in pipeline.cache.layer_devices})
    print(f"wrote {args.output} ({writer.frames_written} frames); layer caches on {cache_devices}")
    for device in dict.fromkeys(plan.devices):
        if device.type == "cuda":
            print(f"{device}: peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")

    if args.tiny:  # the split must not change the video
        single = components.make_pipeline(preset, components.load_model(preset, device="cpu"))
        reference = single.generate(prompt, num_frames=num_frames, seed=args.seed, latent_hw=preset.latent_hw)
        identical = torch.equal(torch.cat(latents, dim=1), reference)
        print(f"identical to the single-device video: {identical}")


if __name__ == "__main__":
    main()

"""Interactive (multi-prompt) generation as in LongLive: switch prompts at given frames.

At each switch the cross-attention context is recomputed for the new prompt and the frames of the
cache window after the sink are re-encoded under it (KV re-cache), while the sink and the memory
tokens keep the past. Frames before a switch are exactly those of a run without it. On a GPU:

    pip install "memrope[text,vae,video]"
    python examples/prompt_schedule.py --output cat.mp4

On any machine, in seconds, with the built-in tiny model:

    python examples/prompt_schedule.py --tiny --output cat.mp4

As with ``memrope generate``, ``--seconds S`` makes the shortest whole-chunk video at least ``S`` s
long, and a switch whose start falls inside a chunk happens at the next chunk boundary ("10s" is
latent frame 40, so the switch is at 42 with chunks of 3).
"""

from __future__ import annotations

import argparse

from memrope import components
from memrope.presets import FPS, get_preset
from memrope.prompt_schedule import latent_frames_at_least, parse_prompt_schedule, video_seconds
from memrope.video import Mp4Writer, to_uint8

STORY = (
    "0: a grey cat sleeps on a sunny windowsill, photorealistic;"
    "10s: the grey cat wakes up and stretches on the windowsill;"
    "20s: the grey cat jumps down from the windowsill onto a wooden floor"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny model (CPU, no download)")
    parser.add_argument(
        "--schedule", default=STORY, help="START:PROMPT entries separated by ';' (START: frame or 10s)"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="at least this long (whole chunks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="memrope_schedule.mp4")
    args = parser.parse_args(argv)

    preset = get_preset("tiny" if args.tiny else "longlive-30s")
    device = components.default_device()
    num_frames = latent_frames_at_least(args.seconds, chunk_frames=preset.chunk_frames)
    schedule = parse_prompt_schedule(args.schedule, chunk_frames=preset.chunk_frames, num_frames=num_frames)

    encoder = components.load_text_encoder(preset, device=device)
    embeds = [encoder.encode([entry.prompt]).cpu() for entry in schedule]
    del encoder
    model = components.load_model(preset, device=device)
    pipeline = components.make_pipeline(preset, model, decoder=components.load_decoder(preset, device=device))

    # the first prompt is text_embeds; every later one is a (latent frame, embeddings) switch
    switches = [(entry.frame, embedding) for entry, embedding in zip(schedule[1:], embeds[1:])]
    chunks = pipeline.stream(
        embeds[0], num_frames=num_frames, seed=args.seed, latent_hw=preset.latent_hw, prompt_switches=switches
    )
    with Mp4Writer(args.output, fps=FPS) as writer:
        for chunk in chunks:
            in_force = [entry.prompt for entry in schedule if entry.frame <= chunk.start_frame][-1]
            if chunk.start_frame in {entry.frame for entry in schedule}:
                print(f"latent frame {chunk.start_frame}: {in_force!r}")
            assert chunk.frames is not None
            writer.write(to_uint8(chunk.frames[0]))
    assert pipeline.cache is not None
    print(
        f"wrote {args.output} ({writer.frames_written} frames, {num_frames} latent, {video_seconds(num_frames):.2f} s)"
    )
    print(pipeline.cache.summary())  # still 12 frames: switches never grow the cache


if __name__ == "__main__":
    main()

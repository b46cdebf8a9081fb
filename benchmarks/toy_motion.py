"""How far the toy model moves its objects: one step ahead of the world's own frames, and in its own rollout.

The world (:mod:`memrope.toy.world`) is deterministic: from its first frames there is one true
continuation, and each object steps 1 native pixel to the right per latent frame, wrapping round.
For each latent frame ``k`` after the given ones, this measures how far the model moves each of the
first frame's moving objects along the direction the world moves it there:

* ``one step``: the model draws frame ``k`` from the world's frames ``0..k-1`` (the pipeline run with
  ``initial_latents`` = those frames): what it learnt, without its own errors;
* ``rollout``: frame ``k`` of its free rollout from the given frames (the README's main job): what
  its own frames do to that;

with ``held`` (the share of the first frame's objects still a compact blob of their colour with 0.5x
to 2x its pixels, as ``benchmarks/toy_drift.py`` counts them) and ``on track`` (held and within 2
pixels of where the world puts it) in the rollout. Everything goes through the real pipeline
(:func:`memrope.components.make_pipeline`, the toy preset's sampler), measured on the world frames
the latents code (:func:`memrope.toy.world.measure_frames`; centroids are exact up to a tenth of
a pixel on the world's own frames).

Run: ``python benchmarks/toy_motion.py [--weights FILE] [--batch 16] [--frames 12] [--threads 2]
[--json FILE]``: a table per latent frame, and the means over the generated frames.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from toy_drift import first_frame_objects, objects_held, toy_pipeline

from memrope.toy import TOY_GIVEN_FRAMES, TOY_LATENT_FRAMES
from memrope.toy.world import FrameMeasure, latents_to_frames, measure_frames, world_latents, wrapped_offset

ON_TRACK_PIXELS = 2.0


def _measure(latents: torch.Tensor) -> FrameMeasure:
    return measure_frames(latents_to_frames(latents.float()))


def step_along_world(
    drawn: torch.Tensor, before: torch.Tensor, truth: FrameMeasure, frame: int
) -> torch.Tensor:
    """Step ``[B, 6]`` of each colour from centroids ``before`` to ``drawn`` (``[B, 6, 2]``) along the
    direction the world moves it into ``frame`` (NaN where a colour is missing; columns the short way
    round the wrap)."""
    world_step = wrapped_offset(truth.centroids[:, frame], truth.centroids[:, frame - 1])
    unit = world_step / world_step.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    return (wrapped_offset(drawn, before) * unit).sum(dim=-1)


def measure_motion(
    weights: str | None, batch: int, frames: int, seed: int, noise_seed: int
) -> dict[str, object]:
    """Per generated latent frame: the world's step, the model's step one ahead and in its rollout
    (px along the world's direction), and the rollout's held and on-track shares."""
    preset, pipeline, text = toy_pipeline(weights, batch)
    world = world_latents(seed, frames, batch)
    truth = _measure(world)
    first = first_frame_objects(truth.counts[:, 0], truth.fill[:, 0])  # [B, 6]

    def run(given: int, length: int) -> torch.Tensor:
        chunks = pipeline.stream(
            text,
            num_frames=length,
            seed=noise_seed,
            initial_latents=world[:, :given],
            latent_hw=preset.latent_hw,
        )
        return torch.cat([chunk.latents for chunk in chunks], dim=1)

    with torch.no_grad():
        rollout = _measure(run(TOY_GIVEN_FRAMES, frames))
        rows = []
        for frame in range(TOY_GIVEN_FRAMES, frames):
            world_step = wrapped_offset(truth.centroids[:, frame], truth.centroids[:, frame - 1]).norm(dim=-1)
            moving = first & (world_step > 0.5)
            one_ahead = _measure(run(frame, frame + 1)).centroids[:, frame]
            ahead = step_along_world(one_ahead, truth.centroids[:, frame - 1], truth, frame)
            free = step_along_world(
                rollout.centroids[:, frame], rollout.centroids[:, frame - 1], truth, frame
            )
            held = objects_held(first, truth.counts[:, 0], rollout.counts[:, frame], rollout.fill[:, frame])
            off_track = wrapped_offset(rollout.centroids[:, frame], truth.centroids[:, frame]).norm(dim=-1)
            rows.append(
                {
                    "frame": frame,
                    "world_step": float(world_step[moving].mean()),
                    "one_step": float(torch.nanmean(ahead[moving])),
                    "rollout": float(torch.nanmean(free[moving & held]))
                    if bool((moving & held).any())
                    else None,
                    "held": float(held.sum() / first.sum()),
                    "on_track": float((held & (off_track < ON_TRACK_PIXELS)).sum() / first.sum()),
                }
            )
    return {
        "weights": weights or "shipped",
        "batch": batch,
        "seed": seed,
        "noise_seed": noise_seed,
        "frames": rows,
    }


def _cell(value: object) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--weights", default=None, help="a toy checkpoint (default: the shipped one)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--frames", type=int, default=TOY_LATENT_FRAMES, help="latent frames (the trained 12)"
    )
    parser.add_argument("--seed", type=int, default=0, help="world scenes")
    parser.add_argument("--noise-seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.frames <= TOY_GIVEN_FRAMES:
        parser.error(f"--frames must exceed the {TOY_GIVEN_FRAMES} given frames, got {args.frames}")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = measure_motion(args.weights, args.batch, args.frames, args.seed, args.noise_seed)
    result["seconds"] = round(time.perf_counter() - started, 1)
    rows = result["frames"]
    assert isinstance(rows, list)
    print(f"{'frame':>5} {'world':>6} {'one step':>9} {'rollout':>8} {'held':>5} {'on track':>8}")
    for row in rows:
        print(
            f"{row['frame']:>5} {row['world_step']:>6.2f} {row['one_step']:>9.2f} {_cell(row['rollout']):>8} "
            f"{row['held']:>5.2f} {row['on_track']:>8.2f}"
        )
    mean = {name: sum(row[name] for row in rows) / len(rows) for name in ("world_step", "one_step")}
    print(
        f"mean  {mean['world_step']:>6.2f} {mean['one_step']:>9.2f}   (px per latent frame along the world's "
        f"direction; {args.batch} videos of world seed {args.seed}, {args.threads} threads, {result['seconds']} s)"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

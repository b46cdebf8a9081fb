"""Drift of long toy rollouts under the ``memrope``, ``sink`` and ``full`` cache policies.

The toy model (``--model toy``, :mod:`memrope.toy`) is rolled out for many chunks (of one latent
frame, 4 video frames: the toy generates frame by frame) through the real
pipeline (:func:`memrope.components.make_pipeline`, the toy preset's sampler), one batch of videos
per policy, from the world's first frames, and every latent frame is measured with the synthetic world's exact measure
(:func:`memrope.toy.world.measure_frames` on the world frames the latents code):

* ``background``: mean absolute error of the background pixels against the world's fixed background
  (the world's own frames score ~0.01, uniform noise ~0.5);
* ``histogram``: L1 distance between the frame's palette-colour histogram (share of pixels of each
  of the six object colours) and the first frame's (identity of the colours present);
* ``objects``: share of the first frame's objects (colours covering at least ``MIN_PIXELS`` pixels as
  a compact blob, fill ratio >= ``MIN_FILL``) still present as a compact blob with 0.5x-2x their
  first-frame pixel count (an object that fades, melts, smears or doubles fails);
* ``spurious``: colours absent from the first frame that now cover ``MIN_PIXELS`` pixels;
* ``shape``: mean absolute change of the kept objects' fill ratio (pixels / bounding box: circle
  0.79, square 1.0, triangle 0.5) from the first frame;
* ``speed``: mean centroid speed of the kept objects in native pixels per video frame (the world
  moves them 0.25 to the right; 0 means frozen);
* ``track``: mean distance (native pixels) between the kept objects' centroids and where the world
  itself puts them (the world is deterministic: the video the given first frames start has one true
  continuation), a measure of the motion, which grows as small velocity errors add up.

Output: a table (printed, and ``--json``) of each measure averaged over windows of chunks, and one
PNG per policy (``docs/toy_drift_<policy>.png``). ``full`` keeps every frame at its global RoPE
position, so it runs at most ``--full-chunks`` chunks (its attention grows with the video; the RoPE
table holds ``max_positions`` = 1024 frames).

Run: ``python benchmarks/toy_drift.py [--chunks 600] [--batch 4] [--full-chunks 200]
[--weights FILE] [--json benchmarks/results/toy_drift.json] [--plots docs]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

import torch

from memrope import components
from memrope.config import MemRoPEConfig
from memrope.pipeline import CausalInferencePipeline
from memrope.presets import Preset, get_preset
from memrope.toy import TOY_LATENT_FRAMES
from memrope.toy.world import (
    TEMPORAL_FACTOR,
    latents_to_frames,
    measure_frames,
    render_frames,
    sample_scene,
    wrapped_offset,
)

MIN_PIXELS = 10
# a compact blob (the triangle's 0.5 is the lowest shape); scattered noise pixels fill far less
MIN_FILL = 0.35
POLICIES = ("memrope", "sink", "full")
MEASURES = ("background", "histogram", "objects", "spurious", "shape", "speed", "track")
PROMPT = "coloured shapes drifting"


def cache_for(policy: str) -> MemRoPEConfig:
    """The toy preset's cache with ``policy`` (the same 12 frames, sink and 1-frame chunks for the bounded ones)."""
    return dataclasses.replace(get_preset("toy").cache, policy=policy)


def toy_pipeline(
    weights: str | None, batch: int, cache: MemRoPEConfig | None = None
) -> tuple[Preset, CausalInferencePipeline, torch.Tensor]:
    """The toy preset, its pipeline on the CPU (``weights``: a checkpoint, ``None`` the shipped one;
    ``cache``: another cache than the preset's) and the text embeddings of ``batch`` videos of :data:`PROMPT`."""
    preset = get_preset("toy")
    model = components.load_model(preset, checkpoint=weights, device="cpu")
    pipeline = components.make_pipeline(preset, model, cache=cache)
    text = components.load_text_encoder(preset).encode([PROMPT] * batch)
    return preset, pipeline, text


def rollout(policy: str, frames: int, batch: int, weights: str | None, seed: int) -> dict[str, list[float]]:
    """Per-latent-frame measures (batch means) of one rollout of ``frames`` latent frames."""
    preset, pipeline, text = toy_pipeline(weights, batch, cache=cache_for(policy))
    first = components.make_initial_latents(preset, seed=seed, batch_size=batch)  # the world's first frames
    stream = pipeline.stream(text, num_frames=frames, seed=seed, initial_latents=first)
    scenes = sample_scene(seed, batch)  # the scenes of the given first frames
    series: dict[str, list[float]] = {name: [] for name in MEASURES}
    reference: dict[str, torch.Tensor] = {}
    previous: torch.Tensor | None = None  # centroids [B, 6, 2] of the frame before
    with torch.no_grad():
        for result in stream:
            for offset in range(result.latents.shape[1]):
                image = latents_to_frames(result.latents[:, offset : offset + 1].float())  # [B, 1, 3, H, W]
                measure = measure_frames(image)
                counts = measure.counts[:, 0]  # [B, 6]
                histogram = counts / (image.shape[-1] * image.shape[-2])
                fill = measure.fill[:, 0]
                centroids = measure.centroids[:, 0]
                if not reference:
                    reference = {"counts": counts, "histogram": histogram, "fill": fill}
                present = first_frame_objects(reference["counts"], reference["fill"])
                kept = objects_held(present, reference["counts"], counts, fill)
                series["background"].append(float(measure.background_error.mean()))
                series["histogram"].append(
                    float((histogram - reference["histogram"]).abs().sum(dim=1).mean())
                )
                series["objects"].append(float((kept.sum(1) / present.sum(1).clamp(min=1)).mean()))
                series["spurious"].append(float(((~present) & (counts >= MIN_PIXELS)).sum(1).float().mean()))
                series["shape"].append(_masked_mean((fill - reference["fill"]).abs(), kept))
                # latent frames are 4 video frames apart: pixels per video frame
                speed = (
                    math.nan * centroids[..., 0]
                    if previous is None
                    else wrapped_offset(centroids, previous).norm(dim=-1)
                )
                series["speed"].append(_masked_mean(speed / TEMPORAL_FACTOR, kept))
                previous = centroids
                time = TEMPORAL_FACTOR * (result.start_frame + offset)
                truth = measure_frames(render_frames(scenes, torch.tensor([time]))).centroids[:, 0]
                series["track"].append(_masked_mean(wrapped_offset(centroids, truth).norm(dim=-1), kept))
    return series


def first_frame_objects(counts: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """The first frame's objects ``[B, 6]``: colours covering ``MIN_PIXELS`` as a compact blob, from
    that frame's pixel ``counts`` and ``fill`` ``[B, 6]``."""
    return (counts >= MIN_PIXELS) & (fill >= MIN_FILL)


def objects_held(
    objects: torch.Tensor, first_counts: torch.Tensor, counts: torch.Tensor, fill: torch.Tensor
) -> torch.Tensor:
    """Which of the first frame's ``objects`` ``[B, 6]`` a frame still shows as a compact blob of their
    colour with 0.5x-2x their first-frame pixels (``first_counts``; the frame's ``counts``, ``fill``)."""
    ratio = counts / first_counts.clamp(min=1)
    return objects & (ratio >= 0.5) & (ratio <= 2.0) & (fill >= MIN_FILL)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    chosen = values[mask & torch.isfinite(values)]
    return float(chosen.mean()) if chosen.numel() else math.nan


def windows(frames: int) -> list[tuple[int, int]]:
    """Latent-frame windows of the table: the trained length, then growing spans up to ``frames``."""
    trained = TOY_LATENT_FRAMES
    bounds = [0, trained, 4 * trained, 12 * trained, 40 * trained, 125 * trained]
    return [(low, min(high, frames)) for low, high in itertools.pairwise(bounds) if low < frames]


def summarise(series: dict[str, list[float]], spans: list[tuple[int, int]]) -> list[dict[str, float | str]]:
    rows: list[dict[str, float | str]] = []
    for low, high in spans:
        row: dict[str, float | str] = {"chunks": f"{low}-{high - 1}"}
        for name in MEASURES:
            values = [value for value in series[name][low:high] if math.isfinite(value)]
            row[name] = round(sum(values) / len(values), 4) if values else math.nan
        rows.append(row)
    return rows


def plot(policy: str, series: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 4, figsize=(14, 5.5), sharex=True)
    for axis, name in zip(axes.flat, MEASURES):
        axis.plot(range(len(series[name])), series[name], linewidth=1)
        axis.axvline(TOY_LATENT_FRAMES - 0.5, color="grey", linestyle=":", linewidth=1)
        axis.set_title(name)
        axis.set_xscale("symlog", linthresh=10)
    for axis in axes[-1]:
        axis.set_xlabel("chunk (1 latent frame = 4 video frames)")
    for axis in list(axes.flat)[len(MEASURES) :]:
        axis.set_visible(False)
    axes.flat[2].set_ylim(-0.05, 1.05)
    figure.suptitle(
        f"toy model, {policy} cache: drift over {len(series['background'])} chunks (dotted: trained length)"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=600)
    parser.add_argument("--full-chunks", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--weights", default=None, help="toy DiT weights (default: the packaged file)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plots", type=Path, default=Path("docs"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, object] = {
        "chunks": args.chunks,
        "batch": args.batch,
        "seed": args.seed,
        "policies": {},
    }
    for policy in args.policies:
        chunks = min(args.chunks, args.full_chunks) if policy == "full" else args.chunks
        started = time.perf_counter()
        series = rollout(policy, chunks, args.batch, args.weights, args.seed)
        seconds = time.perf_counter() - started
        rows = summarise(series, windows(chunks))
        report["policies"][policy] = {"seconds": round(seconds, 1), "table": rows, "series": series}  # type: ignore[index]
        if args.plots:
            plot(policy, series, args.plots / f"toy_drift_{policy}.png")
        print(f"\n{policy} ({chunks} chunks x {args.batch} videos, {seconds:.0f} s)")
        print("  ".join(f"{name:>10}" for name in ("chunks", *MEASURES)))
        for row in rows:
            print("  ".join(f"{row[name]:>10}" for name in ("chunks", *MEASURES)))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

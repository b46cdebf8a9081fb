"""Drift of long toy rollouts under the ``memrope``, ``sink`` and ``full`` cache policies.

The toy model (``--model toy``, :mod:`memrope.toy`) is rolled out for many chunks through the real
pipeline (:func:`memrope.components.make_pipeline`, the toy preset's sampler), one batch of videos
per policy, and every chunk is measured with the synthetic world's exact measure
(:func:`memrope.toy.world.measure_frames` on the world frames the latents code):

* ``background``: mean absolute error of the background pixels against the world's fixed background
  (the world's own frames score ~0.01, uniform noise ~0.5);
* ``histogram``: L1 distance between the chunk's palette-colour histogram (share of pixels of each
  of the six object colours) and the first chunk's (identity of the colours present);
* ``objects``: share of the first chunk's objects (colours covering at least ``MIN_PIXELS`` pixels as
  a compact blob, fill ratio >= ``MIN_FILL``) still present as a compact blob with 0.5x-2x their
  first-chunk pixel count (an object that fades, melts, smears or doubles fails);
* ``spurious``: colours absent from the first chunk that now cover ``MIN_PIXELS`` pixels;
* ``shape``: mean absolute change of the kept objects' fill ratio (pixels / bounding box: circle
  0.79, square 1.0, triangle 0.5) from the first chunk;
* ``speed``: mean centroid speed of the kept objects in native pixels per video frame (the world
  moves them at 0.35-0.75; 0 means frozen).

Output: a table (printed, and ``--json``) of each measure averaged over windows of chunks, and one
PNG per policy (``docs/toy_drift_<policy>.png``). ``full`` keeps every frame at its global RoPE
position, so it runs at most ``--full-chunks`` chunks (its attention grows with the video; the RoPE
table holds ``max_positions`` = 1024 frames).

Run: ``python benchmarks/toy_drift.py [--chunks 300] [--batch 4] [--full-chunks 60]
[--weights FILE] [--json benchmarks/results/toy_drift.json] [--plots docs]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import torch

from memrope import components
from memrope.config import MemRoPEConfig
from memrope.presets import get_preset
from memrope.toy import TOY_LATENT_FRAMES
from memrope.toy.world import TEMPORAL_FACTOR, latents_to_frames, measure_frames

MIN_PIXELS = 10
# a compact blob (the triangle's 0.5 is the lowest shape); scattered noise pixels fill far less
MIN_FILL = 0.35
POLICIES = ("memrope", "sink", "full")
MEASURES = ("background", "histogram", "objects", "spurious", "shape", "speed")
PROMPT = "coloured shapes bouncing"


def cache_for(policy: str) -> MemRoPEConfig:
    """The toy preset's cache with ``policy`` (the same 12 frames and sink for the bounded ones)."""
    return MemRoPEConfig(policy=policy)


def rollout(policy: str, chunks: int, batch: int, weights: str | None, seed: int) -> dict[str, list[float]]:
    """Per-chunk measures (batch means) of one rollout of ``chunks`` chunks."""
    preset = get_preset("toy")
    model = components.load_model(preset, checkpoint=weights, device="cpu")
    pipeline = components.make_pipeline(preset, model, cache=cache_for(policy))
    encoder = components.load_text_encoder(preset)
    text = encoder.encode([PROMPT] * batch)
    chunk = preset.chunk_frames
    stream = pipeline.stream(text, num_frames=chunks * chunk, seed=seed, latent_hw=preset.latent_hw)
    series: dict[str, list[float]] = {name: [] for name in MEASURES}
    reference: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for result in stream:
            frames = latents_to_frames(result.latents.float())  # the world frames the latents code
            measure = measure_frames(frames)
            counts = measure.counts.mean(dim=1)  # [B, 6]
            pixels = frames.shape[-1] * frames.shape[-2]
            histogram = counts / pixels
            fill = measure.fill.nanmean(dim=1)
            if result.index == 0:
                reference = {"counts": counts, "histogram": histogram, "fill": fill}
            present = (reference["counts"] >= MIN_PIXELS) & (reference["fill"] >= MIN_FILL)
            ratio = counts / reference["counts"].clamp(min=1)
            kept = present & (ratio >= 0.5) & (ratio <= 2.0) & (fill >= MIN_FILL)
            series["background"].append(float(measure.background_error.mean()))
            series["histogram"].append(float((histogram - reference["histogram"]).abs().sum(dim=1).mean()))
            series["objects"].append(float((kept.sum(1) / present.sum(1).clamp(min=1)).mean()))
            series["spurious"].append(float(((~present) & (counts >= MIN_PIXELS)).sum(1).float().mean()))
            shape_change = (fill - reference["fill"]).abs()
            series["shape"].append(_masked_mean(shape_change, kept))
            # centroid steps between latent frames, 4 video frames apart: pixels per video frame
            steps = measure.centroids.diff(dim=1).norm(dim=-1).nanmean(dim=1) / TEMPORAL_FACTOR  # [B, 6]
            series["speed"].append(_masked_mean(steps, kept))
    return series


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    chosen = values[mask & torch.isfinite(values)]
    return float(chosen.mean()) if chosen.numel() else math.nan


def windows(chunks: int) -> list[tuple[int, int]]:
    """Chunk windows of the table: the trained length, then growing spans up to ``chunks``."""
    trained = TOY_LATENT_FRAMES // 3
    bounds = [0, trained, 4 * trained, 12 * trained, 40 * trained, 125 * trained]
    spans = [(low, min(high, chunks)) for low, high in itertools.pairwise(bounds) if low < chunks]
    return spans


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

    figure, axes = plt.subplots(2, 3, figsize=(11, 5.5), sharex=True)
    trained = TOY_LATENT_FRAMES // 3
    for axis, name in zip(axes.flat, MEASURES):
        axis.plot(range(len(series[name])), series[name], linewidth=1)
        axis.axvline(trained - 0.5, color="grey", linestyle=":", linewidth=1)
        axis.set_title(name)
        axis.set_xscale("symlog", linthresh=10)
    for axis in axes[-1]:
        axis.set_xlabel("chunk (3 latent frames = 12 video frames)")
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
    parser.add_argument("--chunks", type=int, default=300)
    parser.add_argument("--full-chunks", type=int, default=60)
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

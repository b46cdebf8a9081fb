"""End-to-end generation benchmark: chunks per second and memory as the video grows.

Runs :class:`memrope.pipeline.CausalInferencePipeline` (4 denoising steps + 1 cache refresh per
chunk, MemRoPE cache) on videos of 10, 100 and 1000 chunks and reports, per length:

* wall time and chunks per second (generation only; model building is not timed),
* the median time per chunk over the first and over the last 10% of the chunks: with a bounded
  cache the cost per chunk must stay flat as the video grows (the first chunks are a little cheaper:
  the cache is still filling),
* memory: the process RSS (``/proc/self/statm``) after the first 10% of chunks and at the end, and
  the peak RSS of the process so far (``resource.getrusage``, monotonic over the whole benchmark);
  on CUDA ``torch.cuda.max_memory_allocated`` per run and the allocated bytes at 10% / at the end.
  Memory must not grow with the length: chunks are streamed, nothing of earlier chunks is kept.
* the cache's resident bytes (``MemRoPECache.resident_bytes``).

Model: the built-in tiny model (``memrope.presets.tiny_model``, latents 16x24) by default; with
``--full-size`` the Wan2.1-1.3B shape with random weights at 480x832 (latents 60x104), meant for a
GPU. ``--decode`` also decodes every chunk (tiny decoder; with ``--full-size`` a randomly
initialised diffusers ``AutoencoderKLWan`` with the Wan2.1 VAE shape). A short untimed warm-up run
comes first.

Run: ``python benchmarks/bench_generate.py [--chunks 10 100 1000] [--device cpu|cuda]
[--dtype float32|bfloat16] [--full-size] [--decode] [--json benchmarks/results/generate.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from memrope.config import MemRoPEConfig
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.pipeline import CausalInferencePipeline
from memrope.presets import FPS, TINY_LATENT_HW, tiny_decoder, tiny_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIB = 1024**2


def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, tuple[int, int], Any]:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.full_size:
        config = WanConfig()
        torch.manual_seed(0)
        with torch.device(device):
            model = CausalWanModel(config)
        model = model.to(dtype).eval().requires_grad_(False)
        latent_hw = (60, 104)
        decoder = None
        if args.decode:
            from diffusers import AutoencoderKLWan

            from memrope.vae import WanVAEDecoder

            decoder = WanVAEDecoder(AutoencoderKLWan().to(device))
    else:
        model = tiny_model().to(device=device, dtype=dtype)
        latent_hw = TINY_LATENT_HW
        decoder = tiny_decoder() if args.decode else None
    return model, latent_hw, decoder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(
    pipeline: CausalInferencePipeline,
    text: torch.Tensor,
    latent_hw: tuple[int, int],
    decoder: Any,
    chunks: int,
    device: torch.device,
) -> dict[str, Any]:
    chunk_frames = pipeline.chunk_frames
    tenth = max(1, chunks // 10)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if decoder is not None:
        decoder.reset()
    times: list[float] = []
    rss_early = rss_late = 0
    cuda_early = cuda_late = None
    sync(device)
    started = time.perf_counter()
    previous = started
    stream = pipeline.stream(text, num_frames=chunks * chunk_frames, seed=0, latent_hw=latent_hw)
    for result in stream:
        if decoder is not None:
            decoder.decode_chunk(result.latents)
        sync(device)
        now = time.perf_counter()
        times.append(now - previous)
        previous = now
        if len(times) == tenth:
            rss_early = rss_bytes()
            cuda_early = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    wall = time.perf_counter() - started
    rss_late = rss_bytes()
    if device.type == "cuda":
        cuda_late = torch.cuda.memory_allocated(device)
    cache = pipeline._run.cache if pipeline._run is not None else None
    latent_frames = chunks * chunk_frames
    video_frames = 4 * (latent_frames - 1) + 1
    return {
        "chunks": chunks,
        "latent_frames": latent_frames,
        "video_frames": video_frames,
        "seconds_of_video": video_frames / FPS,
        "wall_seconds": wall,
        "chunks_per_second": chunks / wall,
        "first_10pct_ms_per_chunk": 1e3 * statistics.median(times[:tenth]),
        "last_10pct_ms_per_chunk": 1e3 * statistics.median(times[-tenth:]),
        "rss_after_first_10pct_bytes": rss_early,
        "rss_at_end_bytes": rss_late,
        "peak_rss_so_far_bytes": peak_rss_bytes(),
        "cuda_max_memory_allocated_bytes": (
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        ),
        "cuda_allocated_after_first_10pct_bytes": cuda_early,
        "cuda_allocated_at_end_bytes": cuda_late,
        "cache_resident_bytes": cache.resident_bytes() if cache is not None else None,
        "cache_slot_layout": cache.slot_layout() if cache is not None else None,
    }


def table(results: list[dict[str, Any]], on_cuda: bool) -> str:
    header = [
        "chunks",
        "latent",
        "video s",
        "wall s",
        "chunks/s",
        "ms/chunk first10%",
        "ms/chunk last10%",
        "RSS@10% MiB",
        "RSS end MiB",
        "peak RSS MiB",
        "cache MiB",
    ]
    if on_cuda:
        header += ["CUDA max MiB"]
    rows = [header]
    for r in results:
        row = [
            str(r["chunks"]),
            str(r["latent_frames"]),
            f"{r['seconds_of_video']:.1f}",
            f"{r['wall_seconds']:.2f}",
            f"{r['chunks_per_second']:.2f}",
            f"{r['first_10pct_ms_per_chunk']:.1f}",
            f"{r['last_10pct_ms_per_chunk']:.1f}",
            f"{r['rss_after_first_10pct_bytes'] / MIB:.1f}",
            f"{r['rss_at_end_bytes'] / MIB:.1f}",
            f"{r['peak_rss_so_far_bytes'] / MIB:.1f}",
            f"{(r['cache_resident_bytes'] or 0) / MIB:.2f}",
        ]
        if on_cuda:
            row.append(f"{r['cuda_max_memory_allocated_bytes'] / MIB:.0f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="default: bfloat16 with --full-size, else float32",
    )
    parser.add_argument("--policy", choices=("memrope", "sink"), default="memrope")
    parser.add_argument("--full-size", action="store_true", help="Wan2.1-1.3B shape, random weights, 480x832")
    parser.add_argument("--decode", action="store_true", help="decode every chunk too")
    parser.add_argument("--warmup-chunks", type=int, default=6)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "generate.json")
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.full_size else "float32"
    device = torch.device(args.device)
    model, latent_hw, decoder = build(args)
    config = MemRoPEConfig(policy=args.policy)
    pipeline = CausalInferencePipeline(model, config, dtype=DTYPES[args.dtype], device=device)
    text = torch.randn(1, 32, model.config.text_dim, generator=torch.Generator().manual_seed(0))
    run(pipeline, text, latent_hw, decoder, args.warmup_chunks, device)
    results = []
    for chunks in args.chunks:
        result = run(pipeline, text, latent_hw, decoder, chunks, device)
        results.append(result)
        print(
            f"{chunks} chunks: {result['wall_seconds']:.2f} s, {result['chunks_per_second']:.2f} chunks/s",
            file=sys.stderr,
            flush=True,
        )
    report = {
        "benchmark": "generate",
        "model": "wan2.1-1.3b-shape (random weights)" if args.full_size else "tiny",
        "latent_hw": list(latent_hw),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "dtype": args.dtype,
        "decode": args.decode,
        "cache": config.to_dict(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "results": results,
    }
    print(table(results, device.type == "cuda"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()

"""Benchmark the diffusers path (a ``WanTransformer3DModel`` behind memrope's adapter) against memrope's own DiT.

One process, the same weights (the transformer is converted from the memrope model and shares its
tensors), the same pipeline settings, prompt and seed: each backend generates ``--chunks`` chunks
after ``--warmup-chunks`` (cache filling, first eviction), and the per-chunk wall time of the steady
state is reported (median and mean of the timed chunks; a chunk is 4 denoising calls + 1 clean call).
The backends alternate chunk by chunk, so drift in machine load hits both alike. The latents of the
two runs are compared too (max abs difference).

The default shape is small but not tiny (CPU friendly): dim 512 (4 heads x 128), 4 blocks, 16x24
latents (96 tokens per frame), the paper's cache (12 frames, chunk 3). ``--full-size`` uses the
Wan2.1-1.3B shape with random weights at 480x832 (a GPU run).

Run: ``python benchmarks/bench_diffusers.py [--chunks 8] [--warmup-chunks 6] [--threads 1]
[--device cpu|cuda] [--dtype float32|bfloat16] [--full-size] [--json benchmarks/results/diffusers.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diffusers
import torch

import memrope
from memrope import MemRoPEConfig
from memrope.adapters.diffusers_wan import diffusers_transformer
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.pipeline import CausalInferencePipeline

SMALL = WanConfig(dim=512, ffn_dim=1536, num_heads=4, num_layers=4, text_dim=256, text_len=64, freq_dim=256)
SMALL_HW = (16, 24)
FULL_HW = (60, 104)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def timed_chunks(chunks: Iterator[Any], device: torch.device) -> Iterator[tuple[float, torch.Tensor]]:
    """``(seconds, latents)`` of each chunk the stream yields (synchronising CUDA before the clock)."""
    while True:
        started = time.perf_counter()
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield time.perf_counter() - started, chunk.latents.cpu()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=8, help="timed chunks per backend")
    parser.add_argument("--warmup-chunks", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: float32 on CPU")
    parser.add_argument("--full-size", action="store_true", help="Wan2.1-1.3B shape, random weights, 480x832")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "diffusers.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    config, latent_hw = (WanConfig(), FULL_HW) if args.full_size else (SMALL, SMALL_HW)
    cache_config = MemRoPEConfig()
    torch.manual_seed(0)
    model = CausalWanModel(config).to(device=device, dtype=dtype).eval().requires_grad_(False)
    transformer = diffusers_transformer(model, config)
    prompt = torch.randn(1, 16, config.text_dim)
    num_frames = (args.warmup_chunks + args.chunks) * cache_config.chunk_frames

    times: dict[str, list[float]] = {"memrope": [], "diffusers": []}
    latents: dict[str, list[torch.Tensor]] = {"memrope": [], "diffusers": []}
    with memrope.attach(transformer, cache_config, text_len=config.text_len) as attachment, torch.no_grad():
        streams = {
            name: timed_chunks(
                CausalInferencePipeline(dit, cache_config, dtype=dtype, device=device).stream(
                    prompt, num_frames=num_frames, seed=0, latent_hw=latent_hw
                ),
                device,
            )
            for name, dit in (("memrope", model), ("diffusers", attachment))
        }
        for index in range(args.warmup_chunks + args.chunks):
            for name, stream in streams.items():
                seconds, chunk_latents = next(stream)
                latents[name].append(chunk_latents)
                if index >= args.warmup_chunks:
                    times[name].append(seconds)

    difference = (torch.cat(latents["diffusers"], 1) - torch.cat(latents["memrope"], 1)).abs().max().item()
    rows = {
        name: {"median_s": statistics.median(values), "mean_s": statistics.fmean(values)}
        for name, values in times.items()
    }
    ratio = rows["diffusers"]["median_s"] / rows["memrope"]["median_s"]
    report = {
        "benchmark": "bench_diffusers",
        "config": config.to_dict(),
        "latent_hw": list(latent_hw),
        "cache": cache_config.to_dict(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "warmup_chunks": args.warmup_chunks,
        "timed_chunks": args.chunks,
        "per_chunk": rows,
        "ratio_diffusers_over_memrope": ratio,
        "max_abs_latent_difference": difference,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "machine": platform.platform(),
    }
    print(f"{'backend':<10} {'median s/chunk':>15} {'mean s/chunk':>13}")
    for name, row in rows.items():
        print(f"{name:<10} {row['median_s']:>15.4f} {row['mean_s']:>13.4f}")
    print(
        f"ratio diffusers/memrope {ratio:.3f} ({report['threads']} thread(s), {device}, {report['dtype']}); "
        f"max abs latent difference {difference:.2e}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Error and memory of 8-bit cache storage (``MemRoPECache(kv_dtype=...)``) against bf16 and float32.

Three measurements, one table each:

1. **Wan2.1-1.3B shape, random data** (batch 1, 12 heads x 128, frames of 30 x 52 tokens, the
   default 12-frame cache, ``--layers`` layers, shared key workspace): the same chunks go into a
   float32 cache (the reference), a bf16 cache and one bf16 cache per 8-bit format. Per call the
   attention output of ``--queries`` sampled query tokens is compared with the float32 cache's:
   max and mean absolute error, and the RMS error relative to the output's RMS (``rel``), over
   ``--chunks`` advance calls (the cache is full and compressing from chunk 4 on). Queries, keys and
   values are N(0, 1); ``eps`` is :attr:`memrope.kv_storage.KVFormat.precision`.
2. **Scale granularity**: the per-element round-trip error of one cache's worth of keys with one
   scale per token and head (what the cache does) against one per frame and head, for N(0, 1) tokens
   and for tokens whose magnitudes vary (log-normal, sigma 1, as real keys' norms do).
3. **Tiny model end to end** (``memrope.presets.tiny_model``, float32, 100 chunks, 4 x 4 latents,
   denoising steps (1000, 500)): the pipeline runs on a float32 cache; every model call is replayed
   with the same inputs on each 8-bit cache (teacher forcing), giving the flow-prediction error
   relative to its L2 norm (max over the 300 calls, mean, and the 100th chunk's); then each format
   generates the same video on its own (free running) and its last chunk's latents are compared.

Resident bytes are for all 30 layers, built on the meta device, in both key-workspace modes.

Run: ``python benchmarks/bench_kv_dtype.py [--layers 1] [--chunks 6] [--queries 256] [--device cpu|cuda]
[--json benchmarks/results/kv_dtype.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from memrope import MemRoPECache, MemRoPEConfig, attend
from memrope.kv_storage import kv_format
from memrope.pipeline import CausalInferencePipeline
from memrope.presets import tiny_model, tiny_text_encoder

WAN_LAYERS = 30
HEADS = 12
HEAD_DIM = 128
FRAME_SHAPE = (30, 52)
KV_DTYPES = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2, "int8": torch.int8}
TINY_CHUNKS = 100
TINY_LATENT_HW = (4, 4)
TINY_STEPS = (1000, 500)


def wan_cache(
    layers: int, device: torch.device | str, dtype: torch.dtype, kv_dtype: torch.dtype | None, workspace: str
) -> MemRoPECache:
    return MemRoPECache(
        MemRoPEConfig(),
        num_layers=layers,
        batch_size=1,
        num_heads=HEADS,
        head_dim=HEAD_DIM,
        frame_shape=FRAME_SHAPE,
        device=device,
        dtype=dtype,
        key_workspace=workspace,  # type: ignore[arg-type]
        kv_dtype=kv_dtype,
    )


def attention_errors(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Table 1: per-call attention error at the Wan-1.3B shape against a float32 cache."""
    variants: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
        "float32": (torch.float32, None),
        "bfloat16": (torch.bfloat16, None),
        **{name: (torch.bfloat16, dtype) for name, dtype in KV_DTYPES.items()},
    }
    caches = {
        name: wan_cache(args.layers, device, dtype, kv, "shared") for name, (dtype, kv) in variants.items()
    }
    config = caches["float32"].config
    tokens = config.chunk_frames * FRAME_SHAPE[0] * FRAME_SHAPE[1]
    gen = torch.Generator().manual_seed(0)
    errors: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants if name != "float32"}
    for chunk in range(args.chunks):
        for layer in range(args.layers):
            key, value = (torch.randn(1, tokens, HEADS, HEAD_DIM, generator=gen).to(device) for _ in range(2))
            rows = torch.randperm(tokens, generator=gen)[: args.queries].to(device)
            query = torch.randn(1, args.queries, HEADS, HEAD_DIM, generator=gen).to(device)
            outputs = {}
            for name, cache in caches.items():
                context = cache.update(
                    key.to(cache.dtype),
                    value.to(cache.dtype),
                    layer=layer,
                    start_frame=chunk * config.chunk_frames,
                )
                roped = cache.rope.apply(query, context.query_cos[rows], context.query_sin[rows])
                outputs[name] = attend(roped.to(cache.dtype), context.keys, context.values).float()
            reference = outputs.pop("float32")
            for name, output in outputs.items():
                error = output - reference
                rel = float(error.pow(2).mean().sqrt() / reference.pow(2).mean().sqrt())
                errors[name].append((float(error.abs().max()), float(error.abs().mean()), rel))
        print(f"  chunk {chunk}: attention errors measured", flush=True)
    results = []
    for name, calls in errors.items():
        fmt = kv_format(variants[name][1], torch.bfloat16)
        results.append(
            {
                "storage": name,
                "calls": len(calls),
                "max_abs_error": max(c[0] for c in calls),
                "mean_abs_error": sum(c[1] for c in calls) / len(calls),
                "max_relative_rms_error": max(c[2] for c in calls),
                "eps": None if fmt is None else fmt.precision,
            }
        )
    return results


def granularity_errors(device: torch.device) -> list[dict[str, Any]]:
    """Table 2: round-trip error of one cache's keys with per-token or per-frame scales."""
    config = MemRoPEConfig()
    frame_tokens = FRAME_SHAPE[0] * FRAME_SHAPE[1]
    tokens = config.cache_frames * frame_tokens
    gen = torch.Generator().manual_seed(1)
    gaussian = torch.randn(1, tokens, HEADS, HEAD_DIM, generator=gen)
    magnitudes = torch.randn(1, tokens, HEADS, 1, generator=gen).exp()
    data = {"gaussian": gaussian.to(device), "varying_norms": (gaussian * magnitudes).to(device)}
    results = []
    for data_name, x in data.items():
        for name, dtype in KV_DTYPES.items():
            fmt = kv_format(dtype, torch.float32)
            assert fmt is not None
            token_scales = fmt.scales(x)
            frame_scales = token_scales.unflatten(1, (config.cache_frames, frame_tokens)).amax(
                dim=2, keepdim=True
            )
            frame_scales = frame_scales.expand(-1, -1, frame_tokens, -1, -1).flatten(1, 2)
            row: dict[str, Any] = {"data": data_name, "format": name}
            for granularity, scales in (("token", token_scales), ("frame", frame_scales)):
                error = fmt.decode(fmt.encode(x, scales), scales, torch.float32) - x
                row[f"per_{granularity}_relative_rms"] = float(
                    error.pow(2).mean().sqrt() / x.pow(2).mean().sqrt()
                )
                row[f"per_{granularity}_mean_relative"] = float(
                    (error.abs() / x.abs().clamp_min(1e-12)).median()
                )
            results.append(row)
    return results


class _Replay:
    """The tiny model; each call is also run on one 8-bit cache per format (teacher forcing)."""

    def __init__(self) -> None:
        self.model = tiny_model()
        self.config = self.model.config
        self.shadows: dict[str, MemRoPECache] = {}
        self.errors: dict[str, list[float]] = {name: [] for name in KV_DTYPES}

    def new_cache(
        self, cache_config: MemRoPEConfig, batch_size: int, latent_hw: tuple[int, int], **kw: Any
    ) -> MemRoPECache:
        for name, dtype in KV_DTYPES.items():
            self.shadows[name] = self.model.new_cache(
                cache_config, batch_size, latent_hw, kv_dtype=dtype, **kw
            )
        return self.model.new_cache(cache_config, batch_size, latent_hw, **kw)

    def encode_context(self, text_embeds: torch.Tensor) -> Any:
        return self.model.encode_context(text_embeds)

    def __call__(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        context: Any,
        *,
        cache: MemRoPECache,
        start_frame: int,
    ) -> torch.Tensor:
        flow = self.model(latents, timesteps, context, cache=cache, start_frame=start_frame)
        for name, shadow in self.shadows.items():
            low = self.model(latents, timesteps, context, cache=shadow, start_frame=start_frame)
            self.errors[name].append(float((low - flow).norm() / flow.norm()))
        return flow


def tiny_model_errors() -> list[dict[str, Any]]:
    """Table 3: flow-prediction error (teacher forced) and free-running latent error over 100 chunks."""
    config = MemRoPEConfig()
    embeds = tiny_text_encoder().encode(["a lighthouse at dusk, waves breaking"])
    num_frames = TINY_CHUNKS * config.chunk_frames
    replay = _Replay()
    reference = CausalInferencePipeline(replay, config, denoising_steps=TINY_STEPS).generate(  # type: ignore[arg-type]
        embeds, num_frames=num_frames, seed=0, latent_hw=TINY_LATENT_HW
    )
    last = slice(num_frames - config.chunk_frames, num_frames)
    calls_per_chunk = len(TINY_STEPS) + 1
    results = []
    for name, dtype in KV_DTYPES.items():
        free = CausalInferencePipeline(
            replay.model, config, denoising_steps=TINY_STEPS, kv_dtype=dtype
        ).generate(embeds, num_frames=num_frames, seed=0, latent_hw=TINY_LATENT_HW)
        errors = replay.errors[name]
        fmt = kv_format(dtype, torch.float32)
        results.append(
            {
                "format": name,
                "calls": len(errors),
                "flow_max_relative_error": max(errors),
                "flow_mean_relative_error": sum(errors) / len(errors),
                "flow_relative_error_chunk_100": max(errors[-calls_per_chunk:]),
                "free_running_last_chunk_relative_error": float(
                    (free[:, last] - reference[:, last]).norm() / reference[:, last].norm()
                ),
                "eps": None if fmt is None else fmt.precision,
            }
        )
    return results


def resident_bytes() -> list[dict[str, Any]]:
    rows = []
    for workspace in ("shared", "per_layer"):
        bf16 = wan_cache(WAN_LAYERS, "meta", torch.bfloat16, None, workspace).resident_bytes()
        rows.append({"workspace": workspace, "storage": "bfloat16", "bytes": bf16, "ratio": 1.0})
        for name, dtype in KV_DTYPES.items():
            resident = wan_cache(WAN_LAYERS, "meta", torch.bfloat16, dtype, workspace).resident_bytes()
            rows.append(
                {"workspace": workspace, "storage": name, "bytes": resident, "ratio": resident / bf16}
            )
    return rows


def _format_float(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def print_tables(results: dict[str, Any]) -> None:
    print("\nattention at the Wan-1.3B shape vs a float32 cache (bf16 model dtype, shared workspace)")
    print(f"{'storage':<15} {'calls':>5} {'max |err|':>10} {'mean |err|':>11} {'max rel':>9} {'eps':>8}")
    for row in results["attention"]:
        print(
            f"{row['storage']:<15} {row['calls']:>5} {_format_float(row['max_abs_error']):>10} "
            f"{_format_float(row['mean_abs_error']):>11} {_format_float(row['max_relative_rms_error']):>9} "
            f"{_format_float(row['eps']):>8}"
        )
    print("\nscale granularity: relative RMS round-trip error of one cache's keys")
    print(f"{'data':<14} {'format':<15} {'per token':>10} {'per frame':>10}")
    for row in results["granularity"]:
        print(
            f"{row['data']:<14} {row['format']:<15} {_format_float(row['per_token_relative_rms']):>10} "
            f"{_format_float(row['per_frame_relative_rms']):>10}"
        )
    print(f"\ntiny model, {TINY_CHUNKS} chunks: flow-prediction error (relative L2) vs the float32 cache")
    print(f"{'format':<15} {'calls':>5} {'max':>9} {'mean':>9} {'chunk 100':>10} {'free-run':>9} {'eps':>8}")
    for row in results["tiny_model"]:
        print(
            f"{row['format']:<15} {row['calls']:>5} {_format_float(row['flow_max_relative_error']):>9} "
            f"{_format_float(row['flow_mean_relative_error']):>9} "
            f"{_format_float(row['flow_relative_error_chunk_100']):>10} "
            f"{_format_float(row['free_running_last_chunk_relative_error']):>9} {_format_float(row['eps']):>8}"
        )
    print(f"\nresident cache bytes, Wan-1.3B ({WAN_LAYERS} layers, bf16, batch 1, 12 frames)")
    print(f"{'workspace':<10} {'storage':<15} {'GiB':>7} {'x bf16':>7}")
    for row in results["resident_bytes"]:
        print(
            f"{row['workspace']:<10} {row['storage']:<15} {row['bytes'] / 2**30:>7.3f} {row['ratio']:>7.3f}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=1, help="layers for the attention errors (default 1)")
    parser.add_argument("--chunks", type=int, default=6, help="chunks (advance calls per layer; default 6)")
    parser.add_argument(
        "--queries", type=int, default=256, help="query tokens sampled per call (default 256)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "kv_dtype.json")
    args = parser.parse_args(argv)
    if args.layers < 1 or args.chunks < 1 or args.queries < 1:
        parser.error("--layers, --chunks and --queries must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(
        f"8-bit cache storage on {device} (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)"
    )
    results: dict[str, Any] = {
        "environment": {"torch": torch.__version__, "device": str(device), "platform": platform.platform()},
        "settings": {"layers": args.layers, "chunks": args.chunks, "queries": args.queries},
        "attention": attention_errors(args, device),
        "granularity": granularity_errors(device),
        "tiny_model": tiny_model_errors(),
        "resident_bytes": resident_bytes(),
    }
    print_tables(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()

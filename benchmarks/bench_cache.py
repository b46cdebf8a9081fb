"""Benchmark the MemRoPE cache path at Wan2.1-1.3B shape against the official per-call recipe.

What one attention call of a layer costs *outside* the projections and the attention kernel:
the cache update (advance = evict/compress/shift + write, or rewrite = write the chunk in place)
plus RoPE of the queries and of the cached keys. The attention kernel (``memrope.attend``) is
timed separately, for scale.

Variants, all in one run on the same inputs:

* ``memrope/per_layer``: ``MemRoPECache`` with a RoPE'd-key workspace per layer (only stale slots
  are re-rotated: the chunk's own frames on a rewrite, everything after the sink on an advance).
* ``memrope/shared``: one RoPE'd-key workspace shared by all layers (resident memory at the
  minimum plus one layer's keys; every call re-rotates its layer's whole context).
* ``baseline``: what the official code does on every call: clone the whole layer cache (keys and
  values), write the chunk, and apply float64 complex RoPE (``view_as_complex(x.double()) * freqs``,
  with the per-call ``freqs`` grid built from Wan's tables) to all cached keys and the queries.
  Its advance also shifts the cache and folds the evicted frames into EMA memories in place.

The pipeline's protocol per chunk and layer is 1 advance call + 4 rewrite calls (4 denoising steps
and the clean re-encode), interleaved over layers like a model runs them; ``per call`` below is
``(advance + 4 x rewrite) / 5`` from the median times.

Transient memory: the peak of the bytes allocated during one call above what was allocated before
it (outputs the caller keeps, such as the RoPE'd queries, included). On CUDA it comes from
``torch.cuda.max_memory_allocated``; on CPU from the allocation and free events that
``torch.profiler`` records with ``profile_memory=True`` (every tensor allocation, exact; the
prefix-sum peak of those events), measured in a separate, untimed call.

Run: ``python benchmarks/bench_cache.py [--layers 2] [--device cpu|cuda] [--dtype float32|bfloat16]
[--repeats 3] [--json benchmarks/results/cache.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from memrope import MemRoPECache, MemRoPEConfig, attend

FRAME_SHAPE = (30, 52)  # Wan2.1 480x832 latents after patchify: 1560 tokens per frame
HEADS = 12
HEAD_DIM = 128
MODEL_LAYERS = 30  # Wan2.1-1.3B
REWRITES_PER_CHUNK = 4
WARMUP_CHUNKS = 6  # fill (4 chunks), first eviction, one steady-state chunk
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------- the official per-call recipe
def rope_params(max_seq_len: int, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Wan's complex128 table ``[max_seq_len, dim // 2]``."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64).div(dim)
    freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), 1.0 / torch.pow(theta, exponents))
    return torch.polar(torch.ones_like(freqs), freqs)


class NaiveBaseline:
    """The official cache path: in-place eviction, then per call a clone and float64 complex RoPE of everything."""

    def __init__(self, config: MemRoPEConfig, layers: int, device: torch.device, dtype: torch.dtype) -> None:
        self.config = config
        self.tokens = FRAME_SHAPE[0] * FRAME_SHAPE[1]
        shape = (1, config.cache_frames * self.tokens, HEADS, HEAD_DIM)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.memory: list[dict[str, torch.Tensor]] = [{} for _ in range(layers)]
        self.filled = [0] * layers
        d = HEAD_DIM
        self.freqs = torch.cat(
            [
                rope_params(1024, d - 4 * (d // 6)),
                rope_params(1024, 2 * (d // 6)),
                rope_params(1024, 2 * (d // 6)),
            ],
            dim=1,
        ).to(device)

    def resident_bytes(self) -> int:
        tensors = [*self.keys, *self.values, self.freqs]
        tensors += [t for memory in self.memory for t in memory.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _rope(self, x: torch.Tensor, first_frame: int) -> torch.Tensor:
        """Wan's causal_rope_apply: build the (frame, row, column) grid of factors, rotate in float64."""
        frames = x.shape[1] // self.tokens
        height, width = FRAME_SHAPE
        c = HEAD_DIM // 2
        parts = self.freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
        grid = torch.cat(
            [
                parts[0][first_frame : first_frame + frames]
                .view(frames, 1, 1, -1)
                .expand(frames, height, width, -1),
                parts[1][:height].view(1, height, 1, -1).expand(frames, height, width, -1),
                parts[2][:width].view(1, 1, width, -1).expand(frames, height, width, -1),
            ],
            dim=-1,
        ).reshape(frames * self.tokens, 1, -1)
        z = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(z * grid).flatten(-2).to(x.dtype)

    def _evict(self, layer: int) -> None:
        config, p = self.config, self.tokens
        keys, values, memory = self.keys[layer], self.values[layer], self.memory[layer]
        chunk, sink = config.chunk_frames, config.sink_frames
        block = slice((sink + 2) * p, (sink + 2 + chunk) * p)
        for name, buffer in (("keys", keys), ("values", values)):
            pooled = buffer[:, block].mean(dim=1, keepdim=True)
            if name not in memory:
                memory[name + "_long"], memory[name + "_short"] = pooled.clone(), pooled.clone()
            else:
                a_long, a_short = config.alpha_long, config.alpha_short
                memory[name + "_long"] = a_long * pooled + (1 - a_long) * memory[name + "_long"]
                memory[name + "_short"] = a_short * pooled + (1 - a_short) * memory[name + "_short"]
            rest = buffer[:, (sink + 2 + chunk) * p :].clone()
            buffer[:, (sink + 2) * p : (sink + 2) * p + rest.shape[1]] = rest
            buffer[:, sink * p : (sink + 1) * p] = memory[name + "_long"]
            buffer[:, (sink + 1) * p : (sink + 2) * p] = memory[name + "_short"]

    def call(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, advance: bool
    ) -> Any:
        chunk = self.config.chunk_frames
        if advance:
            if self.filled[layer] + chunk > self.config.cache_frames:
                self._evict(layer)
            else:
                self.filled[layer] += chunk
        filled = self.filled[layer]
        first = filled - chunk
        span = slice(first * self.tokens, filled * self.tokens)
        self.keys[layer][:, span] = key
        self.values[layer][:, span] = value
        keys = self.keys[layer][:, : filled * self.tokens].clone()
        values = self.values[layer][:, : filled * self.tokens].clone()
        return self._rope(query, first), self._rope(keys, 0), values


# ---------------------------------------------------------------- measurement helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_extra_bytes(device: torch.device, fn: Callable[[], Any]) -> int:
    """Peak bytes allocated while ``fn`` runs, above what was allocated before it."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    del result
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def summarize(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": 1e3 * statistics.median(samples),
        "mean_ms": 1e3 * statistics.fmean(samples),
        "min_ms": 1e3 * min(samples),
        "samples": len(samples),
    }


# ---------------------------------------------------------------- the run
def run_variant(
    name: str,
    make: Callable[[], Any],
    call: Callable[[Any, int, torch.Tensor, torch.Tensor, torch.Tensor, int, bool], Any],
    inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    state = make()
    chunk_frames = 3
    layers = len(inputs)
    timings: dict[str, list[float]] = {"advance": [], "rewrite": []}
    for chunk in range(WARMUP_CHUNKS + args.repeats):
        start = chunk * chunk_frames
        timed = chunk >= WARMUP_CHUNKS
        for step in range(1 + REWRITES_PER_CHUNK):
            kind = "advance" if step == 0 else "rewrite"
            for layer in range(layers):
                q, k, v = inputs[layer]
                synchronize(device)
                began = time.perf_counter()
                result = call(state, layer, q, k, v, start, step == 0)
                synchronize(device)
                if timed:
                    timings[kind].append(time.perf_counter() - began)
                del result
    # transient memory of one more call of each kind, untimed
    start = (WARMUP_CHUNKS + args.repeats) * chunk_frames
    q, k, v = inputs[0]
    memory = {"advance": peak_extra_bytes(device, lambda: call(state, 0, q, k, v, start, True))}
    memory["rewrite"] = peak_extra_bytes(device, lambda: call(state, 0, q, k, v, start, False))
    per_call = [*timings["advance"], *timings["rewrite"]]
    advance_median = 1e3 * statistics.median(timings["advance"])
    rewrite_median = 1e3 * statistics.median(timings["rewrite"])
    result = {
        "variant": name,
        "advance": summarize(timings["advance"]),
        "rewrite": summarize(timings["rewrite"]),
        # the protocol's 1 advance + 4 rewrites per chunk and layer, from the medians (robust to
        # page-fault outliers); the plain mean of every timed call is kept too
        "per_call_ms": (advance_median + REWRITES_PER_CHUNK * rewrite_median) / (1 + REWRITES_PER_CHUNK),
        "per_call_mean_ms": 1e3 * statistics.fmean(per_call),
        "transient_bytes": memory,
        "resident_bytes": state.resident_bytes(),
    }
    print(f"  {name}: done ({result['per_call_ms']:.1f} ms/call)", flush=True)
    return result


def memrope_call(
    cache: MemRoPECache,
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    start: int,
    advance: bool,
) -> Any:
    # the cache path of rope_on_the_fly without the attention kernel (advance vs rewrite is decided by start)
    context = cache.update(k, v, layer=layer, start_frame=start)
    return cache.rope.apply(q, context.query_cos, context.query_sin), context.keys, context.values


def baseline_call(
    base: NaiveBaseline,
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    start: int,
    advance: bool,
) -> Any:
    return base.call(layer, q, k, v, advance)


def resident_30_layers(config: MemRoPEConfig, dtype: torch.dtype, workspace: str) -> int:
    """Exact resident bytes of a 30-layer cache in steady state, built on the meta device (nothing allocated)."""
    cache = MemRoPECache(
        config,
        num_layers=MODEL_LAYERS,
        batch_size=1,
        num_heads=HEADS,
        head_dim=HEAD_DIM,
        frame_shape=FRAME_SHAPE,
        device="meta",
        dtype=dtype,
        key_workspace=workspace,  # type: ignore[arg-type]
    )
    tokens = config.chunk_frames * FRAME_SHAPE[0] * FRAME_SHAPE[1]
    kv = torch.empty(1, tokens, HEADS, HEAD_DIM, device="meta", dtype=dtype)
    for chunk in range(WARMUP_CHUNKS):
        for layer in range(MODEL_LAYERS):
            cache.update(kv, kv, layer=layer, start_frame=chunk * config.chunk_frames)
    return cache.resident_bytes()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--layers", type=int, default=2, help="layers in the cache (default 2; bytes scale linearly)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default float32 on CPU, bfloat16 on CUDA"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed steady-state chunks (each: 1 advance + 4 rewrites per layer)",
    )
    parser.add_argument(
        "--attention-repeats", type=int, default=1, help="timed calls of memrope.attend (0 skips it)"
    )
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "cache.json")
    args = parser.parse_args(argv)
    if args.layers < 1 or args.repeats < 1:
        parser.error("--layers and --repeats must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    config = MemRoPEConfig()
    tokens = config.chunk_frames * FRAME_SHAPE[0] * FRAME_SHAPE[1]
    gen = torch.Generator().manual_seed(0)
    inputs = [
        tuple(torch.randn(1, tokens, HEADS, HEAD_DIM, generator=gen).to(device, dtype) for _ in range(3))
        for _ in range(args.layers)
    ]
    element = torch.empty(0, dtype=dtype).element_size()
    minimum_per_layer = 2 * config.cache_frames * FRAME_SHAPE[0] * FRAME_SHAPE[1] * HEADS * HEAD_DIM * element
    print(
        f"cache path at Wan2.1-1.3B shape: batch 1, {config.cache_frames} frames x {FRAME_SHAPE[0] * FRAME_SHAPE[1]} "
        f"tokens, {HEADS} heads x {HEAD_DIM}, {args.layers} layers, {str(dtype).removeprefix('torch.')} on {device} "
        f"({torch.get_num_threads()} CPU threads, torch {torch.__version__})",
        flush=True,
    )

    def make_cache(workspace: str) -> Callable[[], MemRoPECache]:
        return lambda: MemRoPECache(
            config,
            num_layers=args.layers,
            batch_size=1,
            num_heads=HEADS,
            head_dim=HEAD_DIM,
            frame_shape=FRAME_SHAPE,
            device=device,
            dtype=dtype,
            key_workspace=workspace,  # type: ignore[arg-type]
        )

    results = [
        run_variant("memrope/per_layer", make_cache("per_layer"), memrope_call, inputs, args, device),
        run_variant("memrope/shared", make_cache("shared"), memrope_call, inputs, args, device),
        run_variant(
            "baseline",
            lambda: NaiveBaseline(config, args.layers, device, dtype),
            baseline_call,
            inputs,
            args,
            device,
        ),
    ]
    baseline = results[-1]
    for result in results:
        result["speedup"] = {
            "advance": baseline["advance"]["median_ms"] / result["advance"]["median_ms"],
            "rewrite": baseline["rewrite"]["median_ms"] / result["rewrite"]["median_ms"],
            "per_call": baseline["per_call_ms"] / result["per_call_ms"],
        }
        result["resident_over_minimum"] = result["resident_bytes"] / (minimum_per_layer * args.layers)
    for result, workspace in zip(results[:2], ("per_layer", "shared")):
        result["resident_bytes_30_layers"] = resident_30_layers(config, dtype, workspace)
    baseline["resident_bytes_30_layers"] = baseline["resident_bytes"] + (MODEL_LAYERS - args.layers) * (
        (baseline["resident_bytes"] - baseline_tables_bytes()) // args.layers
    )

    attention_ms = None
    if args.attention_repeats > 0:
        cache = make_cache("per_layer")()
        for chunk in range(WARMUP_CHUNKS):
            q, k, v = inputs[0]
            query, keys, values = memrope_call(cache, 0, q, k, v, chunk * config.chunk_frames, True)
        samples = []
        for _ in range(args.attention_repeats):
            synchronize(device)
            began = time.perf_counter()
            attend(query, keys, values)
            synchronize(device)
            samples.append(time.perf_counter() - began)
        attention_ms = 1e3 * statistics.median(samples)
        del cache, query, keys, values

    gib = 2**30
    print()
    header = (
        f"{'variant':<18} {'advance ms':>11} {'rewrite ms':>11} {'ms/call':>9} {'speed-up':>9} "
        f"{'adv. extra MiB':>15} {'rew. extra MiB':>15} {'resident GiB':>13} {'x minimum':>10} {'30-layer GiB':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['variant']:<18} {r['advance']['median_ms']:>11.1f} {r['rewrite']['median_ms']:>11.1f} "
            f"{r['per_call_ms']:>9.1f} {r['speedup']['per_call']:>8.1f}x "
            f"{r['transient_bytes']['advance'] / 2**20:>15.1f} {r['transient_bytes']['rewrite'] / 2**20:>15.1f} "
            f"{r['resident_bytes'] / gib:>13.3f} {r['resident_over_minimum']:>10.3f} {r['resident_bytes_30_layers'] / gib:>13.2f}"
        )
    print(
        f"\nminimum resident (2 x layers x frames x tokens x heads x head_dim x {element} bytes): "
        f"{minimum_per_layer * args.layers / gib:.3f} GiB for {args.layers} layers, "
        f"{minimum_per_layer * MODEL_LAYERS / gib:.2f} GiB for {MODEL_LAYERS}"
    )
    print(
        "speed-up = baseline ms / variant ms; ms/call = (advance + 4 x rewrite) / 5, median times "
        f"(advance {results[0]['speedup']['advance']:.1f}x / rewrite {results[0]['speedup']['rewrite']:.1f}x for per_layer; "
        f"{results[1]['speedup']['advance']:.1f}x / {results[1]['speedup']['rewrite']:.1f}x for shared)"
    )
    memory_source = (
        "torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler allocation events"
    )
    print(
        f"extra MiB = peak allocation above the start of one call, returned RoPE'd tensors included ({memory_source})"
    )
    print("baseline resident = its k/v buffers (the official unused query cache is not modelled)")
    if attention_ms is not None:
        print(
            f"attention kernel (memrope.attend, 4680 queries x 18720 keys) for scale: {attention_ms:.1f} ms/call"
        )

    report = {
        "shape": {
            "batch": 1,
            "frames": config.cache_frames,
            "frame_shape": list(FRAME_SHAPE),
            "heads": HEADS,
            "head_dim": HEAD_DIM,
            "layers": args.layers,
            "dtype": str(dtype).removeprefix("torch."),
            "device": str(device),
        },
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "protocol": {
            "advance_per_chunk": 1,
            "rewrites_per_chunk": REWRITES_PER_CHUNK,
            "timed_chunks": args.repeats,
        },
        "transient_memory_method": memory_source,
        "minimum_resident_bytes": minimum_per_layer * args.layers,
        "minimum_resident_bytes_30_layers": minimum_per_layer * MODEL_LAYERS,
        "attention_ms": attention_ms,
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return report


def baseline_tables_bytes() -> int:
    d = HEAD_DIM
    pairs = (d - 4 * (d // 6)) // 2 + 2 * (d // 6)
    return 1024 * pairs * 16  # complex128


if __name__ == "__main__":
    main()

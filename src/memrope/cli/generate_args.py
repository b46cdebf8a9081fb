"""``memrope generate``: its arguments (the parser only; checking them together is :mod:`.generate_plan`)."""

from __future__ import annotations

import argparse
import math

import torch

from memrope._dtypes import parse_dtype
from memrope.config import POLICIES
from memrope.noise import check_seed

__all__ = [
    "BACKENDS",
    "DTYPES",
    "GENERATE_DESCRIPTION",
    "KV_DTYPE_CHOICES",
    "PLACEMENTS",
    "TEXT_ENCODER_DEVICE_CHOICES",
    "configure_generate",
]

#: What ``--dtype`` accepts (by any name :func:`memrope._dtypes.parse_dtype` reads: ``bf16``, ...).
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PLACEMENTS = ("single", "split", "auto")
#: What ``--kv-dtype`` accepts: ``auto``, then the names of :data:`memrope.memory_plan.KV_DTYPES`.
KV_DTYPE_CHOICES = ("auto", "bf16", "fp8", "fp8-e5m2", "int8")
#: What ``--text-encoder-device`` accepts (see :func:`memrope.devices.plan_devices`).
TEXT_ENCODER_DEVICE_CHOICES = ("auto", "gpu", "cpu")
#: What ``--backend`` accepts: memrope's own DiT, or the weights in a diffusers ``WanTransformer3DModel``.
BACKENDS = ("memrope", "diffusers")

GENERATE_DESCRIPTION = """\
Generate videos chunk by chunk with a fixed-size KV cache and write them as mp4 files, each with a
JSON report beside it (<video>.json).

One video per prompt, generated one after the other with the same seed: a single --prompt writes
OUTPUT; several prompts (repeated --prompt, or --prompts-file with one prompt per line, blank lines
ignored) write OUTPUT_STEM_<i>.mp4 beside OUTPUT. An unconditional model (--model toy) needs no
prompt: without one it makes one video.

Length: N latent frames decode to 4N-3 video frames at 16 fps, made in whole chunks (3 latent
frames). --seconds S makes the shortest whole-chunk video at least S seconds long (--seconds 4 -> 18
latent frames = 69 frames = 4.31 s); --num-frames N rounds up to whole chunks (10 -> 12). A note line
and the report say what is made; at most 24 h of video per run.

Prompt switches: --prompt-schedule "0:a cat sits;120:the cat jumps" makes one video whose prompt
changes at latent frame 120 (or 30s; a start inside a chunk moves to the next chunk boundary): the
cross-attention context is recomputed and the cache window after the sink is re-encoded under the
new prompt, while the sink and the memory tokens keep the past.

Interrupting: the first Ctrl-C stops after the current chunk and leaves a playable mp4 (and a
checkpoint with --save-every); run the same command with --resume to continue. While a checkpoint
exists, a run without --resume refuses to start: pass --resume to continue or --restart to discard
the checkpoint and start over.

Failures (an error, a full disk, NaN/inf) leave an existing video and its report as they were and
exit with status 1.

examples:
  memrope generate --model tiny --prompt "a red fox running through snow" --output fox.mp4
  memrope generate --model self-forcing-60s --prompt "..." --output sf.mp4 --save-every 20 --resume
  memrope generate --model longlive-1h --prompts-file MovieGenVideoBench.txt --output out/v.mp4
  memrope generate --model longlive-60s --prompt-schedule "0:a cat sits;30s:the cat jumps" -o cat.mp4
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        return check_seed(int(text), "--seed")
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64 - 1], got {text!r}") from None


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _dtype(text: str) -> torch.dtype:
    try:
        return parse_dtype(text, "--dtype", allowed=DTYPES)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {text!r}; choose float32, bfloat16 or float16 (or fp32, bf16, fp16)"
        ) from None


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``memrope generate``: the DiT, its LoRA, the text encoder and the VAE."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        "--preset",
        dest="model",
        default="tiny",
        metavar="NAME",
        help="'tiny' (built in, no download) or an official preset such as self-forcing-60s or "
        "longlive-1h (see `memrope presets`); default: tiny",
    )
    model.add_argument(
        "--checkpoint",
        metavar="PATH_OR_SOURCE",
        help="DiT weights instead of the preset's: a local file/folder, hf://owner/name/path or a "
        "registered name (self-forcing, longlive, wan2.1-t2v-1.3b)",
    )
    model.add_argument(
        "--lora",
        metavar="PATH_OR_SOURCE",
        help="PEFT LoRA merged into --checkpoint (LongLive's lora.pt with a local longlive_base.pt)",
    )
    model.add_argument(
        "--text-encoder",
        metavar="SOURCE",
        help="'hash' or a Hub id / local folder in the Diffusers layout holding umT5 (default: the preset's)",
    )
    model.add_argument(
        "--vae",
        metavar="SOURCE",
        help="'tiny' or a Hub id / local folder in the Diffusers layout holding the Wan VAE "
        "(default: the preset's)",
    )
    model.add_argument(
        "--backend",
        choices=BACKENDS,
        default="memrope",
        help="memrope: memrope's own Wan DiT; diffusers: the same weights converted into a diffusers "
        "WanTransformer3DModel run through memrope's diffusers adapter (needs the diffusers extra); "
        "default: memrope",
    )
    model.add_argument("--list-presets", action="store_true", help="print the presets and exit")


def _add_prompts_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``memrope generate``: what to generate."""
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="a prompt (repeat for several videos)",
    )
    prompts.add_argument(
        "--prompts-file",
        metavar="PATH",
        help="UTF-8 text file, one prompt per line, blank lines ignored (e.g. MovieGenBench)",
    )
    prompts.add_argument(
        "--prompt-schedule",
        metavar="SCHEDULE",
        help="one video whose prompt changes mid-video (LongLive-style KV re-cache): START:PROMPT "
        "entries separated by ';', START a latent frame (120) or seconds (30s), the first at 0, e.g. "
        '"0:a cat sits;120:the cat jumps"; or @FILE with one entry per line',
    )


def _add_length_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``memrope generate``: how long, and the seed."""
    length = parser.add_argument_group("length and sampling")
    frames = length.add_mutually_exclusive_group()
    frames.add_argument(
        "--num-frames",
        type=_positive_int,
        metavar="N",
        help="latent frames, rounded up to whole chunks (3); default: the preset's",
    )
    frames.add_argument(
        "--seconds",
        type=_finite_float,
        metavar="S",
        help="video length in seconds at 16 fps: the shortest whole-chunk video at least S s long "
        "(4 -> 18 latent frames = 69 frames = 4.31 s)",
    )
    length.add_argument("--seed", type=_seed, default=0, help="noise seed in [0, 2**64 - 1] (default 0)")


def _add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``memrope generate``: the cache policy and its sizes."""
    cache = parser.add_argument_group("cache")
    cache.add_argument("--policy", choices=POLICIES, help="cache policy (default: memrope)")
    cache.add_argument("--alpha-long", type=_finite_float, metavar="A", help="long-term EMA rate (0.01)")
    cache.add_argument("--alpha-short", type=_finite_float, metavar="A", help="short-term EMA rate (0.1)")
    cache.add_argument(
        "--cache-frames", type=_positive_int, metavar="N", help="cache size in latent frames (12)"
    )
    cache.add_argument("--sink-frames", type=_nonnegative_int, metavar="N", help="sink frames (3)")
    cache.add_argument(
        "--no-protect-sink",
        dest="protect_sink",
        action="store_false",
        default=None,
        help="let the rewrite calls of a chunk inside the sink (chunks smaller than the sink, e.g. frame-wise "
        "models) write its sink frames; by default they keep the first call's keys, as the official code does",
    )
    cache.add_argument(
        "--kv-dtype",
        choices=KV_DTYPE_CHOICES,
        default="auto",
        help="storage of the cached keys and values: bf16 = the model dtype (no quantisation), int8, fp8 "
        "(float8_e4m3fn) or fp8-e5m2 (8 bits with float32 scales: ~0.55-0.7x the cache memory, attention "
        "still in the model dtype; int8 is the most accurate); auto: the model dtype, or int8 when only that "
        "makes --placement auto fit (default: auto)",
    )
    cache.add_argument(
        "--key-workspace",
        choices=("per_layer", "shared"),
        default="per_layer",
        help="RoPE'd keys: one workspace per layer (fastest; default) or one shared by all layers (least "
        "memory: 3.3 instead of 4.8 GiB in bf16 for Wan-1.3B, 1.8 GiB with an 8-bit cache)",
    )


def _add_devices_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``memrope generate``: where everything runs."""
    devices = parser.add_argument_group("devices")
    devices.add_argument(
        "--device", help="cpu, cuda, cuda:1, ... (default: cuda if available; under torchrun cuda:LOCAL_RANK)"
    )
    devices.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="single",
        help="single: everything on --device; split: the DiT's blocks over --devices (official 2-GPU "
        "layout: embeddings + first half of the blocks on the first, the rest, the head and the VAE on "
        "the last, each layer's cache beside its block); auto: the first of single / single with "
        "--offload / split that fits in the free GPU memory (default: single)",
    )
    devices.add_argument(
        "--devices",
        metavar="DEV,DEV,...",
        help="devices for --placement split or auto, e.g. cuda:0,cuda:1 (auto default: every visible GPU)",
    )
    devices.add_argument(
        "--split-at",
        type=_positive_int,
        metavar="N",
        help="with --placement split over 2 devices: the first block on the second device (default: half)",
    )
    devices.add_argument(
        "--text-encoder-device",
        choices=TEXT_ENCODER_DEVICE_CHOICES,
        default="auto",
        help="where umT5 encodes the prompts (it is freed before the DiT loads): gpu; cpu (bf16, ~10.6 GiB "
        "of RAM, slower, nothing on the GPU); auto: the GPU when its ~11.6 GiB fit in the free GPU memory, "
        "else the CPU (default: auto)",
    )
    devices.add_argument(
        "--offload",
        action="store_true",
        help="keep the text encoder and the VAE on the CPU between uses (less GPU memory, a little slower)",
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``memrope generate``: what is written, checkpoints and resuming."""
    output = parser.add_argument_group("output and running")
    output.add_argument(
        "--output",
        "-o",
        default="memrope.mp4",
        metavar="PATH",
        help="mp4 to write (default memrope.mp4); the report goes to PATH.json",
    )
    output.add_argument(
        "--save-latents",
        metavar="PATH",
        help="also write the latents [1, F, 16, H, W] as safetensors (key 'latents')",
    )
    output.add_argument(
        "--dtype",
        type=_dtype,
        metavar="DTYPE",
        help="float32, bfloat16 or float16 (default: bfloat16 for official presets on GPU, else float32)",
    )
    output.add_argument(
        "--save-every",
        type=_positive_int,
        metavar="N",
        help="checkpoint every N chunks next to the output (for --resume)",
    )
    restart = output.add_mutually_exclusive_group()
    restart.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint next to the output (same arguments); start afresh without one",
    )
    restart.add_argument(
        "--restart",
        action="store_true",
        help="discard the checkpoint of an interrupted --save-every run of the output and start over "
        "(without --resume or --restart such a checkpoint makes the run refuse to start)",
    )
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    output.add_argument(
        "--attention-stats",
        action="store_true",
        help="record the attention share of sink / long / short memory / recent / current slots per layer "
        "and call into <video>.attention.json (plot it with `memrope plot-attention`); costs one extra "
        "softmax over the cache per attention call (after --resume: the chunks of the resumed run)",
    )


def configure_generate(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``memrope generate`` to ``parser``."""
    _add_model_arguments(parser)
    _add_prompts_arguments(parser)
    _add_length_arguments(parser)
    _add_cache_arguments(parser)
    _add_devices_arguments(parser)
    _add_output_arguments(parser)

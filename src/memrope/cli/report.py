"""The JSON report ``memrope generate`` writes beside each video (``<video>.json``)."""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

import torch

from memrope._dtypes import dtype_name
from memrope._files import atomic_write_text
from memrope.cli.console import _note
from memrope.cli.generate_plan import Plan, Video
from memrope.video_lengths import FPS, video_frame_count, video_seconds

__all__ = ["REPORT_FORMAT", "_cache_info", "_cuda_devices", "_report", "_write_report"]

REPORT_FORMAT = "memrope.generate_report"


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _write_report(video: Video, report: dict[str, Any], *, quiet: bool) -> None:
    """Write the report; with ``quiet`` (a failure is on its way already) a write error is only noted."""
    try:
        atomic_write_text(video.report, json.dumps(report, indent=2) + "\n")
    except OSError as error:
        if not quiet:
            raise
        _note(f"could not write the report {video.report}: {error}")


def _cuda_devices(plan: Plan) -> list[torch.device]:
    """The CUDA devices the run uses (DiT, text encoder, VAE)."""
    placement = plan.placement
    used = [*placement.devices, placement.text_encoder_device, placement.vae_device]
    return [device for device in dict.fromkeys(used) if device.type == "cuda"]


def _cache_info(cache: Any) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for name, getter in (
        ("slot_layout", lambda: cache.slot_layout()),
        ("summary", lambda: cache.summary()),
        ("resident_bytes", lambda: int(cache.resident_bytes())),
    ):
        try:
            info[name] = getter()
        except Exception:  # noqa: BLE001 (the report must not fail on an inspection helper)
            info[name] = None
    return info


def _report_lengths(
    plan: Plan, video: Video, frames_done: int, start_frame: int, generated: int
) -> dict[str, Any]:
    """The report's lengths: what was requested and produced, in latent frames, video frames and seconds."""
    return {
        "requested": plan.requested,
        "produced": {
            "latent_frames": frames_done,
            "video_frames": video_frame_count(frames_done),
            "seconds": video_seconds(frames_done),
        },
        "latent_frames": frames_done,
        "latent_frames_requested": plan.num_frames,
        "video_frames": video_frame_count(frames_done),
        "seconds_of_video": video_seconds(frames_done),
        "chunk_frames": plan.cache.chunk_frames,
        "chunks": frames_done // plan.cache.chunk_frames,
        "chunks_this_run": generated,
        "resumed_from_latent_frame": start_frame if video.action == "resume" else None,
    }


def _report(
    plan: Plan,
    video: Video,
    signature: dict[str, Any],
    frames_done: int,
    start_frame: int,
    generated: int,
    complete: bool,
    interrupted: bool,
    wall_seconds: float,
    generation_seconds: float,
    cache_info: dict[str, Any],
    error: str | None = None,
) -> dict[str, Any]:
    """The JSON report of one video (``<video>.json``, format :data:`REPORT_FORMAT` version 1)."""
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "complete": complete,
        "interrupted": interrupted,
        "error": error,
        "output": str(video.output),
        "prompt": video.prompt,
        "prompt_schedule": video.schedule,
        "preset": plan.preset.name,
        "checkpoint": plan.checkpoint,
        "seed": plan.seed,
        "device": str(plan.device),
        "placement": plan.placement.to_dict(),
        "rank": plan.rank,
        "world_size": plan.world_size,
        "dtype": dtype_name(plan.dtype),
        "fps": FPS,
        "width": plan.preset.width,
        "height": plan.preset.height,
        **_report_lengths(plan, video, frames_done, start_frame, generated),
        "wall_seconds": wall_seconds,
        "generation_seconds": generation_seconds,
        "chunks_per_second": generated / generation_seconds if generation_seconds > 0 else None,
        "cache": {
            "config": plan.cache.to_dict(),
            "slot_layout": cache_info.get("slot_layout"),
            "summary": cache_info.get("summary"),
            "resident_bytes": cache_info.get("resident_bytes"),
        },
        "peak_rss_bytes": _peak_rss_bytes(),
        "cuda_max_memory_allocated_bytes": {
            str(device): torch.cuda.max_memory_allocated(device) for device in _cuda_devices(plan)
        }
        or None,
        "latents": str(video.latents_path) if complete and video.latents_path is not None else None,
        "attention_stats": str(video.attention_stats) if plan.attention_stats else None,
        "signature": signature,
    }

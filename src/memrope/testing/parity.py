"""Reading the parity vectors of the official implementation (format: ``docs/design.md`` §13).

A set ``NAME`` is three files in one folder: ``NAME.json`` (model, cache and pipeline settings and
the list of model calls), ``NAME.weights.safetensors`` (official state dict) and
``NAME.calls.safetensors`` (call inputs/outputs, ``context``, ``noise``, ``output``, cache dumps).
:func:`load_parity_set` turns one into memrope objects; :func:`find_parity_sets` lists a folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from memrope.config import MemRoPEConfig
from memrope.models.wan import CausalWanModel, WanConfig

__all__ = [
    "PARITY_DIR_ENV",
    "ParityCall",
    "ParityPipeline",
    "ParitySet",
    "cache_config_from_official",
    "collect_parity_sets",
    "find_parity_sets",
    "load_parity_set",
]

PARITY_DIR_ENV = "MEMROPE_PARITY_DIR"
_IGNORED_MODEL_KEYS = ("model_type",)


@dataclass(frozen=True)
class ParityCall:
    """One recorded model call: ``call{index}.x``/``.t``/``.flow`` in :attr:`ParitySet.tensors`."""

    index: int
    start_frame: int
    num_frames: int


@dataclass(frozen=True)
class ParityPipeline:
    """Pipeline settings of a set (official names in comments)."""

    seed: int
    batch: int
    num_frames: int
    chunk_frames: int  # frames_per_block
    latent_hw: tuple[int, int]
    channels: int
    denoising_steps: tuple[int, ...]  # denoising_step_list
    warp_denoising_step: bool
    shift: float  # timestep_shift
    context_noise: float
    warped_timesteps: tuple[float, ...]


@dataclass(frozen=True)
class ParitySet:
    """A parity set mapped onto memrope's configuration objects.

    Attributes:
        name: ``NAME`` of the files.
        model_config: the tiny model's :class:`WanConfig`.
        cache_config: the equivalent :class:`MemRoPEConfig` (policy, sizes, alphas, pooling).
        pipeline: the pipeline settings.
        frame_seqlen: tokens per latent frame.
        calls: the recorded model calls, in order.
        weights: the model's state dict (official key names).
        tensors: the contents of ``NAME.calls.safetensors``.
        raw: the JSON document as read.
    """

    name: str
    model_config: WanConfig
    cache_config: MemRoPEConfig
    pipeline: ParityPipeline
    frame_seqlen: int
    calls: tuple[ParityCall, ...]
    weights: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    raw: dict[str, Any]

    def build_model(self) -> CausalWanModel:
        """A float32 :class:`CausalWanModel` (CPU, eval mode) holding the set's weights (strict load)."""
        model = CausalWanModel(self.model_config)
        model.load_state_dict(self.weights, strict=True)
        return model.eval()

    def pipeline_inputs(self) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
        """Recreate the official draws: ``(generator, noise [B, F, C, H, W], context [B, 5, text_dim])``.

        The returned generator is positioned after those draws, ready for the intermediate noises.
        """
        settings = self.pipeline
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        shape = (settings.batch, settings.num_frames, settings.channels, *settings.latent_hw)
        noise = torch.randn(shape, generator=generator)
        text_dim = self.model_config.text_dim
        context = torch.stack([torch.randn(5, text_dim, generator=generator) for _ in range(settings.batch)])
        return generator, noise, context


def cache_config_from_official(cache: dict[str, Any], chunk_frames: int) -> MemRoPEConfig:
    """Map an official ``cache_config`` to a :class:`MemRoPEConfig` (see :meth:`MemRoPEConfig.from_official`)."""
    return MemRoPEConfig.from_official(cache, chunk_frames)


def find_parity_sets(directory: str | os.PathLike[str]) -> list[Path]:
    """``NAME.json`` paths in ``directory`` whose two safetensors files exist, sorted by name.

    A directory that does not exist holds no set.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.glob("*.json")
        if _sibling(path, "weights").is_file() and _sibling(path, "calls").is_file()
    )


def collect_parity_sets(*directories: str | os.PathLike[str] | None) -> list[Path]:
    """The sets of every directory, one per name: a later directory's copy wins; sorted by name.

    ``None`` entries are skipped, so ``collect_parity_sets(bundled, os.environ.get(PARITY_DIR_ENV))``
    runs the bundled sets plus those of ``$MEMROPE_PARITY_DIR`` (its copy of a name replacing ours).
    """
    by_name: dict[str, Path] = {}
    for directory in directories:
        if directory is None or os.fspath(directory) == "":
            continue
        for path in find_parity_sets(directory):
            by_name[path.stem] = path
    return [by_name[name] for name in sorted(by_name)]


def load_parity_set(path_or_name: str | os.PathLike[str]) -> ParitySet:
    """Load a parity set from ``NAME.json``'s path, or from a bare ``NAME`` in ``$MEMROPE_PARITY_DIR``."""
    path = Path(path_or_name)
    if path.suffix != ".json":
        if path.parent == Path(".") and PARITY_DIR_ENV in os.environ:
            path = Path(os.environ[PARITY_DIR_ENV]) / path
        path = path.with_name(path.name + ".json")
    if not path.is_file():
        raise FileNotFoundError(f"parity set {os.fspath(path_or_name)!r} not found (looked for {path})")
    raw = json.loads(path.read_text())
    pipeline = _pipeline_settings(raw["pipeline"])
    model_values = {k: v for k, v in raw["model_config"].items() if k not in _IGNORED_MODEL_KEYS}
    model_values["patch_size"] = tuple(model_values["patch_size"])
    calls = tuple(
        ParityCall(int(c["index"]), int(c["start_frame"]), int(c["num_frames"])) for c in raw["calls"]
    )
    return ParitySet(
        name=path.stem,
        model_config=WanConfig(**model_values),
        cache_config=cache_config_from_official(raw["cache_config"], pipeline.chunk_frames),
        pipeline=pipeline,
        frame_seqlen=int(raw["frame_seqlen"]),
        calls=calls,
        weights=load_file(_sibling(path, "weights")),
        tensors=load_file(_sibling(path, "calls")),
        raw=raw,
    )


def _pipeline_settings(values: dict[str, Any]) -> ParityPipeline:
    height, width = values["latent_hw"]
    return ParityPipeline(
        seed=int(values["seed"]),
        batch=int(values["batch"]),
        num_frames=int(values["num_frames"]),
        chunk_frames=int(values["frames_per_block"]),
        latent_hw=(int(height), int(width)),
        channels=int(values["channels"]),
        denoising_steps=tuple(int(k) for k in values["denoising_step_list"]),
        warp_denoising_step=bool(values["warp_denoising_step"]),
        shift=float(values["timestep_shift"]),
        context_noise=values["context_noise"],
        warped_timesteps=tuple(float(t) for t in values.get("warped_timesteps", ())),
    )


def _sibling(json_path: Path, kind: str) -> Path:
    return json_path.with_name(f"{json_path.stem}.{kind}.safetensors")

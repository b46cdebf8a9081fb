"""Checkpoint loading for the Wan2.1 causal DiT (Self-Forcing and its family, LongLive, Krea, plain Wan).

Formats understood (every tensor lands on the CPU):

* Self-Forcing / LongLive training checkpoints: a ``.pt`` file holding a dict with ``generator``
  and/or ``generator_ema``, each the state dict of the training wrapper (names prefixed ``model.``,
  possibly with FSDP's ``_fsdp_wrapped_module.`` anywhere in them).
* A bare state dict saved with ``torch.save`` (name -> tensor).
* A safetensors file, or a directory of ``*.safetensors`` shards (with or without a
  ``*.safetensors.index.json`` weight map), e.g. the original Wan layout
  ``diffusion_pytorch_model*.safetensors``. Tensors named as in diffusers' ``WanTransformer3DModel``
  (``condition_embedder.*``, ``blocks.<i>.attn1.*``, ``proj_out.*``, e.g. a diffusers ``transformer/``
  folder) are renamed to the Wan names with :func:`memrope.convert.from_diffusers_state_dict`.
* PEFT LoRA files (LongLive's ``lora.pt``): a dict with ``generator_lora`` or a bare dict of
  ``...<module>.lora_A[.<adapter>].weight`` ``[rank, in]`` / ``...lora_B[.<adapter>].weight``
  ``[out, rank]`` tensors, merged into the base weights as ``W += (alpha / rank) * B @ A``.

``.pt`` files are always read with ``torch.load(..., weights_only=True)``: a file that needs
arbitrary unpickling is refused. Names are normalised to the model's own names (docs/design.md §9), and
loading is strict: any missing, unexpected or mis-shaped tensor raises ``CheckpointKeyError``.

Files are checked before they are parsed: an empty file, one that is neither a ``torch.save``
checkpoint nor safetensors, and a truncated one (for safetensors: expected N bytes, got M) raise
``CheckpointFormatError`` naming the file. A ``.pt`` file that holds safetensors data is read as
safetensors. :func:`load_wan_weights` refuses weights, LoRA factors and merged weights holding NaN or
infinity (:class:`~memrope.errors.NonFiniteError` naming the tensor): they would give a black video.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal, get_args

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.utils import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from torch import nn

from memrope.checkpoint_files import (
    NONFINITE_WEIGHTS_ADVICE,
    CheckpointFormatError,
    CheckpointKeyError,
    PathLike,
    _as_tensor_dict,
    _check_finite_tensors,
    _count,
    _first_names,
    _holds_safetensors,
    _looks_like_safetensors,
    _read_safetensors,
    _torch_load,
    check_safetensors_file,
    nonfinite_summary,
)
from memrope.convert import from_diffusers_state_dict
from memrope.errors import NonFiniteError

__all__ = [
    "CHECKPOINTS",
    "CheckpointFormatError",
    "CheckpointKeyError",
    "CheckpointKind",
    "CheckpointSource",
    "HubFile",
    "PackageFile",
    "check_safetensors_file",
    "load_state_dict_strict",
    "load_wan_weights",
    "merge_lora",
    "nonfinite_summary",
    "normalise_key",
    "read_lora_state_dict",
    "read_state_dict",
    "resolve_checkpoint",
]

CheckpointKind = Literal["auto", "self_forcing", "longlive", "safetensors", "state_dict"]
CHECKPOINT_KINDS: tuple[str, ...] = get_args(CheckpointKind)

HF_URI_SCHEME = "hf://"
GENERATOR_KEY = "generator"
GENERATOR_EMA_KEY = "generator_ema"
GENERATOR_LORA_KEY = "generator_lora"
WRAPPER_SEGMENTS: tuple[str, ...] = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
LEADING_PREFIXES: tuple[str, ...] = ("base_model.model.", "model.")
# Names only diffusers' WanTransformer3DModel uses (the Wan layout has none of them).
DIFFUSERS_NAME_MARKERS: tuple[str, ...] = ("condition_embedder.", ".attn1.", "proj_out.", "scale_shift_table")


# --------------------------------------------------------------------------------------------------
# Registry and resolution
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubFile:
    """One file, or one folder (``filename`` ending in ``/``), of a Hugging Face Hub model repository."""

    repo_id: str
    filename: str

    @property
    def is_folder(self) -> bool:
        """Whether this names a folder (e.g. the ``transformer/`` shards of a diffusers layout)."""
        return self.filename.endswith("/")

    @property
    def uri(self) -> str:
        """The ``hf://repo_id/filename`` form accepted by :func:`resolve_checkpoint`."""
        return f"{HF_URI_SCHEME}{self.repo_id}/{self.filename}"

    @property
    def display(self) -> str:
        """How tables and reports name it: its :attr:`uri`."""
        return self.uri


@dataclass(frozen=True)
class PackageFile:
    """A weights file shipped inside an installed Python package (the toy model's), read in place."""

    package: str
    filename: str

    @property
    def path(self) -> Path:
        """The file's local path inside the installed package."""
        from importlib import resources

        return Path(str(resources.files(self.package).joinpath(self.filename)))

    @property
    def uri(self) -> str:
        """The local path, which :func:`resolve_checkpoint` accepts as it is."""
        return str(self.path)

    @property
    def display(self) -> str:
        """How tables and reports name it, the same on every machine: ``"memrope.toy/toy_dit.safetensors (shipped)"``."""
        return f"{self.package}/{self.filename} (shipped)"


@dataclass(frozen=True)
class CheckpointSource:
    """A named, downloadable set of DiT weights.

    Attributes:
        weights: the file (or folder of shards) holding the DiT weights.
        kind: how to read ``weights`` (see :func:`read_state_dict`).
        lora: a PEFT LoRA merged into ``weights`` on load, or None.
        description: one line for humans.
        use_ema: which generator of a training checkpoint the family's own inference loads
            (``generator_ema`` when True, ``generator`` when False); the default of
            :func:`load_wan_weights` for this name.
    """

    weights: HubFile | PackageFile
    kind: CheckpointKind
    lora: HubFile | None = None
    description: str = ""
    use_ema: bool = True


CAUSAL_FORCING_REPO = "zhuhz22/Causal-Forcing"
KREA_REALTIME_REPO = "krea/krea-realtime-video"


CHECKPOINTS: Mapping[str, CheckpointSource] = MappingProxyType(
    {
        "self-forcing": CheckpointSource(
            weights=HubFile("gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt"),
            kind="self_forcing",
            description="Self-Forcing DMD causal Wan2.1-T2V-1.3B (EMA generator)",
        ),
        "longlive": CheckpointSource(
            weights=HubFile("Efficient-Large-Model/LongLive-1.3B", "models/longlive_base.pt"),
            kind="longlive",
            lora=HubFile("Efficient-Large-Model/LongLive-1.3B", "models/lora.pt"),
            description="LongLive-1.3B base generator with its rank-256 LoRA merged",
        ),
        "wan2.1-t2v-1.3b": CheckpointSource(
            weights=HubFile("Wan-AI/Wan2.1-T2V-1.3B", "diffusion_pytorch_model.safetensors"),
            kind="safetensors",
            description="original bidirectional Wan2.1-T2V-1.3B DiT",
        ),
        # Causal Forcing: file names from thu-ml/Causal-Forcing/README.md (the table and the `hf download`
        # lines). Its inference.py loads checkpoint["generator_ema" if --use_ema else "generator"] into
        # the training wrapper (names "model." or "model._fsdp_wrapped_module."); the README runs the
        # chunk-wise model without --use_ema and every frame-wise and long-video model with it.
        "causal-forcing-chunkwise": CheckpointSource(
            weights=HubFile(CAUSAL_FORCING_REPO, "chunkwise/causal_forcing.pt"),
            kind="self_forcing",
            description="Causal Forcing chunk-wise 4-step Wan2.1-T2V-1.3B (generator, as its README runs it)",
            use_ema=False,
        ),
        "causal-forcing-longvideo": CheckpointSource(
            weights=HubFile(CAUSAL_FORCING_REPO, "chunkwise/longvideo.pt"),
            kind="self_forcing",
            description="Causal Forcing minute-long chunk-wise generator (EMA), trained with Rolling Forcing",
        ),
        "causal-forcing-framewise": CheckpointSource(
            weights=HubFile(CAUSAL_FORCING_REPO, "framewise/causal_forcing.pt"),
            kind="self_forcing",
            description="Causal Forcing frame-wise 4-step Wan2.1-T2V-1.3B (EMA generator)",
        ),
        "causal-forcing-framewise-2step": CheckpointSource(
            weights=HubFile(CAUSAL_FORCING_REPO, "causal-forcing++/framewise-2step.pt"),
            kind="self_forcing",
            description="Causal Forcing++ frame-wise 2-step Wan2.1-T2V-1.3B (EMA generator)",
        ),
        "causal-forcing-framewise-1step": CheckpointSource(
            weights=HubFile(CAUSAL_FORCING_REPO, "causal-forcing++/framewise-1step.pt"),
            kind="self_forcing",
            description="Causal Forcing++ frame-wise 1-step Wan2.1-T2V-1.3B (EMA generator)",
        ),
        # CausVid: tianweiy/CausVid/README.md links autoregressive_checkpoint/; its
        # minimal_inference/autoregressive_inference.py loads torch.load(<folder>/model.pt)["generator"]
        # strictly into the training wrapper (names "model.<Wan name>"); the file has no EMA copy.
        "causvid": CheckpointSource(
            weights=HubFile("tianweiy/CausVid", "autoregressive_checkpoint/model.pt"),
            kind="self_forcing",
            description="CausVid autoregressive 3-step Wan2.1-T2V-1.3B (generator)",
            use_ema=False,
        ),
        # Reward Forcing: repo from JaydenLyh/Reward-Forcing/README.md (Models badge); its inference
        # command reads checkpoints/Reward-Forcing/rewardforcing.pt with --use_ema (Self-Forcing's
        # inference.py: generator_ema). The file name at the repository root is taken from that path.
        "reward-forcing": CheckpointSource(
            weights=HubFile("JaydenLu666/Reward-Forcing-T2V-1.3B", "rewardforcing.pt"),
            kind="self_forcing",
            description="Reward Forcing (Re-DMD) 4-step Wan2.1-T2V-1.3B (EMA generator)",
        ),
        # Krea Realtime 14B: both layouts of the same transformer are in krea/krea-realtime-video
        # (single file and transformer/diffusion_pytorch_model-0000{1,2,3}-of-00003.safetensors). The
        # single file is read by krea-ai/realtime-video/release_server.py with safetensors' load_file into
        # the training wrapper (it tests state_dict["model.blocks.0.self_attn.k.weight"]): "model." names.
        "krea-realtime-video-14b": CheckpointSource(
            weights=HubFile(KREA_REALTIME_REPO, "krea-realtime-video-14b.safetensors"),
            kind="safetensors",
            description="Krea Realtime 14B (Wan2.1-T2V-14B, Self-Forcing distilled), single safetensors file",
        ),
        "krea-realtime-video-14b-diffusers": CheckpointSource(
            weights=HubFile(KREA_REALTIME_REPO, "transformer/"),
            kind="safetensors",
            description="Krea Realtime 14B, the 3-shard diffusers-layout transformer/ folder",
        ),
        # The toy DiT (memrope.toy), trained by scripts/train_toy.py and shipped as package data.
        "toy": CheckpointSource(
            weights=PackageFile("memrope.toy", "toy_dit.safetensors"),
            kind="safetensors",
            description="toy causal DiT trained on memrope's drifting-shapes world (shipped, no download)",
        ),
    }
)


def resolve_checkpoint(
    source: PathLike,
    *,
    cache_dir: PathLike | None = None,
    local_dir: PathLike | None = None,
    revision: str | None = None,
) -> Path:
    """Turn a checkpoint source into a local path, downloading through the Hub cache if needed.

    Args:
        source: an existing local file or directory (checked first), ``hf://owner/name/path/in/repo``,
            or a name of :data:`CHECKPOINTS` (its weights file).
        cache_dir: Hugging Face cache directory (default: ``HF_HUB_CACHE``).
        local_dir: download into this plain directory instead of the cache.
        revision: branch, tag or commit of the Hub repository (default: ``main``).

    Returns:
        The path of the local file or directory.

    Raises:
        FileNotFoundError: the source is none of the above, or the Hub file is neither cached nor
            downloadable (e.g. with ``HF_HUB_OFFLINE=1``); the message says how to fetch it.
    """
    local_path = Path(source).expanduser()
    if local_path.exists():
        return local_path
    text = os.fspath(source)
    if text.startswith(HF_URI_SCHEME):
        hub_file = parse_hf_uri(text)
    elif text in CHECKPOINTS:
        weights = CHECKPOINTS[text].weights
        if isinstance(weights, PackageFile):
            if not weights.path.is_file():
                raise FileNotFoundError(
                    f"checkpoint {text!r}: the packaged file {weights.path} is missing; reinstall memrope "
                    "or retrain it with scripts/train_toy.py"
                )
            return weights.path
        hub_file = weights
    else:
        raise FileNotFoundError(
            f"checkpoint source {text!r} is not an existing file or directory, not an "
            f"'{HF_URI_SCHEME}owner/name/path/in/repo' URI and not a registered name "
            f"(one of: {', '.join(sorted(CHECKPOINTS))})"
        )
    return _download(hub_file, source=text, cache_dir=cache_dir, local_dir=local_dir, revision=revision)


def parse_hf_uri(uri: str) -> HubFile:
    """Split ``hf://owner/name/path/in/repo`` into repository id and file path (``.../folder/``: a folder).

    Raises:
        ValueError: the URI lacks the owner, the name or the file path.
    """
    parts = uri.removeprefix(HF_URI_SCHEME).strip("/").split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"source must look like '{HF_URI_SCHEME}owner/name/path/in/repo', got {uri!r}")
    owner, name, filename = parts
    return HubFile(f"{owner}/{name}", filename + "/" if uri.endswith("/") else filename)


def _download(
    hub_file: HubFile,
    *,
    source: str,
    cache_dir: PathLike | None,
    local_dir: PathLike | None,
    revision: str | None,
) -> Path:
    """Fetch one Hub file through ``hf_hub_download``, or one folder through ``snapshot_download`` (both
    honour ``HF_HUB_OFFLINE``: offline, a folder comes from the cached snapshot of ``revision``)."""
    cache = os.fspath(cache_dir) if cache_dir is not None else None
    local = os.fspath(local_dir) if local_dir is not None else None
    try:
        if hub_file.is_folder:
            snapshot = snapshot_download(
                hub_file.repo_id,
                revision=revision,
                cache_dir=cache,
                local_dir=local,
                allow_patterns=[f"{hub_file.filename}*"],
            )
            return _snapshot_folder(Path(snapshot), hub_file, source)
        downloaded = hf_hub_download(
            hub_file.repo_id, hub_file.filename, revision=revision, cache_dir=cache, local_dir=local
        )
    except (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        HfHubHTTPError,
        ConnectionError,
    ) as err:
        raise FileNotFoundError(_not_available_message(hub_file, source, cache_dir, revision, err)) from err
    return Path(downloaded)


def _snapshot_folder(snapshot: Path, hub_file: HubFile, source: str) -> Path:
    """``hub_file``'s folder inside a downloaded (or cached) snapshot of its repository."""
    folder = snapshot / hub_file.filename
    if not folder.is_dir():
        raise FileNotFoundError(
            f"checkpoint {source!r}: folder {hub_file.filename!r} of Hugging Face repo {hub_file.repo_id!r} "
            f"is not in its snapshot {snapshot}"
        )
    return folder


def _not_available_message(
    hub_file: HubFile, source: str, cache_dir: PathLike | None, revision: str | None, err: Exception
) -> str:
    cache = os.fspath(cache_dir) if cache_dir is not None else hub_constants.HF_HUB_CACHE
    offline = " (HF_HUB_OFFLINE is set, so nothing is downloaded)" if hub_constants.HF_HUB_OFFLINE else ""
    revision_flag = f" --revision {revision}" if revision else ""
    cache_flag = f" --cache-dir {cache}" if cache_dir is not None else ""
    what = "folder" if hub_file.is_folder else "file"
    files = f"--include '{hub_file.filename}*'" if hub_file.is_folder else hub_file.filename
    return (
        f"checkpoint {source!r}: {what} {hub_file.filename!r} of Hugging Face repo {hub_file.repo_id!r} "
        f"is not in the local cache {cache} and could not be downloaded{offline}: "
        f"{type(err).__name__}: {str(err).rstrip('.')}. Run `huggingface-cli download {hub_file.repo_id} "
        f"{files}{revision_flag}{cache_flag}` (or `hf download ...`) with network access, "
        f"or pass a local path to the file."
    )


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def normalise_key(name: str) -> str:
    """Map a checkpoint tensor name to the Wan model's own name.

    Removes wrapper segments (``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``,
    ``_orig_mod.``) anywhere, then any leading ``model.`` / ``base_model.model.`` (the training
    wrapper's and PEFT's prefixes), e.g. ``model._fsdp_wrapped_module.blocks.0.ffn.0.weight`` ->
    ``blocks.0.ffn.0.weight``.
    """
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    stripped = True
    while stripped:
        stripped = False
        for prefix in LEADING_PREFIXES:
            if name.startswith(prefix):
                name = name.removeprefix(prefix)
                stripped = True
    return name


def _is_diffusers_layout(names: Iterable[str]) -> bool:
    """Whether tensor names are diffusers' ``WanTransformer3DModel`` names (``condition_embedder.*``, ...)."""
    return any(marker in name for name in names for marker in DIFFUSERS_NAME_MARKERS)


def _normalise_keys(state_dict: Mapping[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    if _is_diffusers_layout(state_dict):
        try:
            state_dict = from_diffusers_state_dict(state_dict)
        except ValueError as err:
            raise CheckpointFormatError(
                f"{origin}: diffusers-layout names that cannot be mapped: {err}"
            ) from err
    normalised: dict[str, torch.Tensor] = {}
    originals: dict[str, str] = {}
    for name, tensor in state_dict.items():
        key = normalise_key(name)
        if key in normalised:
            raise CheckpointFormatError(
                f"{origin}: tensors {originals[key]!r} and {name!r} both map to {key!r} after "
                f"removing wrapper prefixes"
            )
        normalised[key] = tensor
        originals[key] = name
    return normalised


def read_state_dict(
    path: PathLike, *, use_ema: bool = True, kind: CheckpointKind = "auto"
) -> dict[str, torch.Tensor]:
    """Read DiT weights from a local file or directory, with normalised names (docs/design.md §9).

    Args:
        path: a ``.pt`` checkpoint, a ``.safetensors`` file or a directory of ``*.safetensors``.
        use_ema: from a training checkpoint take ``generator_ema`` (if present; otherwise
            ``generator``, with a warning unless ``kind="longlive"``, whose base has no EMA copy);
            False takes ``generator``.
        kind: ``"auto"`` (directories and ``.safetensors`` are safetensors; a ``.pt`` holding
            ``generator``/``generator_ema`` is a training checkpoint, else a bare state dict),
            ``"self_forcing"`` / ``"longlive"`` (training checkpoint required), ``"safetensors"`` or
            ``"state_dict"`` (bare ``torch.save``-d state dict required).

    Returns:
        name -> CPU tensor, names as in the Wan model.

    Raises:
        CheckpointFormatError: an empty, truncated or corrupted file, one in no checkpoint format, an
            unreadable structure, or a ``.pt`` needing arbitrary unpickling (each naming the file).
    """
    _check_kind(kind)
    path = Path(path)
    if kind == "safetensors" or (
        kind == "auto" and (_looks_like_safetensors(path) or _holds_safetensors(path))
    ):
        raw = _read_safetensors(path)
    elif path.is_dir():
        raise CheckpointFormatError(
            f"{path} is a directory; only directories of *.safetensors files are read "
            f"(kind='auto' or 'safetensors'), got kind={kind!r}"
        )
    else:
        raw = _unwrap_training_checkpoint(_torch_load(path), path=path, kind=kind, use_ema=use_ema)
    return _normalise_keys(raw, origin=str(path))


def read_lora_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a PEFT LoRA file (``.pt`` with ``generator_lora`` or bare, or ``.safetensors``).

    Returns:
        The LoRA tensors under their names in the file (``merge_lora`` normalises them).
    """
    path = Path(path)
    if _looks_like_safetensors(path) or _holds_safetensors(path):
        return _read_safetensors(path)
    checkpoint = _torch_load(path)
    if isinstance(checkpoint, Mapping) and GENERATOR_LORA_KEY in checkpoint:
        checkpoint = checkpoint[GENERATOR_LORA_KEY]
    return _as_tensor_dict(checkpoint, origin=f"LoRA {path}")


def _check_kind(kind: str) -> None:
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, CHECKPOINT_KINDS))}, got {kind!r}")


def _unwrap_training_checkpoint(
    checkpoint: object, *, path: Path, kind: CheckpointKind, use_ema: bool
) -> dict[str, torch.Tensor]:
    """Pick the generator state dict out of a training checkpoint, or accept a bare state dict."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointFormatError(f"{path} holds a {type(checkpoint).__name__}, expected a dict")
    is_training_checkpoint = GENERATOR_KEY in checkpoint or GENERATOR_EMA_KEY in checkpoint
    if kind == "state_dict" and is_training_checkpoint:
        raise CheckpointFormatError(
            f"{path} is a training checkpoint (has {GENERATOR_KEY!r}/{GENERATOR_EMA_KEY!r}), not a bare "
            f"state dict; use kind='self_forcing' or 'longlive' (or 'auto')"
        )
    if kind in ("self_forcing", "longlive") and not is_training_checkpoint:
        top_level = _first_names([str(key) for key in checkpoint])
        raise CheckpointFormatError(
            f"{path} has neither {GENERATOR_EMA_KEY!r} nor {GENERATOR_KEY!r} (kind={kind!r}); "
            f"its top-level keys: {top_level}"
        )
    if not is_training_checkpoint:
        return _as_tensor_dict(checkpoint, origin=str(path))
    entry = _select_generator(checkpoint, path=path, use_ema=use_ema, warn_on_fallback=kind != "longlive")
    return _as_tensor_dict(checkpoint[entry], origin=f"{path}[{entry!r}]")


def _select_generator(
    checkpoint: Mapping[str, object], *, path: Path, use_ema: bool, warn_on_fallback: bool
) -> str:
    if use_ema and GENERATOR_EMA_KEY in checkpoint:
        return GENERATOR_EMA_KEY
    if GENERATOR_KEY in checkpoint:
        if use_ema and warn_on_fallback:
            warnings.warn(
                f"{path} has no {GENERATOR_EMA_KEY!r}; loading {GENERATOR_KEY!r} instead", stacklevel=4
            )
        return GENERATOR_KEY
    raise CheckpointFormatError(
        f"{path} has {GENERATOR_EMA_KEY!r} but no {GENERATOR_KEY!r}; pass use_ema=True to load the EMA weights"
    )


# --------------------------------------------------------------------------------------------------
# LoRA merge
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LoraPair:
    """The two factors of one LoRA: ``down`` (A) ``[rank, in]`` and ``up`` (B) ``[out, rank]``."""

    down_name: str
    down: torch.Tensor
    up_name: str
    up: torch.Tensor


def _split_lora_name(name: str) -> tuple[str, str] | None:
    """``blocks.0.self_attn.q.lora_A[.default].weight`` -> (``blocks.0.self_attn.q``, ``A``)."""
    parts = normalise_key(name).split(".")
    if len(parts) < 3 or parts[-1] != "weight":
        return None
    factor_at = len(parts) - 2 if parts[-2] in ("lora_A", "lora_B") else len(parts) - 3
    if factor_at < 1 or parts[factor_at] not in ("lora_A", "lora_B"):
        return None
    return ".".join(parts[:factor_at]), parts[factor_at][-1]


def _pair_lora_factors(lora_state_dict: Mapping[str, torch.Tensor]) -> dict[str, _LoraPair]:
    """Group LoRA tensors by the module they adapt (its normalised name)."""
    factors: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    unsupported: list[str] = []
    for name, tensor in lora_state_dict.items():
        split = _split_lora_name(name)
        if split is None:
            unsupported.append(name)
            continue
        module_name, factor = split
        if factor in factors.setdefault(module_name, {}):
            raise CheckpointFormatError(
                f"LoRA has two lora_{factor} tensors for {module_name!r} "
                f"({factors[module_name][factor][0]!r}, {name!r}); merge one adapter at a time"
            )
        factors[module_name][factor] = (name, tensor)
    if unsupported:
        raise CheckpointFormatError(
            f"LoRA has {_count(unsupported, 'tensor')} that are not '<module>.lora_A/lora_B[.<adapter>].weight' "
            f"(only plain LoRA on Linear weights is merged): {_first_names(sorted(unsupported))}"
        )
    unpaired = sorted(names[factor][0] for names in factors.values() for factor in names if len(names) == 1)
    if unpaired:
        raise CheckpointFormatError(f"LoRA tensors without their A/B partner: {_first_names(unpaired)}")
    return {
        module_name: _LoraPair(names["A"][0], names["A"][1], names["B"][0], names["B"][1])
        for module_name, names in factors.items()
    }


def merge_lora(
    state_dict: Mapping[str, torch.Tensor],
    lora_state_dict: Mapping[str, torch.Tensor],
    *,
    alpha: float | None = None,
) -> dict[str, torch.Tensor]:
    """Merge a PEFT LoRA into base weights: ``W += (alpha / rank) * B @ A`` per adapted Linear.

    Args:
        state_dict: base weights with normalised names (``blocks.0.self_attn.q.weight`` ``[out, in]``).
        lora_state_dict: PEFT names such as ``base_model.model.blocks.0.self_attn.q.lora_A.weight``
            ``[rank, in]`` and ``...lora_B.weight`` ``[out, rank]``; ``model.`` prefixes and adapter
            names (``lora_A.default.weight``) are accepted. The rank is read from the tensors.
        alpha: LoRA alpha; None means alpha = rank (scale 1.0, LongLive's alpha 256 / rank 256).

    Returns:
        A new dict: ``state_dict`` with the adapted weights replaced (merge computed in float32, then
        cast to each weight's dtype); the inputs are not modified.

    Raises:
        CheckpointFormatError: a LoRA tensor name is not a plain A/B factor, or lacks its partner.
        CheckpointKeyError: a LoRA adapts a weight absent from ``state_dict``, or shapes disagree.
        NonFiniteError: a merged weight holds NaN or infinity; the message names it and the cause (a
            non-finite base weight or factor, or a merged value that overflows the weight's dtype).
    """
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number or None (alpha = rank), got {alpha!r}")
    pairs = _pair_lora_factors(lora_state_dict)
    if not pairs:
        raise CheckpointFormatError("LoRA state dict is empty")
    absent_targets = sorted(
        name
        for module, pair in pairs.items()
        if f"{module}.weight" not in state_dict
        for name in (pair.down_name, pair.up_name)
    )
    if absent_targets:
        raise CheckpointKeyError(
            "LoRA adapts weights that are not in the base state dict", unexpected=absent_targets
        )
    mismatches = [
        _lora_shape_mismatch(pair, state_dict[f"{module}.weight"]) for module, pair in pairs.items()
    ]
    if any(mismatches):
        raise CheckpointKeyError(
            "LoRA factors do not fit their base weights (B @ A vs weight)",
            shape_mismatches=[mismatch for mismatch in mismatches if mismatch is not None],
        )
    merged = dict(state_dict)
    for module, pair in pairs.items():
        weight = state_dict[f"{module}.weight"]
        rank = pair.down.shape[0]
        scale = (float(alpha) if alpha is not None else float(rank)) / rank
        delta = pair.up.to(weight.device, torch.float32) @ pair.down.to(weight.device, torch.float32)
        merged_weight = (weight.to(torch.float32) + scale * delta).to(weight.dtype)
        summary = nonfinite_summary(merged_weight)
        if summary is not None:
            raise NonFiniteError(
                f"merging the LoRA into {module}.weight gives {summary}: {_merge_failure_cause(pair, weight, scale)}"
            )
        merged[f"{module}.weight"] = merged_weight
    return merged


def _merge_failure_cause(pair: _LoraPair, weight: torch.Tensor, scale: float) -> str:
    """Why a merged weight is not finite: a non-finite input, or an overflow of the weight's dtype."""
    for what, tensor in (
        ("the base weight", weight),
        (f"LoRA factor {pair.down_name!r}", pair.down),
        (f"LoRA factor {pair.up_name!r}", pair.up),
    ):
        summary = nonfinite_summary(tensor)
        if summary is not None:
            return f"{what} holds {summary}; {NONFINITE_WEIGHTS_ADVICE}"
    return (
        f"the weight and the factors are finite, but W + {scale:g} * B @ A overflows {weight.dtype}; load the "
        f"weights in float32 or bfloat16, or check lora_alpha"
    )


def _lora_shape_mismatch(
    pair: _LoraPair, weight: torch.Tensor
) -> tuple[str, tuple[int, ...], tuple[int, ...]] | None:
    """None when ``B [out, r] @ A [r, in]`` fits ``weight [out, in]``, else a description."""
    down_shape, up_shape, weight_shape = tuple(pair.down.shape), tuple(pair.up.shape), tuple(weight.shape)
    fits = (
        len(down_shape) == 2
        and len(up_shape) == 2
        and len(weight_shape) == 2
        and up_shape[1] == down_shape[0]
        and (up_shape[0], down_shape[1]) == weight_shape
    )
    if fits:
        return None
    product_shape = (up_shape[0], down_shape[-1])
    return (
        f"{pair.up_name} {list(up_shape)} @ {pair.down_name} {list(down_shape)}",
        product_shape,
        weight_shape,
    )


# --------------------------------------------------------------------------------------------------
# Strict loading and the high-level entry point
# --------------------------------------------------------------------------------------------------


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, origin: str | None = None
) -> nn.Module:
    """Check names and shapes of ``state_dict`` against ``module``, then load it (strict).

    Args:
        module: the target; its ``state_dict()`` (parameters and persistent buffers) must be covered
            exactly.
        state_dict: name -> tensor; values are copied into the module's tensors (cast to their dtype).
        origin: where the tensors come from, named in the error message.

    Returns:
        ``module`` (loaded in place).

    Raises:
        CheckpointKeyError: listing missing and unexpected names and shape mismatches, with counts.
    """
    expected = module.state_dict()
    mismatches = [
        (name, tuple(tensor.shape), tuple(expected[name].shape))
        for name, tensor in state_dict.items()
        if name in expected and tensor.shape != expected[name].shape
    ]
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    if missing or unexpected or mismatches:
        source = f"checkpoint {origin}" if origin is not None else "state dict"
        raise CheckpointKeyError(
            f"{source} does not match {type(module).__name__}",
            missing=missing,
            unexpected=unexpected,
            shape_mismatches=mismatches,
        )
    module.load_state_dict(state_dict, strict=True)
    return module


def load_wan_weights(
    model: nn.Module,
    source: PathLike,
    *,
    kind: CheckpointKind = "auto",
    use_ema: bool | None = None,
    lora: PathLike | None = None,
    lora_alpha: float | None = None,
    cache_dir: PathLike | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Resolve, read, normalise, LoRA-merge, validate and load DiT weights into ``model`` in place.

    Args:
        model: the Wan causal DiT (``memrope.models.wan.CausalWanModel``), names as in docs/design.md §9.
        source: local file/directory, ``hf://owner/name/path``, or a :data:`CHECKPOINTS` name.
        kind: file format (see :func:`read_state_dict`); ``"auto"`` takes a registry name's own kind.
            ``"longlive"`` needs a LoRA: ``lora=`` or the registry's.
        use_ema: prefer the ``generator_ema`` weights of a training checkpoint; None: the registry
            entry's choice (:attr:`CheckpointSource.use_ema`, what the family's own inference loads)
            when ``source`` is a registry name, else True.
        lora: source of a PEFT LoRA to merge (same forms as ``source``); default: the registry
            entry's LoRA when ``source`` is a registry name.
        lora_alpha: LoRA alpha; None means alpha = rank (scale 1).
        cache_dir: Hugging Face cache directory for Hub sources.
        dtype: if given, ``model.to(dtype)`` after loading; None keeps the model's dtypes.

    Returns:
        ``model``.

    Raises:
        NonFiniteError: a weight or LoRA factor of the files, or a merged weight, holds NaN or
            infinity (the message names the file and the tensors); ``model`` is left untouched.
    """
    _check_kind(kind)
    registry_entry = _registry_entry(source)
    effective_kind: CheckpointKind = registry_entry.kind if kind == "auto" and registry_entry else kind
    if use_ema is None:
        use_ema = registry_entry.use_ema if registry_entry is not None else True
    elif not isinstance(use_ema, bool):
        raise TypeError(f"use_ema must be True, False or None (the registry entry's choice), got {use_ema!r}")
    weights_path = resolve_checkpoint(source, cache_dir=cache_dir)
    state_dict = read_state_dict(weights_path, use_ema=use_ema, kind=effective_kind)
    _check_finite_tensors(state_dict, origin=f"checkpoint {weights_path}", advice=NONFINITE_WEIGHTS_ADVICE)
    lora_path = _resolve_lora(lora, registry_entry, cache_dir=cache_dir)
    if lora_path is not None:
        lora_state_dict = read_lora_state_dict(lora_path)
        _check_finite_tensors(lora_state_dict, origin=f"LoRA {lora_path}", advice=NONFINITE_WEIGHTS_ADVICE)
        state_dict = merge_lora(state_dict, lora_state_dict, alpha=lora_alpha)
    elif effective_kind == "longlive":
        longlive_lora = CHECKPOINTS["longlive"].lora
        raise ValueError(
            f"kind='longlive' needs LongLive's LoRA: pass lora=<path to lora.pt> "
            f"(e.g. lora={longlive_lora.uri if longlive_lora else None!r}) or source='longlive'"
        )
    load_state_dict_strict(model, state_dict, origin=str(weights_path))
    if dtype is not None:
        model.to(dtype)
    return model


def _registry_entry(source: PathLike) -> CheckpointSource | None:
    """The registry entry ``source`` names, unless it is an existing local path."""
    if Path(source).expanduser().exists():
        return None
    return CHECKPOINTS.get(os.fspath(source))


def _resolve_lora(
    lora: PathLike | None, registry_entry: CheckpointSource | None, *, cache_dir: PathLike | None
) -> Path | None:
    if lora is not None:
        return resolve_checkpoint(lora, cache_dir=cache_dir)
    if registry_entry is not None and registry_entry.lora is not None:
        return resolve_checkpoint(registry_entry.lora.uri, cache_dir=cache_dir)
    return None

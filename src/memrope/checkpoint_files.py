"""Checkpoint files: the format checks and readers behind :mod:`memrope.loading`.

What lives here: the checkpoint errors (:class:`CheckpointFormatError`, :class:`CheckpointKeyError`), the
checks that a file is a whole ``torch.save`` checkpoint or safetensors file before it is parsed (an empty,
truncated or foreign file raises ``CheckpointFormatError`` naming it), ``torch.load(..., weights_only=True)``
(a file needing arbitrary unpickling is refused), reading one safetensors file or a directory of shards,
and the NaN/infinity checks (:func:`nonfinite_summary`). :mod:`memrope.loading` re-exports the public
names; import them from there.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors_file

from memrope.errors import NonFiniteError

__all__ = [
    "CheckpointFormatError",
    "CheckpointKeyError",
    "check_safetensors_file",
    "nonfinite_summary",
]

PathLike = Union[str, "os.PathLike[str]"]

SAFETENSORS_SUFFIX = ".safetensors"
SAFETENSORS_INDEX_PATTERN = "*.safetensors.index.json"
SAFETENSORS_LENGTH_BYTES = 8  # a safetensors file starts with its JSON header's length, u64 little-endian
SAFETENSORS_MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses longer headers
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_PROTOCOL_OPCODE = 0x80  # torch.save's legacy format: a pickle, protocol 2 to 5
PICKLE_PROTOCOLS = range(2, 6)
PREFIX_SHOWN_BYTES = 8
NAMES_SHOWN = 5
REFETCH_ADVICE = (
    "fetch it again (download it again; for a Hugging Face Hub file, delete it from the Hub cache and rerun) "
    "or save it again"
)
NONFINITE_WEIGHTS_ADVICE = (
    "the file is damaged or was saved from a diverged training run; use another checkpoint or fetch this "
    "one again"
)


class CheckpointFormatError(ValueError):
    """A checkpoint file is not in a format this module reads (or needs unsafe unpickling)."""


class CheckpointKeyError(ValueError):
    """Tensor names or shapes of a checkpoint do not match their target.

    Attributes:
        missing_keys: names the target needs that the checkpoint lacks.
        unexpected_keys: names in the checkpoint the target does not have.
        shape_mismatches: ``(name, checkpoint_shape, target_shape)`` triples.
    """

    def __init__(
        self,
        headline: str,
        *,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        shape_mismatches: Iterable[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        self.missing_keys = sorted(missing)
        self.unexpected_keys = sorted(unexpected)
        self.shape_mismatches = sorted(shape_mismatches)
        parts = [headline]
        if self.missing_keys:
            parts.append(f"{_count(self.missing_keys, 'missing key')}: {_first_names(self.missing_keys)}")
        if self.unexpected_keys:
            parts.append(
                f"{_count(self.unexpected_keys, 'unexpected key')}: {_first_names(self.unexpected_keys)}"
            )
        if self.shape_mismatches:
            described = [
                f"{name} (checkpoint {list(found)}, target {list(wanted)})"
                for name, found, wanted in self.shape_mismatches
            ]
            parts.append(f"{_count(described, 'shape mismatch', 'es')}: {_first_names(described)}")
        super().__init__("; ".join(parts))


def _count(items: Sequence[object], noun: str, plural_suffix: str = "s") -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else plural_suffix}"


def _first_names(names: Sequence[str], shown: int = NAMES_SHOWN) -> str:
    listed = ", ".join(names[:shown])
    hidden = len(names) - shown
    return f"{listed}, ... ({hidden} more)" if hidden > 0 else listed


# --------------------------------------------------------------------------------------------------
# Checking and reading files
# --------------------------------------------------------------------------------------------------


def _looks_like_safetensors(path: Path) -> bool:
    return path.is_dir() or path.suffix == SAFETENSORS_SUFFIX


def _torch_load(path: Path) -> object:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``), after checking
    that ``path`` is a whole ``torch.save`` file."""
    _check_torch_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise _unreadable(path, err) from err
        raise CheckpointFormatError(
            f"refusing to load {path}: it holds objects other than tensors and plain containers, and "
            f"memrope never unpickles arbitrary objects (torch.load(weights_only=True) failed). Re-save "
            f"its state dict with torch.save or safetensors in a trusted environment. "
            f"Cause: {_unpickler_reason(err)}"
        ) from err
    except (OSError, MemoryError):
        raise
    except (
        Exception
    ) as err:  # torch's readers fail on damaged files with many types (EOFError, RuntimeError, ...)
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: BaseException) -> CheckpointFormatError:
    lines = str(err).strip().splitlines()
    cause = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return CheckpointFormatError(
        f"{path} cannot be read: it is truncated or corrupted ({cause}); {REFETCH_ADVICE}"
    )


def _check_torch_file(path: Path) -> None:
    """Refuse an empty file, a truncated zip checkpoint, and files in neither torch.save format."""
    size = _file_size(path)
    torch_format = _torch_save_format(path)
    if torch_format == "zip":
        if not zipfile.is_zipfile(path):
            raise CheckpointFormatError(
                f"{path} is truncated: it is a PyTorch (zip) checkpoint of {size} bytes whose end, the zip "
                f"directory, is missing; {REFETCH_ADVICE}"
            )
        return
    if torch_format == "pickle":
        return
    if _holds_safetensors(path):
        raise CheckpointFormatError(
            f"{path} holds safetensors data, not a torch.save checkpoint: read it with kind='safetensors' "
            f"(or name it *{SAFETENSORS_SUFFIX})"
        )
    raise CheckpointFormatError(_not_a_checkpoint_message(path))


def _torch_save_format(path: Path) -> Literal["zip", "pickle"] | None:
    """How the file starts: like torch.save's zip format, its legacy pickle format, or neither."""
    with path.open("rb") as handle:
        prefix = handle.read(len(ZIP_MAGIC))
    if prefix == ZIP_MAGIC:
        return "zip"
    if len(prefix) >= 2 and prefix[0] == PICKLE_PROTOCOL_OPCODE and prefix[1] in PICKLE_PROTOCOLS:
        return "pickle"
    return None


def _not_a_checkpoint_message(path: Path) -> str:
    with path.open("rb") as handle:
        prefix = handle.read(PREFIX_SHOWN_BYTES)
    return (
        f"{path} is not a PyTorch checkpoint (torch.save) or a safetensors file (it starts with {prefix!r}); "
        f"check that the path names the weights file (not, e.g., a text or HTML page saved in its place), "
        f"or {REFETCH_ADVICE}"
    )


def _file_size(path: Path) -> int:
    """The size of the file ``path`` in bytes; an empty file is refused (nothing to read)."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFormatError(
            f"{path} is empty (0 bytes): a download or save into it did not finish; {REFETCH_ADVICE}"
        )
    return size


def _safetensors_header_length(path: Path) -> int | None:
    """The header length a safetensors file at ``path`` declares, or None if it does not start like one."""
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        prefix = handle.read(SAFETENSORS_LENGTH_BYTES + 1)
    if len(prefix) <= SAFETENSORS_LENGTH_BYTES or prefix[-1:] != b"{":
        return None
    header_length = int.from_bytes(prefix[:SAFETENSORS_LENGTH_BYTES], "little")
    return header_length if 2 <= header_length <= SAFETENSORS_MAX_HEADER_BYTES else None


def _holds_safetensors(path: Path) -> bool:
    return _safetensors_header_length(path) is not None


def check_safetensors_file(path: PathLike) -> None:
    """Check that ``path`` is a whole safetensors file, before reading it.

    Reads the 8-byte header length and the JSON header only, and compares the size the header
    implies (header plus the end of the last tensor's data) with the file's.

    Raises:
        CheckpointFormatError: naming the file: it is empty, not a safetensors file, has a damaged
            header, or is truncated (``expected N bytes, got M``) or longer than its header says.
        FileNotFoundError: there is no such file.
    """
    path = Path(path)
    size = _file_size(path)
    header_length = _safetensors_header_length(path)
    if header_length is None:
        if _torch_save_format(path) is not None:
            raise CheckpointFormatError(
                f"{path} holds a torch.save checkpoint, not safetensors: name it *.pt (kind='auto' then reads "
                f"it as one)"
            )
        raise CheckpointFormatError(_not_a_checkpoint_message(path))
    header_end = SAFETENSORS_LENGTH_BYTES + header_length
    if size < header_end:
        raise CheckpointFormatError(
            f"{path} is truncated: its safetensors header alone needs {header_end} bytes, got {size}; "
            f"{REFETCH_ADVICE}"
        )
    with path.open("rb") as handle:
        handle.seek(SAFETENSORS_LENGTH_BYTES)
        header_bytes = handle.read(header_length)
    data_bytes = _safetensors_data_bytes(header_bytes)
    if data_bytes is None:
        raise CheckpointFormatError(
            f"{path} is corrupted: its safetensors header is not a valid JSON table of tensors; {REFETCH_ADVICE}"
        )
    expected = header_end + data_bytes
    if size < expected:
        raise CheckpointFormatError(
            f"{path} is truncated: expected {expected} bytes, got {size} ({expected - size} missing); "
            f"{REFETCH_ADVICE}"
        )
    if size > expected:
        raise CheckpointFormatError(
            f"{path} is corrupted: expected {expected} bytes, got {size} ({size - expected} more than its "
            f"header describes); {REFETCH_ADVICE}"
        )


def _safetensors_data_bytes(header_bytes: bytes) -> int | None:
    """Bytes of tensor data a safetensors header describes (the largest end offset), None if malformed."""
    try:
        header = json.loads(header_bytes)
        ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
    except (
        UnicodeDecodeError,
        json.JSONDecodeError,
        AttributeError,
        KeyError,
        TypeError,
        IndexError,
        ValueError,
    ):
        return None
    return max(ends, default=0)


def _unpickler_reason(err: pickle.UnpicklingError) -> str:
    """The line of torch's (long) weights-only error that names the refused object, if any."""
    message = str(err)
    reasons = [
        line.strip() for line in message.splitlines() if line.strip().startswith("WeightsUnpickler error:")
    ]
    return reasons[0] if reasons else message


def _as_tensor_dict(mapping: object, *, origin: str) -> dict[str, torch.Tensor]:
    """Check that ``mapping`` is a name -> tensor dict and return a plain copy of it."""
    if not isinstance(mapping, Mapping):
        raise CheckpointFormatError(f"{origin} holds a {type(mapping).__name__}, expected a state dict")
    not_tensors = [str(name) for name, value in mapping.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointFormatError(
            f"{origin} is not a state dict: {_count(not_tensors, 'entry', 'ies')} not a tensor "
            f"({_first_names(not_tensors)})"
        )
    return {str(name): tensor for name, tensor in mapping.items()}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read one safetensors file or every shard of a directory into one dict."""
    shard_paths, indexed_names = _safetensors_shards(path)
    return _merge_safetensors_shards(shard_paths, indexed_names, path)


def _merge_safetensors_shards(
    shard_paths: list[Path], indexed_names: set[str] | None, path: Path
) -> dict[str, torch.Tensor]:
    """Read ``shard_paths`` into one dict: no tensor in two shards, and exactly the names the index of
    ``path`` promises (``indexed_names``; ``None`` without an index)."""
    merged: dict[str, torch.Tensor] = {}
    for shard_path in shard_paths:
        check_safetensors_file(shard_path)
        try:
            shard = load_safetensors_file(shard_path, device="cpu")
        except SafetensorError as err:
            raise CheckpointFormatError(
                f"{shard_path} cannot be read as safetensors ({err}); {REFETCH_ADVICE}"
            ) from err
        duplicated = sorted(merged.keys() & shard.keys())
        if duplicated:
            raise CheckpointFormatError(
                f"{shard_path} repeats {_count(duplicated, 'tensor')} of earlier shards: "
                f"{_first_names(duplicated)}"
            )
        merged.update(shard)
    if indexed_names is not None and indexed_names != merged.keys():
        raise CheckpointKeyError(
            f"shards in {path} do not match their index",
            missing=indexed_names - merged.keys(),
            unexpected=merged.keys() - indexed_names,
        )
    return merged


def _safetensors_shards(path: Path) -> tuple[list[Path], set[str] | None]:
    """Shard files to read, and the tensor names the index promises (None without an index)."""
    if not path.is_dir():
        return [path], None
    index_paths = sorted(path.glob(SAFETENSORS_INDEX_PATTERN))
    if len(index_paths) > 1:
        raise CheckpointFormatError(
            f"{path} holds several safetensors indexes ({', '.join(p.name for p in index_paths)}); "
            f"pass the directory of one model or one file"
        )
    if index_paths:
        weight_map: dict[str, str] = json.loads(index_paths[0].read_text())["weight_map"]
        shard_paths = [path / name for name in sorted(set(weight_map.values()))]
        absent = [str(p) for p in shard_paths if not p.is_file()]
        if absent:
            raise CheckpointFormatError(
                f"{index_paths[0]} lists shard files that do not exist: {', '.join(absent)}"
            )
        return shard_paths, set(weight_map)
    shard_paths = sorted(path.glob(f"*{SAFETENSORS_SUFFIX}"))
    if not shard_paths:
        raise CheckpointFormatError(f"directory {path} holds no *{SAFETENSORS_SUFFIX} files")
    return shard_paths, None


# --------------------------------------------------------------------------------------------------
# Non-finite values
# --------------------------------------------------------------------------------------------------


def nonfinite_summary(tensor: torch.Tensor) -> str | None:
    """``None`` when every element of ``tensor`` is finite, else how many are NaN or infinite.

    E.g. ``"3 NaN and 1 inf of 4096 elements"``. One host sync (more only when something is not
    finite); integer and boolean tensors are always finite.
    """
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return None
    if tensor.element_size() == 1:  # float8: isfinite is not implemented for it
        tensor = tensor.to(torch.float16)
    if bool(torch.isfinite(tensor).all()):
        return None
    nan_count = int(torch.isnan(tensor).sum())
    inf_count = int(torch.isinf(tensor).sum())
    counts = [f"{count} {kind}" for count, kind in ((nan_count, "NaN"), (inf_count, "inf")) if count]
    return f"{' and '.join(counts)} of {tensor.numel()} elements"


def _check_finite_tensors(tensors: Mapping[str, torch.Tensor], *, origin: str, advice: str) -> None:
    """Raise :class:`NonFiniteError` naming every tensor of ``tensors`` that holds NaN or infinity."""
    flawed = [
        f"{name!r} ({summary})"
        for name, tensor in tensors.items()
        if (summary := nonfinite_summary(tensor)) is not None
    ]
    if flawed:
        raise NonFiniteError(
            f"{origin}: {_count(flawed, 'tensor')} with NaN or infinite values: {_first_names(flawed)}; {advice}"
        )

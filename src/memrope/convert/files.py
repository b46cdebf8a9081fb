"""Diffusers-layout files: reading a ``WanTransformer3DModel`` folder or Hub id, writing either layout.

See :mod:`memrope.convert`; this module never imports diffusers.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from memrope._files import atomic_replace, default_file_mode, swap_folder
from memrope.checkpoint_files import (
    NONFINITE_WEIGHTS_ADVICE,
    CheckpointFormatError,
    PathLike,
    _check_finite_tensors,
    _first_names,
    _merge_safetensors_shards,
)
from memrope.convert.names import (
    DIFFUSERS_CLASS_NAME,
    check_official_state_dict,
    describe_config,
    diffusers_config,
    from_diffusers_state_dict,
    to_diffusers_state_dict,
    wan_config_from_diffusers,
)
from memrope.models.wan_config import WanConfig

if TYPE_CHECKING:
    from memrope.models.wan import CausalWanModel

# memrope.loading imports memrope.convert (it reads diffusers-named checkpoints), so this package never
# imports memrope.loading; converting a checkpoint file, which needs both, is memrope.cli.convert.


Layout = Literal["diffusers", "original"]
LAYOUTS: tuple[str, ...] = get_args(Layout)

DIFFUSERS_CONFIG_NAME = "config.json"
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_WEIGHTS_PATTERN = "diffusion_pytorch_model{suffix}.safetensors"  # huggingface_hub's shard names
#: the files of a diffusers model folder (all a Hub download fetches); pickled ``.bin`` weights are not read
_DIFFUSERS_FILE_PATTERNS = (
    DIFFUSERS_CONFIG_NAME,
    DIFFUSERS_WEIGHTS_NAME,
    f"{DIFFUSERS_WEIGHTS_NAME}.index.json",
    "diffusion_pytorch_model-*-of-*.safetensors",
)
#: diffusers' ``save_pretrained`` default ``max_shard_size`` ("10GB")
DEFAULT_MAX_SHARD_BYTES = 10 * 10**9
_HUB_ID = re.compile(r"(?:hf://)?([A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)/?")


# --------------------------------------------------------------------------------------------------
# Reading a diffusers transformer (local folder, Hub id, or a model object)
# --------------------------------------------------------------------------------------------------


def _is_diffusers_folder(folder: Path) -> bool:
    config_file = folder / DIFFUSERS_CONFIG_NAME
    if not config_file.is_file():
        return False
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("_class_name") == DIFFUSERS_CLASS_NAME


def _transformer_folder(folder: Path, subfolder: str | None, *, origin: str) -> Path:
    """The folder holding ``config.json`` and the weights: ``folder/subfolder`` if there, else ``folder``."""
    candidates = [folder / subfolder, folder] if subfolder else [folder]
    for candidate in candidates:
        if (candidate / DIFFUSERS_CONFIG_NAME).is_file():
            return candidate
    looked = " or ".join(str(candidate / DIFFUSERS_CONFIG_NAME) for candidate in candidates)
    raise CheckpointFormatError(f"{origin} is not a diffusers model folder: there is no {looked}")


def _diffusers_weight_files(folder: Path) -> tuple[list[Path], set[str] | None]:
    """The safetensors files of a diffusers model folder and the names its index promises (or None)."""
    index = folder / f"{DIFFUSERS_WEIGHTS_NAME}.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointFormatError(f"{index} is not a safetensors index ({err})") from err
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [shard.name for shard in shards if not shard.is_file()]
        if absent:
            raise CheckpointFormatError(f"{index} lists shard files that are not in {folder}: {absent}")
        return shards, set(weight_map)
    single = folder / DIFFUSERS_WEIGHTS_NAME
    if single.is_file():
        return [single], None
    pickled = sorted(path.name for path in folder.glob("diffusion_pytorch_model*.bin"))
    refused = (
        f" ({pickled} are pickles, which memrope never loads: convert them to safetensors)" if pickled else ""
    )
    raise CheckpointFormatError(f"{folder} has neither {DIFFUSERS_WEIGHTS_NAME} nor its index{refused}")


def _read_diffusers_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Diffusers-name tensors and the config dict of one diffusers model folder."""
    config_file = folder / DIFFUSERS_CONFIG_NAME
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointFormatError(f"{config_file} is not a JSON config ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointFormatError(f"{config_file} holds a {type(config).__name__}, expected a JSON object")
    shards, indexed = _diffusers_weight_files(folder)
    return _merge_safetensors_shards(shards, indexed, folder), config


def _download_diffusers(
    repo_id: str, *, subfolder: str | None, revision: str | None, cache_dir: PathLike | None
) -> Path:
    """Fetch just the transformer files of a Hub repository (``subfolder/`` or its top level)."""
    from huggingface_hub import snapshot_download

    def fetch(prefix: str) -> Path:
        patterns = [f"{prefix}{name}" for name in _DIFFUSERS_FILE_PATTERNS]
        try:
            folder = snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
                allow_patterns=patterns,
            )
        except (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
            HfHubHTTPError,
        ) as err:
            offline = " (HF_HUB_OFFLINE is set)" if hub_constants.HF_HUB_OFFLINE else ""
            raise FileNotFoundError(
                f"{repo_id!r} is no local folder, and as a Hub id of a diffusers transformer it is neither in "
                f"the Hugging Face cache nor downloadable{offline}: "
                f"{type(err).__name__}: {err}. Run `hf download {repo_id} --include "
                f"'{prefix}*'` with network access, or pass a local folder"
            ) from err
        return Path(folder)

    snapshot = fetch(f"{subfolder}/" if subfolder else "")
    if subfolder and not (snapshot / subfolder / DIFFUSERS_CONFIG_NAME).is_file():
        snapshot = fetch("")
    return snapshot


def read_diffusers_transformer(
    source: PathLike | torch.nn.Module,
    *,
    revision: str | None = None,
    subfolder: str | None = "transformer",
    cache_dir: PathLike | None = None,
    text_len: int = WanConfig.text_len,
) -> tuple[dict[str, torch.Tensor], WanConfig]:
    """Read a diffusers ``WanTransformer3DModel`` as official-name weights and their :class:`WanConfig`.

    Args:
        source: a local folder (a pipeline folder with ``subfolder/``, or the transformer folder itself),
            a Hub id ``owner/name`` or ``hf://owner/name`` (only ``config.json`` and ``diffusion_pytorch_model*.safetensors`` of
            ``subfolder/`` are downloaded, or of the top level when the repository has no ``subfolder/``),
            or a ``WanTransformer3DModel`` object. Weights are read from safetensors only (one file, or
            shards listed by ``diffusion_pytorch_model.safetensors.index.json``); pickles are refused.
        revision: branch, tag or commit of a Hub repository.
        subfolder: where a pipeline keeps its transformer; None: the folder itself.
        cache_dir: Hugging Face cache folder (default ``HF_HUB_CACHE``).
        text_len: the padded prompt length of the returned config (diffusers does not record it).

    Returns:
        ``(state_dict, config)``: official name -> CPU tensor (exactly the tensors of a DiT of ``config``).

    Raises:
        CheckpointFormatError: not a diffusers model folder, a damaged file, pickled weights only.
        CheckpointKeyError: missing, unexpected or mis-shaped tensors for the config.
        ValueError: the config is not a text-to-video ``WanTransformer3DModel``.
        FileNotFoundError: a Hub id that is neither cached nor downloadable.
    """
    if isinstance(source, torch.nn.Module):
        model_config = getattr(source, "config", None)
        if not isinstance(model_config, Mapping):
            raise TypeError(
                f"source module must be a diffusers WanTransformer3DModel, got {type(source).__name__}"
            )
        tensors, config_dict, origin = source.state_dict(), dict(model_config), type(source).__name__
        config_dict.setdefault("_class_name", type(source).__name__)
    else:
        local = Path(source).expanduser()
        text = os.fspath(source)
        if local.is_dir():
            folder = _transformer_folder(local, subfolder, origin=str(local))
        elif local.exists():
            raise CheckpointFormatError(
                f"{local} is a file; a diffusers transformer is a folder (config.json + weights)"
            )
        elif hub_id := _HUB_ID.fullmatch(text):
            repo_id = hub_id.group(1)
            snapshot = _download_diffusers(
                repo_id, subfolder=subfolder, revision=revision, cache_dir=cache_dir
            )
            folder = _transformer_folder(snapshot, subfolder, origin=f"Hub repository {repo_id!r}")
        else:
            raise FileNotFoundError(
                f"source {text!r} is neither an existing folder nor a Hub id 'owner/name' (or 'hf://owner/name')"
            )
        tensors, config_dict = _read_diffusers_folder(folder)
        origin = str(folder)
    config = wan_config_from_diffusers(config_dict, text_len=text_len)
    state_dict = from_diffusers_state_dict(tensors)
    check_official_state_dict(state_dict, config, origin=f"diffusers transformer {origin}")
    return state_dict, config


def load_diffusers_into_wan(
    source: PathLike | torch.nn.Module,
    *,
    revision: str | None = None,
    subfolder: str | None = "transformer",
    cache_dir: PathLike | None = None,
    text_len: int = WanConfig.text_len,
    dtype: torch.dtype | None = None,
) -> CausalWanModel:
    """memrope's own DiT (:class:`~memrope.models.wan.CausalWanModel`) holding a diffusers Wan transformer's weights.

    ``source`` and the other arguments as for :func:`read_diffusers_transformer`; the load is strict.
    ``dtype``: cast the model after loading (None keeps float32, the tensors being copied into it).

    Raises:
        NonFiniteError: a weight holds NaN or infinity.
    """
    from memrope.models.wan import CausalWanModel

    state_dict, config = read_diffusers_transformer(
        source, revision=revision, subfolder=subfolder, cache_dir=cache_dir, text_len=text_len
    )
    _check_finite_tensors(state_dict, origin="diffusers transformer", advice=NONFINITE_WEIGHTS_ADVICE)
    model = CausalWanModel(config)
    model.load_state_dict(state_dict, strict=True)  # the names and shapes were checked
    if dtype is not None:
        model.to(dtype)
    return model


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`write_diffusers_folder` or :func:`write_original_file` wrote.

    Attributes:
        destination: the diffusers folder or the safetensors file.
        layout: ``"diffusers"`` or ``"original"``.
        files: the files written (inside ``destination`` for a folder).
        tensors: how many tensors.
        tensor_bytes: their bytes (``numel * element_size`` summed).
        config: the DiT sizes.
        dtypes: the tensors' dtypes (``"bfloat16"``, ...), as read: nothing is cast.
    """

    destination: Path
    layout: Layout
    files: tuple[Path, ...]
    tensors: int
    tensor_bytes: int
    config: WanConfig
    dtypes: tuple[str, ...]

    def summary(self) -> str:
        """One line for humans: what was written, how big, and the DiT shape."""
        what = (
            "diffusers WanTransformer3DModel folder"
            if self.layout == "diffusers"
            else "official-name safetensors"
        )
        names = ", ".join(path.name for path in self.files)
        return (
            f"wrote {self.destination} ({what}: {names}): {self.tensors} tensors ({', '.join(self.dtypes)}), "
            f"{self.tensor_bytes:,} bytes; Wan DiT {describe_config(self.config)}"
        )


def _dtype_names(tensors: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    return tuple(sorted({str(tensor.dtype).removeprefix("torch.") for tensor in tensors.values()}))


def _tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def _storable(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors needs contiguous tensors (``contiguous()`` returns a contiguous tensor itself)."""
    return {name: tensor.contiguous() for name, tensor in tensors.items()}


def _check_destination(destination: Path, *, force: bool, folder: bool) -> None:
    if not destination.parent.is_dir():
        raise FileNotFoundError(f"the folder of the destination {destination} does not exist")
    if not destination.exists() or (folder and destination.is_dir() and not any(destination.iterdir())):
        return  # an empty folder is replaced as if it were not there
    if not force:
        raise FileExistsError(f"{destination} exists; pass force=True (--force) to replace it")
    if folder and not destination.is_dir():
        raise FileExistsError(f"{destination} is a file; a diffusers model is written as a folder")
    if not folder and destination.is_dir():
        raise IsADirectoryError(
            f"{destination} is a folder; give a file name for the official weights, e.g. {destination / 'wan.safetensors'}"
        )
    if folder:
        foreign = sorted(
            entry.name
            for entry in destination.iterdir()
            if not any(fnmatch.fnmatch(entry.name, p) for p in _DIFFUSERS_FILE_PATTERNS)
        )
        if foreign:
            raise FileExistsError(
                f"{destination} holds files that are not a diffusers model's ({_first_names(foreign)}); "
                "--force replaces only a folder memrope convert (or diffusers) wrote"
            )


def write_diffusers_folder(
    state_dict: Mapping[str, torch.Tensor],
    config: WanConfig,
    destination: PathLike,
    *,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> ConversionResult:
    """Write official-name weights as a diffusers ``WanTransformer3DModel`` folder.

    The folder gets ``config.json`` (``_class_name: WanTransformer3DModel``) and
    ``diffusion_pytorch_model.safetensors``, or shards ``diffusion_pytorch_model-0000i-of-0000n.safetensors``
    with ``diffusion_pytorch_model.safetensors.index.json`` when the tensors exceed ``max_shard_bytes``
    (as diffusers' ``save_pretrained``). It is written beside ``destination`` and moved into place, so a
    failure leaves ``destination`` as it was. ``WanTransformer3DModel.from_pretrained(destination)`` loads it.

    Raises:
        FileExistsError: ``destination`` exists and not ``force``, or it holds files other than a model's.
        CheckpointKeyError: ``state_dict`` is not exactly the tensors of a DiT of ``config``.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    target = Path(destination).expanduser()
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be an int >= 1, got {max_shard_bytes!r}")
    check_official_state_dict(state_dict, config, origin="the weights")
    _check_destination(target, force=force, folder=True)
    tensors = _storable(to_diffusers_state_dict(state_dict))
    split = split_torch_state_dict_into_shards(
        tensors, filename_pattern=DIFFUSERS_WEIGHTS_PATTERN, max_shard_size=max_shard_bytes
    )
    config_json = {"_class_name": DIFFUSERS_CLASS_NAME, **_diffusers_version(), **diffusers_config(config)}
    config_json["patch_size"] = list(config.patch_size)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        written = [staging / DIFFUSERS_CONFIG_NAME]
        written[0].write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for filename, names in split.filename_to_tensors.items():
            save_file({name: tensors[name] for name in names}, staging / filename, metadata={"format": "pt"})
            written.append(staging / filename)
        if split.is_sharded:
            index = {
                "metadata": {**split.metadata, "total_size": _tensor_bytes(tensors)},
                "weight_map": split.tensor_to_filename,
            }
            written.append(staging / f"{DIFFUSERS_WEIGHTS_NAME}.index.json")
            written[-1].write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        mode = default_file_mode()
        for path in written:
            os.chmod(path, mode)
        os.chmod(staging, _default_folder_mode())
        swap_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ConversionResult(
        destination=target,
        layout="diffusers",
        files=tuple(target / path.name for path in written),
        tensors=len(tensors),
        tensor_bytes=_tensor_bytes(tensors),
        config=config,
        dtypes=_dtype_names(tensors),
    )


def _default_folder_mode() -> int:
    """Permission bits of a newly created folder under the current umask (``0o777 & ~umask``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _diffusers_version() -> dict[str, str]:
    try:
        return {"_diffusers_version": importlib.metadata.version("diffusers")}
    except importlib.metadata.PackageNotFoundError:
        return {}


def write_original_file(
    state_dict: Mapping[str, torch.Tensor], config: WanConfig, destination: PathLike, *, force: bool = False
) -> ConversionResult:
    """Write official-name weights as one safetensors file (memrope's loader reads it; atomic replace).

    The file's metadata holds ``format: pt`` and the DiT sizes as JSON under ``wan_config``.

    Raises:
        FileExistsError: ``destination`` exists and not ``force``.
        IsADirectoryError: ``destination`` is a folder.
        CheckpointKeyError: ``state_dict`` is not exactly the tensors of a DiT of ``config``.
    """
    from safetensors.torch import save_file

    target = Path(destination).expanduser()
    check_official_state_dict(state_dict, config, origin="the weights")
    _check_destination(target, force=force, folder=False)
    tensors = _storable(state_dict)
    metadata = {"format": "pt", "wan_config": json.dumps(config.to_dict(), sort_keys=True)}
    with atomic_replace(target) as temporary:
        save_file(tensors, temporary, metadata=metadata)
    return ConversionResult(
        destination=target,
        layout="original",
        files=(target,),
        tensors=len(tensors),
        tensor_bytes=_tensor_bytes(tensors),
        config=config,
        dtypes=_dtype_names(tensors),
    )


def wan_config_from_json(path: PathLike) -> WanConfig:
    """The :class:`WanConfig` in a JSON file: a diffusers ``WanTransformer3DModel`` ``config.json``, an official
    Wan ``config.json`` (``dim``, ``num_heads``, ...) or :meth:`WanConfig.to_dict` output."""
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"config {file} is not a readable JSON file ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"config {file} holds a {type(data).__name__}, expected a JSON object")  # noqa: TRY004 (a bad file, not a bad type)
    if data.get("_class_name") == DIFFUSERS_CLASS_NAME or "num_attention_heads" in data:
        return wan_config_from_diffusers(data)
    absent = [name for name in ("dim", "num_heads", "num_layers") if name not in data]
    if absent:
        raise ValueError(
            f"config {file} is neither a diffusers WanTransformer3DModel config nor an official Wan config: "
            f"it lacks {absent}"
        )
    return WanConfig.from_dict(data)


def is_diffusers_source(source: PathLike, *, subfolder: str | None = "transformer") -> bool:
    """Whether ``source`` names a diffusers transformer: a local diffusers model folder (or a folder with
    one in ``subfolder/``), or a Hub id ``owner/name`` / ``hf://owner/name`` that is not a local path."""
    local = Path(source).expanduser()
    if local.is_dir():
        return _is_diffusers_folder(local) or (
            subfolder is not None and _is_diffusers_folder(local / subfolder)
        )
    return not local.exists() and _HUB_ID.fullmatch(os.fspath(source)) is not None

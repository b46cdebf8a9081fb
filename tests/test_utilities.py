"""The package's one-of-each utilities: atomic file replacement, dtype names, int checks, device
arguments, seconds <-> frames, and the deprecated module names that point at the new ones."""

from __future__ import annotations

import importlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from memrope._device_spec import parse_device
from memrope._dtypes import dtype_name, parse_dtype
from memrope._files import atomic_replace, atomic_write_text, default_file_mode
from memrope._validation import as_int, check_int
from memrope.video_lengths import (
    latent_frames_at_least,
    latent_frames_for_seconds,
    latent_position,
    video_frame_count,
)

FLOATING = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- atomic replacement
def test_a_written_file_gets_the_umask_mode(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "report.json"
    atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert mode_of(target) == default_file_mode() == 0o666 & ~umask


def test_a_pipeline_checkpoint_gets_the_umask_mode_not_0600(tmp_path: Path, umask: int) -> None:
    from memrope.pipeline import _atomic_save

    target = tmp_path / "state.safetensors"
    _atomic_save({"x": torch.arange(3.0)}, {"k": "v"}, target)
    assert torch.equal(load_file(target)["x"], torch.arange(3.0))
    assert mode_of(target) == 0o666 & ~umask


def test_the_latents_file_gets_the_umask_mode(tmp_path: Path, umask: int) -> None:
    from memrope.cli.latent_log import LatentLog, _save_latents

    log = LatentLog(tmp_path / "log.bin", (2, 3), torch.float32)
    log.append(torch.ones(1, 2, 2, 3))
    target = tmp_path / "latents.safetensors"
    _save_latents(log, 1, target)
    assert load_file(target)["latents"].shape == (1, 1, 2, 3)
    assert mode_of(target) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_replace(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_replacing_keeps_readers_of_the_old_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with target.open() as reader:
        atomic_write_text(target, "new")
        assert reader.read() == "old"  # the old inode is untouched
    assert target.read_text() == "new"


def test_no_module_writes_files_by_hand() -> None:
    """Every ``os.replace`` of the package is in :mod:`memrope._files`."""
    root = Path(__file__).resolve().parents[1] / "src" / "memrope"
    writers = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "os.replace(" in path.read_text(encoding="utf-8") and path.name != "_files.py"
    )
    assert writers == []


# ---------------------------------------------------------------- dtype names
@given(dtype=st.sampled_from(FLOATING))
def test_dtype_names_round_trip(dtype: torch.dtype) -> None:
    name = dtype_name(dtype)
    assert not name.startswith("torch.")
    assert parse_dtype(name, "dtype") is dtype
    assert parse_dtype(f"torch.{name.upper()}", "dtype") is dtype
    assert parse_dtype(dtype, "dtype") is dtype


@pytest.mark.parametrize(
    ("text", "dtype"),
    [("bf16", torch.bfloat16), (" FP16 ", torch.float16), ("fp32", torch.float32), ("half", torch.float16)],
)
def test_short_dtype_names_are_read(text: str, dtype: torch.dtype) -> None:
    assert parse_dtype(text, "--dtype") is dtype


@pytest.mark.parametrize("name", ["float33", "int64", "bool", "", 16, None, torch.int8])
def test_names_of_no_floating_dtype_are_refused(name: object) -> None:
    with pytest.raises(ValueError, match=r"memory_dtype must name a floating torch dtype .*, got"):
        parse_dtype(name, "memory_dtype")


def test_allowed_dtypes_are_listed_when_refused() -> None:
    allowed = (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match=r"--dtype must name one of bfloat16, float32, got 'float64'"):
        parse_dtype("float64", "--dtype", allowed=allowed)


def test_the_cli_reads_dtypes_by_any_name() -> None:
    import argparse

    from memrope.cli.generate_args import _dtype

    assert _dtype("BF16") is torch.bfloat16
    with pytest.raises(argparse.ArgumentTypeError, match="unknown dtype 'float64'"):
        _dtype("float64")


# ---------------------------------------------------------------- ints
@given(value=st.integers(-5, 10**12))
def test_check_int_accepts_exactly_the_ints_at_or_above_the_minimum(value: int) -> None:
    if value >= 1:
        assert check_int(value, "n") == value
        assert check_int(np.int64(value), "n") == value
    else:
        with pytest.raises(ValueError, match=rf"n must be an int >= 1, got {value}"):
            check_int(value, "n")


@pytest.mark.parametrize("value", [True, False, 2.0, "3", None, torch.tensor(3)])
def test_non_integers_are_refused(value: object) -> None:
    assert as_int(value) is None
    with pytest.raises(ValueError, match=r"chunk_frames must be an int >= 0 \(latent frames\), got"):
        check_int(value, "chunk_frames", 0, meaning="latent frames")


# ---------------------------------------------------------------- devices
@pytest.mark.parametrize(
    ("spec", "device"),
    [
        ("cpu", torch.device("cpu")),
        (" CPU ", torch.device("cpu")),
        ("cuda:1", torch.device("cuda", 1)),
        (2, torch.device("cuda", 2)),
        (torch.device("meta"), torch.device("meta")),
    ],
)
def test_device_arguments_are_read(spec: object, device: torch.device) -> None:
    assert parse_device(spec, "device") == device


def test_device_arguments_that_cannot_be_meant_are_refused() -> None:
    with pytest.raises(ValueError, match=r"devices: unknown device 'gpu0'; use 'cpu', 'cuda', 'cuda:N'"):
        parse_device("gpu0", "devices")
    with pytest.raises(ValueError, match="home: a CUDA index must be >= 0, got -1"):
        parse_device(-1, "home")
    with pytest.raises(TypeError, match="device must be a device"):
        parse_device(True, "device")


def test_the_cli_device_flag_uses_the_same_parser() -> None:
    from memrope.cli.generate_plan import _device

    assert _device(" CPU ") == torch.device("cpu")


# ---------------------------------------------------------------- seconds <-> frames
@given(quarters=st.integers(1, 4 * 86400))
def test_the_two_clocks_agree(quarters: int) -> None:
    """``t`` s is latent frame ``4t``; the shortest video at least ``t`` s long reaches past it."""
    seconds = quarters / 4
    assert latent_frames_for_seconds(seconds) == latent_position(seconds) == quarters
    longest_needed = latent_frames_at_least(seconds, chunk_frames=1)
    assert video_frame_count(longest_needed) >= 16 * seconds > video_frame_count(longest_needed - 1)


def test_there_is_one_of_each_length_function() -> None:
    import memrope.presets
    import memrope.prompt_schedule
    import memrope.vae
    import memrope.video_lengths as lengths

    assert memrope.presets.latent_frames_for_seconds is lengths.latent_frames_for_seconds
    assert memrope.presets.FPS == lengths.FPS
    assert (
        memrope.vae.video_frame_count
        is lengths.video_frame_count
        is memrope.prompt_schedule.video_frame_count
    )
    assert memrope.prompt_schedule.latent_frames_at_least is lengths.latent_frames_at_least
    assert latent_position(7.5) == Fraction(30)


# ---------------------------------------------------------------- deprecated names
def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_memrope_schedule_warns_and_points_at_prompt_schedule() -> None:
    completed = run_python("import memrope.schedule")
    assert completed.returncode != 0
    assert "memrope.schedule is deprecated: import prompt schedules from memrope.prompt_schedule" in (
        completed.stderr
    )
    sys.modules.pop("memrope.schedule", None)
    with pytest.warns(DeprecationWarning, match="memrope.prompt_schedule"):
        schedule = importlib.import_module("memrope.schedule")
    import memrope.prompt_schedule

    assert schedule.parse_prompt_schedule is memrope.prompt_schedule.parse_prompt_schedule


def test_memrope_parity_warns_except_for_cache_config_from_official() -> None:
    quiet = run_python("from memrope.parity import cache_config_from_official")
    assert quiet.returncode == 0, quiet.stderr
    import memrope.parity
    import memrope.testing.parity

    with pytest.warns(DeprecationWarning, match="import load_parity_set from memrope.testing.parity"):
        assert memrope.parity.load_parity_set is memrope.testing.parity.load_parity_set
    with pytest.raises(AttributeError, match="has no attribute 'load_parity_sets'"):
        memrope.parity.load_parity_sets  # type: ignore[attr-defined]  # noqa: B018

"""Every script in examples/ runs on the tiny model, as a user would run it (a fresh process)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
needs_video = pytest.mark.skipif(
    importlib.util.find_spec("imageio_ffmpeg") is None or importlib.util.find_spec("imageio") is None,
    reason="needs the video extra",
)


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def frame_count(path: Path) -> int:
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:
        return sum(1 for _ in reader)


def test_every_example_is_tested() -> None:
    tested = {
        "wrap_upstream_pipeline.py",
        "generate_60s.py",
        "own_dit.py",
        "two_gpu_split.py",
        "prompt_schedule.py",
        "diffusers_wan.py",
    }
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def test_wrap_upstream_pipeline(tmp_path: Path) -> None:
    out = run_example("wrap_upstream_pipeline.py", "--tiny", "--num-frames", "18", cwd=tmp_path)
    assert "generated latents [1, 18, 4, 6, 8] with the MemRoPE cache" in out
    assert "0:f0 1:f1 2:f2 3:long 4:short 5:f11" in out  # the fixed-size MemRoPE layout
    assert "max difference to the upstream sink + sliding-window cache" in out


@needs_video
def test_generate_60s(tmp_path: Path) -> None:
    out = run_example("generate_60s.py", "--tiny", "--seconds", "6", "--output", "fox.mp4", cwd=tmp_path)
    assert "wrote fox.mp4: 105 frames" in out
    assert "filled 12/12 frames" in out
    assert frame_count(tmp_path / "fox.mp4") == 105  # at least 6 s: 27 latent frames -> 4 * 27 - 3


@needs_video
def test_diffusers_wan(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    out = run_example("diffusers_wan.py", "--tiny", "--seconds", "3", "--output", "fox.mp4", cwd=tmp_path)
    assert "wrote fox.mp4: 57 frames" in out and "through diffusers" in out
    assert "filled 12/12 frames" in out
    difference = float(out.split("max difference to memrope's own DiT: ")[1].split()[0])
    assert difference < 1e-5
    assert frame_count(tmp_path / "fox.mp4") == 57


def test_own_dit(tmp_path: Path) -> None:
    out = run_example("own_dit.py", "--chunks", "8", cwd=tmp_path)
    assert "generated latents [1, 24, 4, 6, 8]" in out
    assert "layer 0 slots: 0:f0 1:f1 2:f2 3:long 4:short 5:f17" in out


@needs_video
def test_two_gpu_split(tmp_path: Path) -> None:
    out = run_example("two_gpu_split.py", "--tiny", "--seconds", "6", "--output", "split.mp4", cwd=tmp_path)
    assert out.startswith("split over 2 devices: cpu, cpu")
    assert "wrote split.mp4 (105 frames); layer caches on ['cpu']" in out
    assert "identical to the single-device video: True" in out


@needs_video
def test_prompt_schedule(tmp_path: Path) -> None:
    out = run_example(
        "prompt_schedule.py",
        "--tiny",
        "--seconds",
        "6",
        "--schedule",
        "0:a cat;3s:a dog;18:a bird",
        "--output",
        "story.mp4",
        cwd=tmp_path,
    )
    assert out.splitlines()[:3] == [
        "latent frame 0: 'a cat'",
        "latent frame 12: 'a dog'",
        "latent frame 18: 'a bird'",
    ]
    # at least 6 s in whole chunks: 27 latent frames = 105 frames = 6.56 s
    assert "wrote story.mp4 (105 frames, 27 latent, 6.56 s)" in out and "filled 12/12 frames" in out
    assert frame_count(tmp_path / "story.mp4") == 105


@needs_video
def test_prompt_schedule_with_its_defaults(tmp_path: Path) -> None:
    """The default story's "10s" and "20s" (latent frames 40 and 80) fall inside chunks: next boundary."""
    out = run_example("prompt_schedule.py", "--tiny", cwd=tmp_path)
    assert [line.split(":")[0] for line in out.splitlines()[:3]] == [
        "latent frame 0",
        "latent frame 42",
        "latent frame 81",
    ]
    assert "wrote memrope_schedule.mp4 (489 frames, 123 latent, 30.56 s)" in out
    assert frame_count(tmp_path / "memrope_schedule.mp4") == 489

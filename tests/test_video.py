"""Mp4Writer: incremental writing, read-back, atomic replacement, interruption; to_uint8."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from memrope.video import Mp4Writer, to_uint8

HEIGHT, WIDTH = 48, 64
needs_ffmpeg = pytest.mark.skipif(
    importlib.util.find_spec("imageio_ffmpeg") is None or importlib.util.find_spec("imageio") is None,
    reason="needs the video extra",
)


def read_video(path: Path) -> tuple[torch.Tensor, float]:
    """All frames ``[T, H, W, 3]`` of an mp4, and its frame rate."""
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:
        fps = reader.get_meta_data()["fps"]
        frames = [torch.from_numpy(frame) for frame in reader]
    return torch.stack(frames), fps


def smooth_frames(count: int, offset: int = 0) -> torch.Tensor:
    """``uint8 [count, H, W, 3]``: gradients that shift with the frame index (compress well)."""
    t = torch.arange(offset, offset + count, dtype=torch.float32).view(-1, 1, 1, 1)
    y = torch.linspace(0, 1, HEIGHT).view(1, -1, 1, 1)
    x = torch.linspace(0, 1, WIDTH).view(1, 1, -1, 1)
    channel = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 1, 3)
    pixels = 127.5 + 100 * torch.sin(2 * torch.pi * (x + y * channel / 3) + 0.2 * t)
    return pixels.round().to(torch.uint8)


def partial_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.partial.mp4"))


def test_to_uint8_maps_range_rounds_clamps_and_moves_channels_last() -> None:
    values = torch.tensor([-1.0, 1.0, 0.0, -2.0, 3.0, 0.5])
    frames = torch.stack([values, -values, values]).view(1, 3, 6, 1).expand(2, 3, 6, 4)
    pixels = to_uint8(frames)
    assert pixels.dtype == torch.uint8 and pixels.shape == (2, 6, 4, 3)
    assert pixels[1, :, 3, 0].tolist() == [0, 255, 128, 0, 255, 191]
    assert pixels[1, :, 3, 1].tolist() == [255, 0, 128, 255, 0, 64]
    with pytest.raises(ValueError, match="3, H, W"):
        to_uint8(torch.zeros(2, 4, 5, 5))


@needs_ffmpeg
def test_frames_written_in_chunks_read_back_with_count_size_fps_and_content(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    frames = smooth_frames(21)
    with Mp4Writer(path, fps=16) as writer:
        for chunk in frames.split([1, 8, 12]):
            writer.write(chunk)
        assert not path.exists() and len(partial_files(tmp_path)) == 1
    assert writer.frames_written == 21
    decoded, fps = read_video(path)
    assert decoded.shape == (21, HEIGHT, WIDTH, 3)
    assert fps == pytest.approx(16)
    assert (decoded.float() - frames.float()).abs().mean() < 3.0
    assert partial_files(tmp_path) == []


@needs_ffmpeg
def test_numpy_frames_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "numpy.mp4"
    with Mp4Writer(path, fps=8) as writer:
        writer.write(smooth_frames(3).numpy())
    assert read_video(path)[0].shape[0] == 3


@needs_ffmpeg
def test_keyboard_interrupt_leaves_a_playable_file_of_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "interrupted.mp4"
    path.write_bytes(b"previous video")
    with pytest.raises(KeyboardInterrupt), Mp4Writer(path) as writer:
        writer.write(smooth_frames(5))
        writer.write(smooth_frames(4, offset=5))
        assert path.read_bytes() == b"previous video"
        raise KeyboardInterrupt
    decoded, _ = read_video(path)
    assert decoded.shape == (9, HEIGHT, WIDTH, 3)
    assert partial_files(tmp_path) == []


WRITE_UNTIL_INTERRUPTED = """
import signal, sys, torch
signal.signal(signal.SIGINT, signal.default_int_handler)
from memrope.video import Mp4Writer
noise = torch.Generator().manual_seed(0)
try:
    with Mp4Writer(sys.argv[1]) as writer:
        while True:
            writer.write(torch.randint(0, 256, (4, 240, 320, 3), dtype=torch.uint8, generator=noise))
            print(writer.frames_written, flush=True)
except KeyboardInterrupt:
    print("interrupted", writer.frames_written, flush=True)
"""


@needs_ffmpeg
def test_ctrl_c_while_ffmpeg_is_busy_still_finalises_the_file(tmp_path: Path) -> None:
    """A real SIGINT to the writing process (noise frames keep it blocked on ffmpeg's pipe)."""
    path = tmp_path / "ctrl_c.mp4"
    child = subprocess.Popen([sys.executable, "-c", WRITE_UNTIL_INTERRUPTED, str(path)],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert child.stdout is not None
    while int(child.stdout.readline()) < 80:  # x264's lookahead is full: writes now wait for ffmpeg
        pass
    time.sleep(0.5)  # most of this time the child is inside a write to ffmpeg
    os.killpg(child.pid, signal.SIGINT)
    last_line = child.communicate(timeout=60)[0].splitlines()[-1]
    assert child.returncode == 0 and last_line.startswith("interrupted")
    decoded, _ = read_video(path)
    assert decoded.shape == (int(last_line.split()[1]), 240, 320, 3)
    assert partial_files(tmp_path) == []


@needs_ffmpeg
def test_without_frames_an_existing_file_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "keep.mp4"
    path.write_bytes(b"previous video")
    with pytest.raises(RuntimeError, match="generation failed"), Mp4Writer(path):
        raise RuntimeError("generation failed")
    assert path.read_bytes() == b"previous video"
    assert partial_files(tmp_path) == []


@needs_ffmpeg
def test_bad_frames_are_refused(tmp_path: Path) -> None:
    with Mp4Writer(tmp_path / "bad.mp4") as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write(torch.zeros(2, HEIGHT, WIDTH, 3))
        with pytest.raises(ValueError, match="uint8"):
            writer.write(torch.zeros(2, 3, HEIGHT, WIDTH, dtype=torch.uint8))
        writer.write(smooth_frames(2))
        with pytest.raises(ValueError, match="frame size changed"):
            writer.write(torch.zeros(1, HEIGHT, WIDTH + 2, 3, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(smooth_frames(1))
    assert read_video(tmp_path / "bad.mp4")[0].shape[0] == 2


def test_missing_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(ImportError, match=r"memrope\[video\]"):
        Mp4Writer(tmp_path / "never.mp4")

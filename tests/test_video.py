"""Mp4Writer: incremental writing, read-back, atomic replacement, interruption, failures that leave the
target untouched with a one-line message, the partial files a killed writer leaves; to_uint8."""

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

from memrope.errors import NonFiniteError
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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_to_uint8_refuses_non_finite_frames(bad: float) -> None:
    """NaN would silently become black (0) and inf white: never a black video reported as fine."""
    frames = torch.zeros(2, 3, 4, 4)
    frames[1, 2, 3, 3] = bad
    with pytest.raises(NonFiniteError, match="NaN or infinity"):
        to_uint8(frames)


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
    child = subprocess.Popen(
        [sys.executable, "-c", WRITE_UNTIL_INTERRUPTED, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
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


@needs_ffmpeg
def test_an_error_after_frames_leaves_the_existing_file_untouched(tmp_path: Path) -> None:
    """A failed run (here: an error mid-run) must not replace a good video by its partial one."""
    path = tmp_path / "keep.mp4"
    path.write_bytes(b"previous video")
    with pytest.raises(RuntimeError, match="disk full"), Mp4Writer(path) as writer:
        writer.write(smooth_frames(5))
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"previous video"
    assert not writer.committed and partial_files(tmp_path) == []


@needs_ffmpeg
def test_ffmpeg_failing_mid_write_is_one_line_and_leaves_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ffmpeg dying (a full disk: broken pipe) gives one line naming the file, no ffmpeg dump."""
    path = tmp_path / "keep.mp4"
    path.write_bytes(b"previous video")
    writer = Mp4Writer(path)
    writer.write(smooth_frames(2))

    def broken(frame: object) -> None:
        raise OSError("[Errno 32] Broken pipe\n\nFFMPEG COMMAND:\nffmpeg -y ...\n\nFFMPEG STDERR OUTPUT:\n")

    monkeypatch.setattr(writer._writer, "append_data", broken)
    with pytest.raises(OSError, match="cannot write the video") as raised:
        writer.write(smooth_frames(2))
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and "Broken pipe" in message and "MiB free" in message
    writer.close()  # already aborted: nothing happens
    assert path.read_bytes() == b"previous video" and partial_files(tmp_path) == []


@needs_ffmpeg
def test_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "gone" / "v.mp4"
    with pytest.raises(OSError, match="cannot write the video") as raised, Mp4Writer(path) as writer:
        writer.write(smooth_frames(2))
    assert "\n" not in str(raised.value) and "gone" in str(raised.value)


@needs_ffmpeg
def test_partial_files_finds_only_this_targets_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "v.mp4"
    mine = [tmp_path / ".v.mp4.0123abcd.partial.mp4", tmp_path / ".v.mp4.ffffffff.partial.mp4"]
    others = [
        tmp_path / ".v.mp4.x.partial.mp4",
        tmp_path / ".w.v.mp4.0123abcd.partial.mp4",
        tmp_path / ".v.0123abcd.partial.mp4",
        tmp_path / "v.mp4",
    ]
    for path in [*mine, *others]:
        path.write_bytes(b"")
    assert Mp4Writer.partial_files(target) == sorted(mine)
    assert Mp4Writer.partial_files(tmp_path / "missing" / "v.mp4") == []
    writer = Mp4Writer(target)
    assert writer._temporary.parent == tmp_path and writer._temporary.name.startswith(".v.mp4.")
    writer._temporary.write_bytes(b"")  # what a killed writer leaves looks like this
    assert writer._temporary in Mp4Writer.partial_files(target) and len(Mp4Writer.partial_files(target)) == 3
    writer.abort()
    assert Mp4Writer.partial_files(target) == sorted(mine)  # only its own file is removed

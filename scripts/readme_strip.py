"""Regenerate the README's strip of toy frames (``docs/toy_strip.png``) from the README's first command.

Runs ``memrope generate --model toy ...`` (:data:`README_COMMAND`, the command the README shows)
into a temporary folder, times it, reads the frames of the mp4 it wrote, and puts ``--frames``
(default 8) of them, evenly spaced from the first to the last, side by side with their frame index
and time under each. ``--video FILE`` takes an mp4 written by that command instead of running it.

Run: ``python scripts/readme_strip.py [--output docs/toy_strip.png] [--frames 8] [--video FILE]``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw

FPS = 16
README_COMMAND = 'memrope generate --model toy --prompt "coloured shapes drifting" --output toy.mp4'
GAP = 4
LABEL_HEIGHT = 14


def run_readme_command(folder: Path) -> tuple[Path, float]:
    """Run :data:`README_COMMAND` in ``folder``; the mp4 it wrote and the wall time in seconds."""
    arguments = shlex.split(README_COMMAND)
    started = time.perf_counter()
    subprocess.run(arguments, cwd=folder, check=True)
    return folder / "toy.mp4", time.perf_counter() - started


def read_frames(video: Path) -> np.ndarray:
    """All frames of ``video`` as ``uint8 [T, H, W, 3]``."""
    reader = imageio.get_reader(str(video))
    try:
        return np.stack([np.asarray(frame)[..., :3] for frame in reader])
    finally:
        reader.close()


def strip(frames: np.ndarray, count: int) -> tuple[Image.Image, list[int]]:
    """``count`` evenly spaced frames of ``frames`` ``[T, H, W, 3]`` side by side, labelled; and their indices."""
    total, height, width = frames.shape[:3]
    indices = sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})
    canvas = Image.new("RGB", (len(indices) * (width + GAP) - GAP, height + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    for slot, index in enumerate(indices):
        left = slot * (width + GAP)
        canvas.paste(Image.fromarray(frames[index]), (left, 0))
        draw.text((left + 2, height + 1), f"frame {index} ({index / FPS:.1f} s)", fill="black")
    return canvas, indices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/toy_strip.png"))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--video", type=Path, default=None, help="an mp4 the README command wrote")
    args = parser.parse_args()
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    with tempfile.TemporaryDirectory() as folder:
        if args.video is None:
            video, seconds = run_readme_command(Path(folder))
            print(f"{README_COMMAND}: {seconds:.1f} s", file=sys.stderr)
        else:
            video = args.video
        frames = read_frames(video)
    image, indices = strip(frames, args.frames)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output)
    print(f"{args.output}: frames {indices} of {len(frames)} ({frames.shape[2]}x{frames.shape[1]})")


if __name__ == "__main__":
    main()

"""A synthetic world for the toy model: coloured shapes carried by a current over a fixed textured background.

Everything is generated on the fly and is a pure function of a seed, so the training script, the
tests and the drift benchmark all see the same videos without storing any data.

Geometry and time:

* A frame is ``[3, 32, 48]`` RGB in ``[-1, 1]`` (:data:`NATIVE_HW`); the toy decoder shows it
  nearest-upsampled x4, i.e. ``128 x 192`` like the ``tiny`` preset.
* Latent frame ``n`` is the world at video frame ``4n`` (the pipeline's temporal factor 4),
  normalised as a VAE's latents are (:data:`LATENT_MEAN`, :data:`LATENT_STD`: about unit variance)
  and folded by a 2x2 space-to-depth into ``[12, 16, 24]`` (:data:`LATENT_CHANNELS`,
  :data:`LATENT_HW`): an exact, lossless code (:func:`latents_to_frames` inverts it). The decoder
  shows the video frames in between as linear blends of consecutive latent frames, so ``N`` latent
  frames give ``4N - 3`` video frames, as with Wan's VAE. (Packing all four video frames into one
  latent frame would need 48 channels, 192 per 2x2 patch token: more than the toy DiT's width can
  carry through.)

Content: :data:`NUM_OBJECTS` objects, each a circle, a square or a triangle of one of the six colours
of :data:`PALETTE` (all different), keeps its shape and colour for the whole video. A current
carries every object the same way, one whole native pixel to the right per latent frame
(:data:`VELOCITY`, :data:`AXIS_SPEED` 0.25 pixels per video frame); columns wrap round (an object
leaving on the right comes back on the left, so the world repeats after 48 latent frames), rows stay
fixed. The objects start one per third of the width (at most :data:`COLUMN_JITTER` into it), so
they never overlap. Whole-pixel steps make the motion exactly predictable from two frames, which a
model this small, trained with a regression loss on a CPU, needs: what it cannot predict exactly it
blurs, and blur compounds over a rollout. (An earlier world moved each object in one of 8
directions and bounced it off the edges; the toy DiT did not learn to move objects differently
within 20 CPU minutes: it stopped them or lost them, see ``scripts/train_toy.py``.) Objects are
drawn in a fixed order (later ones on top) with anti-aliased edges over :func:`background`, which
is the same for every video.

The exact measure (:func:`measure_frames`): a pixel belongs to palette colour ``k`` when it lies
within :data:`COLOUR_RADIUS` of it (background and anti-aliased edges do not); per frame that gives
each colour's pixel count, centroid (its column taken round the wrap: :func:`wrapped_offset` gives
the short-way displacement) and fill ratio (pixels over bounding-box area: ~0.79 circle,
1.0 square, 0.5 triangle), and the mean error of the background pixels against :func:`background`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "AXIS_SPEED",
    "COLOUR_RADIUS",
    "COLUMN_JITTER",
    "LATENT_CHANNELS",
    "LATENT_HW",
    "LATENT_MEAN",
    "LATENT_STD",
    "NATIVE_HW",
    "NUM_OBJECTS",
    "OBJECT_SIZE",
    "PALETTE",
    "SHAPES",
    "TEMPORAL_FACTOR",
    "VELOCITY",
    "FrameMeasure",
    "Scene",
    "background",
    "frames_to_latents",
    "latents_to_frames",
    "measure_frames",
    "positions",
    "render_frames",
    "sample_scene",
    "world_latents",
    "wrapped_offset",
]

NATIVE_HW = (32, 48)
FOLD = 2  # space-to-depth factor of the latent code
TEMPORAL_FACTOR = 4
LATENT_HW = (NATIVE_HW[0] // FOLD, NATIVE_HW[1] // FOLD)
LATENT_CHANNELS = 3 * FOLD * FOLD
NUM_OBJECTS = 3
SHAPES = ("circle", "square", "triangle")
#: RGB in [-1, 1]: red, green, blue, yellow, magenta, cyan
PALETTE = torch.tensor(
    [
        [0.9, -0.8, -0.8],
        [-0.8, 0.9, -0.8],
        [-0.8, -0.7, 0.9],
        [0.9, 0.9, -0.8],
        [0.9, -0.8, 0.9],
        [-0.8, 0.9, 0.9],
    ]
)
PALETTE_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")
COLOUR_RADIUS = 0.45
#: the latent code's normalisation, as a VAE's: per-colour mean and one scale of the world's pixels
#: (measured over many videos: means -0.17/-0.23/-0.27, standard deviations 0.29-0.31), so latents
#: have about unit variance, the scale the sampler's noise levels are made for
LATENT_MEAN = torch.tensor([-0.17, -0.23, -0.27])
LATENT_STD = 0.3
OBJECT_SIZE = 4.5  # circle radius in native pixels; squares and triangles are scaled to similar areas
#: how far (native pixels) an object's column may lie into its third of the width: 16 - 6 > 2 x 4.5
COLUMN_JITTER = 6.0
#: the current's speed, native pixels per video frame: one whole pixel per latent frame (4 video frames)
AXIS_SPEED = 0.25
#: every object's velocity (row, column), native pixels per video frame: the current carries them right
VELOCITY = torch.tensor([0.0, AXIS_SPEED])
_TRIANGLE_NORMALS = torch.tensor([[0.0, 1.0], [-math.sqrt(3) / 2, -0.5], [math.sqrt(3) / 2, -0.5]])


@dataclass(frozen=True)
class Scene:
    """The objects of one video: ``B`` scenes at once.

    Attributes:
        colours: palette indices ``[B, K]`` (all different within a scene).
        shapes: indices into :data:`SHAPES` ``[B, K]``.
        start: positions ``[B, K, 2]`` (row, column) in native pixels at video frame 0.
        velocity: ``[B, K, 2]`` native pixels per video frame.
    """

    colours: Tensor
    shapes: Tensor
    start: Tensor
    velocity: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.colours.shape[0])


def sample_scene(seed: int | Tensor, batch_size: int = 1) -> Scene:
    """``batch_size`` scenes drawn from a private generator seeded with ``seed`` (the global RNG is untouched)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, Tensor)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    generator = torch.Generator().manual_seed(int(seed))
    colours = torch.stack(
        [torch.randperm(len(PALETTE), generator=generator)[:NUM_OBJECTS] for _ in range(batch_size)]
    )
    shapes = torch.randint(len(SHAPES), (batch_size, NUM_OBJECTS), generator=generator)
    margin = OBJECT_SIZE + 1
    rows = margin + torch.rand(batch_size, NUM_OBJECTS, generator=generator) * (NATIVE_HW[0] - 2 * margin)
    # one object per third of the width, each at most COLUMN_JITTER into it: never overlapping, and,
    # all moving together, never meeting
    jitter = torch.rand(batch_size, NUM_OBJECTS, generator=generator) * COLUMN_JITTER
    phase = torch.rand(batch_size, 1, generator=generator) * NATIVE_HW[1]
    thirds = torch.arange(NUM_OBJECTS, dtype=torch.float32) * (NATIVE_HW[1] / NUM_OBJECTS)
    cols = torch.remainder(phase + thirds + jitter, NATIVE_HW[1])
    start = torch.stack([rows, cols], dim=-1)
    velocity = VELOCITY.expand(batch_size, NUM_OBJECTS, 2).clone()
    return Scene(colours, shapes, start, velocity)


def background() -> Tensor:
    """The fixed background ``[3, 32, 48]``: a muted warm-grey gradient with a soft 8-pixel checkerboard."""
    rows = torch.arange(NATIVE_HW[0], dtype=torch.float32).view(-1, 1)
    cols = torch.arange(NATIVE_HW[1], dtype=torch.float32).view(1, -1)
    checker = ((rows // 8 + cols // 8) % 2) * 2 - 1  # +-1
    gradient = cols / (NATIVE_HW[1] - 1) - rows / (NATIVE_HW[0] - 1)  # [-1, 1]
    grey = -0.25 + 0.12 * checker + 0.15 * gradient
    tint = torch.tensor([0.06, 0.0, -0.06]).view(3, 1, 1)
    return grey.unsqueeze(0) + tint


def positions(scene: Scene, times: Tensor) -> Tensor:
    """Object centres ``[B, K, T, 2]`` (row, column) at video frames ``times`` ``[T]``; columns wrap into ``[0, 48)``."""
    travelled = scene.start.unsqueeze(2) + scene.velocity.unsqueeze(2) * times.to(torch.float32).view(
        1, 1, -1, 1
    )
    rows = travelled[..., 0]
    cols = torch.remainder(travelled[..., 1], NATIVE_HW[1])
    return torch.stack([rows, cols], dim=-1)


def wrapped_offset(to: Tensor, origin: Tensor) -> Tensor:
    """``to - origin`` of (row, column) points ``[..., 2]``, the column taken the short way round the wrap.

    Columns differ by at most half the frame's width (24 pixels) either way; rows do not wrap.
    """
    offset = to - origin
    width = NATIVE_HW[1]
    cols = torch.remainder(offset[..., 1] + width / 2, width) - width / 2
    return torch.stack([offset[..., 0], cols], dim=-1)


def _signed_distance(shapes: Tensor, offset: Tensor) -> Tensor:
    """Signed distance (pixels, negative inside) of pixel offsets ``[B, K, T, H, W, 2]`` to each shape ``[B, K]``."""
    dy, dx = offset[..., 0], offset[..., 1]
    circle = torch.sqrt(dy**2 + dx**2) - OBJECT_SIZE
    square = torch.maximum(dy.abs(), dx.abs()) - OBJECT_SIZE * 0.88
    normals = _TRIANGLE_NORMALS.to(offset.device)
    triangle = (offset.unsqueeze(-2) * normals).sum(-1).amax(-1) - OBJECT_SIZE * 0.62
    shape = shapes.view(*shapes.shape, 1, 1, 1)
    return torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))


def render_frames(scene: Scene, times: Tensor) -> Tensor:
    """Video frames ``[B, T, 3, 32, 48]`` in ``[-1, 1]`` of ``scene`` at video frames ``times`` ``[T]``."""
    centres = positions(scene, times)  # [B, K, T, 2]
    rows = torch.arange(NATIVE_HW[0], dtype=torch.float32) + 0.5
    cols = torch.arange(NATIVE_HW[1], dtype=torch.float32) + 0.5
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)  # [H, W, 2]
    offset = wrapped_offset(grid.view(1, 1, 1, *grid.shape), centres.view(*centres.shape[:3], 1, 1, 2))
    coverage = (0.5 - _signed_distance(scene.shapes, offset)).clamp(0.0, 1.0)  # [B, K, T, H, W]
    frames = background().expand(scene.batch_size, len(times), -1, -1, -1).clone()
    colours = PALETTE[scene.colours]  # [B, K, 3]
    for index in range(NUM_OBJECTS):
        alpha = coverage[:, index].unsqueeze(2)  # [B, T, 1, H, W]
        colour = colours[:, index].view(-1, 1, 3, 1, 1)
        frames = frames + alpha * (colour - frames)
    return frames


def frames_to_latents(frames: Tensor) -> Tensor:
    """Frames ``[B, N, 3, 32, 48]`` (the world at video frames ``0, 4, 8, ...``) -> latents ``[B, N, 12, 16, 24]``."""
    if frames.ndim != 5 or tuple(frames.shape[2:]) != (3, *NATIVE_HW):
        raise ValueError(
            f"frames must have shape [B, N, 3, {NATIVE_HW[0]}, {NATIVE_HW[1]}], got {list(frames.shape)}"
        )
    batch, count = frames.shape[:2]
    normalised = (frames - LATENT_MEAN.to(frames).view(3, 1, 1)) / LATENT_STD
    folded = torch.nn.functional.pixel_unshuffle(normalised.flatten(0, 1), FOLD)
    return folded.view(batch, count, LATENT_CHANNELS, *LATENT_HW)


def latents_to_frames(latents: Tensor) -> Tensor:
    """Latents ``[B, N, 12, 16, 24]`` -> the frames they code, ``[B, N, 3, 32, 48]`` (exact inverse of
    :func:`frames_to_latents`)."""
    if latents.ndim != 5 or tuple(latents.shape[2:]) != (LATENT_CHANNELS, *LATENT_HW):
        raise ValueError(
            f"latents must have shape [B, N, {LATENT_CHANNELS}, {LATENT_HW[0]}, {LATENT_HW[1]}], "
            f"got {list(latents.shape)}"
        )
    batch, count = latents.shape[:2]
    frames = torch.nn.functional.pixel_shuffle(latents.flatten(0, 1), FOLD).view(batch, count, 3, *NATIVE_HW)
    return frames * LATENT_STD + LATENT_MEAN.to(frames).view(3, 1, 1)


def world_latents(seed: int, latent_frames: int, batch_size: int = 1) -> Tensor:
    """Latents ``[B, latent_frames, 12, 16, 24]`` of ``batch_size`` videos of the scenes of :func:`sample_scene`."""
    if isinstance(latent_frames, bool) or not isinstance(latent_frames, int) or latent_frames < 1:
        raise ValueError(f"latent_frames must be an int >= 1, got {latent_frames!r}")
    scene = sample_scene(seed, batch_size)
    times = TEMPORAL_FACTOR * torch.arange(latent_frames)
    return frames_to_latents(render_frames(scene, times))


@dataclass(frozen=True)
class FrameMeasure:
    """The exact measure of video frames ``[B, T, 3, 32, 48]`` (see the module docstring).

    Attributes:
        counts: pixels of each palette colour ``[B, T, 6]``.
        centroids: their mean (row, column) ``[B, T, 6, 2]`` (NaN where a colour is absent).
        fill: pixel count over bounding-box area ``[B, T, 6]`` (NaN where absent).
        background_error: mean absolute error of the background pixels against :func:`background` ``[B, T]``.
        object_fraction: share of pixels given to some palette colour ``[B, T]``.
    """

    counts: Tensor
    centroids: Tensor
    fill: Tensor
    background_error: Tensor
    object_fraction: Tensor


def measure_frames(frames: Tensor) -> FrameMeasure:
    """Measure native frames ``[B, T, 3, 32, 48]`` in ``[-1, 1]`` (e.g. from :func:`latents_to_frames`)."""
    if frames.ndim != 5 or frames.shape[2:] != (3, *NATIVE_HW):
        raise ValueError(
            f"frames must have shape [B, T, 3, {NATIVE_HW[0]}, {NATIVE_HW[1]}], got {list(frames.shape)}"
        )
    pixels = frames.float().movedim(2, -1)  # [B, T, H, W, 3]
    distance = torch.cdist(pixels.reshape(-1, 3), PALETTE).view(*pixels.shape[:-1], len(PALETTE))
    members = distance < COLOUR_RADIUS  # [B, T, H, W, 6]
    counts = members.sum(dim=(2, 3)).float()
    rows = torch.arange(NATIVE_HW[0], dtype=torch.float32).view(1, 1, -1, 1, 1)
    cols = torch.arange(NATIVE_HW[1], dtype=torch.float32).view(1, 1, 1, -1, 1)
    weights = members.float()
    centroid_rows = (weights * rows).sum(dim=(2, 3)) / counts
    any_row = members.any(dim=3)  # [B, T, H, 6]
    any_col = members.any(dim=2)  # [B, T, W, 6]
    height = _extent(any_row)
    arc_start, width = _wrapped_arc(any_col)
    unwrapped = torch.remainder(cols - arc_start.unsqueeze(2).unsqueeze(2), NATIVE_HW[1])
    centroid_cols = torch.remainder(arc_start + (weights * unwrapped).sum(dim=(2, 3)) / counts, NATIVE_HW[1])
    fill = counts / (height * width)
    is_background = ~members.any(dim=-1)  # [B, T, H, W]
    error = (frames.float() - background()).abs().mean(dim=2)
    background_error = (error * is_background).sum(dim=(2, 3)) / is_background.sum(dim=(2, 3)).clamp(min=1)
    object_fraction = 1.0 - is_background.float().mean(dim=(2, 3))
    return FrameMeasure(
        counts, torch.stack([centroid_rows, centroid_cols], dim=-1), fill, background_error, object_fraction
    )


def _wrapped_arc(present: Tensor) -> tuple[Tensor, Tensor]:
    """Shortest run of columns, round the wrap, holding every ``True`` along dim 2 of ``[B, T, W, 6]``.

    Returns its first column and its length, both ``[B, T, 6]`` (NaN where there is no ``True``): the
    run starts just after the longest circular gap of ``False``.
    """
    width = present.shape[2]
    doubled = torch.cat([present, present], dim=2)
    index = torch.arange(2 * width, dtype=torch.float32).view(1, 1, -1, 1)
    last_present = torch.where(doubled, index, -1.0).cummax(dim=2).values
    before = torch.cat([torch.full_like(last_present[:, :, :1], -1.0), last_present[:, :, :-1]], dim=2)
    gap = torch.where(doubled, index - before - 1, -1.0)[:, :, width:]  # gap before each present column
    longest, after = gap.max(dim=2)
    found = longest >= 0
    start = torch.where(found, after.float(), math.nan)
    return start, torch.where(found, width - longest, math.nan)


def _extent(present: Tensor) -> Tensor:
    """Length of the span from the first to the last ``True`` along dim 2 of ``[B, T, L, 6]`` (NaN if none)."""
    index = torch.arange(present.shape[2], dtype=torch.float32).view(1, 1, -1, 1)
    first = torch.where(present, index, math.inf).amin(dim=2)
    last = torch.where(present, index, -math.inf).amax(dim=2)
    extent = last - first + 1
    return torch.where(torch.isfinite(extent), extent, math.nan)

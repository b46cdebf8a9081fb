"""Flow-matching noise schedule of Wan2.1 / Self-Forcing, with the official computation dtypes.

The schedule has ``num_train_timesteps`` discrete levels. ``sigmas`` and ``timesteps`` are float32
like the official tables; the x0 conversion runs in float64 and noising in float32, exactly as the
official wrapper does, so outputs match the reference implementation bit for bit in float32.
Every lookup is a tensor operation (``argmin`` + gather), so nothing waits on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["FlowMatchScheduler"]


class FlowMatchScheduler:
    """Shifted flow-matching schedule: ``x_t = (1 - sigma) * x0 + sigma * noise``.

    ``sigmas = linspace(1, sigma_min, N + 1)[:-1]``, then ``sigmas = shift * s / (1 + (shift - 1) * s)``
    and ``timesteps = N * sigmas`` (N = ``num_train_timesteps``), both float32 ``[N]``.
    A timestep ``t`` maps to the sigma of the nearest table entry.

    Args:
        num_train_timesteps: levels of the training schedule (1000 for Wan).
        shift: timestep shift (5.0 for Self-Forcing / LongLive / MemRoPE inference).
        sigma_min: smallest sigma before shifting (0 for inference).
    """

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 5.0, sigma_min: float = 0.0) -> None:
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int):
            raise TypeError(f"num_train_timesteps must be an int >= 1, got {num_train_timesteps!r}")
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be an int >= 1, got {num_train_timesteps}")
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.num_train_timesteps = num_train_timesteps
        self.shift = float(shift)
        self.sigma_min = float(sigma_min)
        sigmas = torch.linspace(1.0, sigma_min, num_train_timesteps + 1, dtype=torch.float32)[:-1]
        self.sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.timesteps = self.sigmas * num_train_timesteps

    def warp(self, denoising_steps: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Map nominal steps ``k`` to ``concat(timesteps, [0])[N - k]`` (official ``warp_denoising_step``).

        Args:
            denoising_steps: integer steps in ``[0, N]``, e.g. ``[1000, 750, 500, 250]``.

        Returns:
            float32 ``[S]``; ``[1000, 750, 500, 250]`` gives ``[1000, 937.5, 833.33, 625]`` for shift 5.
        """
        steps = torch.as_tensor(denoising_steps)
        if steps.ndim != 1 or steps.numel() == 0 or steps.is_floating_point() or steps.dtype == torch.bool:
            raise ValueError(
                f"denoising_steps must be a non-empty 1-D sequence of ints, got {denoising_steps!r}"
            )
        if bool((steps < 0).any()) or bool((steps > self.num_train_timesteps).any()):
            raise ValueError(
                f"denoising_steps must lie in [0, {self.num_train_timesteps}] to be warped, "
                f"got {steps.tolist()}"
            )
        table = torch.cat([self.timesteps, torch.zeros(1, dtype=torch.float32)])
        return table[self.num_train_timesteps - steps.long()]

    def sigma(self, timestep: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Sigma of the nearest table timestep, looked up in ``dtype`` (float32 or float64).

        Args:
            timestep: any shape, any device.

        Returns:
            sigmas of the same shape as ``timestep``, in ``dtype``, on its device.
        """
        table_t = self.timesteps.to(device=timestep.device, dtype=dtype)
        table_s = self.sigmas.to(device=timestep.device, dtype=dtype)
        flat = timestep.reshape(-1, 1).to(dtype)
        index = torch.argmin((table_t.unsqueeze(0) - flat).abs(), dim=1)
        return table_s[index].reshape(timestep.shape)

    def to_x0(self, flow: torch.Tensor, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Clean prediction ``x0 = x_t - sigma(t) * flow``, computed in float64, returned in ``flow.dtype``.

        Args:
            flow: flow prediction ``[B, F, C, H, W]`` (any shape whose leading dims are ``timestep``'s).
            x_t: noisy input, same shape.
            timestep: ``[B, F]`` (a prefix of the latents' shape) or a scalar.
        """
        sigma = _broadcastable(self.sigma(timestep, torch.float64), flow)
        return (x_t.double() - sigma * flow.double()).to(flow.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """``(1 - sigma(t)) * x0 + sigma(t) * noise`` with a float32 sigma, returned in ``noise.dtype``.

        Args:
            x0: clean latents ``[B, F, C, H, W]`` (or any shape whose leading dims are ``timestep``'s).
            noise: same shape.
            timestep: ``[B, F]`` (a prefix of the latents' shape) or a scalar.
        """
        sigma = _broadcastable(self.sigma(timestep, torch.float32), x0)
        return ((1 - sigma) * x0 + sigma * noise).to(noise.dtype)


def _broadcastable(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Append singleton dims so ``sigma [*T]`` broadcasts over ``like [*T, ...]``."""
    if like.shape[: sigma.ndim] != sigma.shape:
        raise ValueError(
            f"timestep shape {tuple(sigma.shape)} must be a prefix of the latents' shape {tuple(like.shape)}"
        )
    return sigma.reshape(sigma.shape + (1,) * (like.ndim - sigma.ndim))

"""Shared fixtures."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import huggingface_hub.constants
import pytest
import torch
from torch import nn

# The suite runs tiny models whose ops are overhead-bound: one thread is fastest and does not
# oversubscribe a small, shared machine (2 threads on a loaded 2-core box ran 10-50x slower).
torch.set_num_threads(1)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Hub offline mode with an empty cache (returned), and no network at all: a test that tries to
    open a connection fails. Sets the environment variables and huggingface_hub's import-time
    constants."""
    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def refuse(sock: socket.socket, address: object) -> NoReturn:
        raise AssertionError(f"a test tried to connect to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return cache


@pytest.fixture
def record_moves(monkeypatch: pytest.MonkeyPatch) -> Callable[[nn.Module], list[torch.device]]:
    """``record_moves(module)``: the list of devices ``module.to`` is called with from then on."""

    def record(module: nn.Module) -> list[torch.device]:
        moves: list[torch.device] = []
        original_to = module.to

        def to(device: torch.device | str) -> Any:
            moves.append(torch.device(device))
            return original_to(device)

        monkeypatch.setattr(module, "to", to)
        return moves

    return record

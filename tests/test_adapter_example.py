"""``examples/wrap_upstream_pipeline.py`` run the documented way: from inside a (fake) Self-Forcing checkout.

The checkout is a temporary directory holding Self-Forcing's package layout (``pipeline/``,
``utils/wan_wrapper.py``, ``configs/*.yaml``, ``checkpoints/*.pt``) whose classes are built from the
stand-ins of :mod:`memrope.testing.upstream`, so the script imports ``pipeline`` from the working
directory as it would in the real repository. Where ``omegaconf`` (a Self-Forcing requirement) is
not installed, the checkout carries a minimal substitute for the two calls the script makes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from script_modules import import_script

from memrope.testing.upstream import SMALL_MODEL, CausalWanStandin

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "wrap_upstream_pipeline.py"
TINY_MODEL = SMALL_MODEL
NUM_FRAMES = 6  # two chunks of 3 latent frames
needs_video = pytest.mark.skipif(
    importlib.util.find_spec("imageio_ffmpeg") is None or importlib.util.find_spec("imageio") is None,
    reason="needs the video extra",
)

WAN_WRAPPER = f'''
"""Self-Forcing's utils/wan_wrapper.py, built from memrope's stand-ins."""
import torch
from torch import nn

from memrope.testing.upstream import CausalWanStandin, WanDiffusionWrapperStandin

TINY_MODEL = {TINY_MODEL!r}


class WanDiffusionWrapper(WanDiffusionWrapperStandin):
    def __init__(self, timestep_shift=5.0, is_causal=True, local_attn_size=-1, sink_size=0, **_):
        super().__init__(CausalWanStandin(**TINY_MODEL, local_attn_size=local_attn_size, sink_size=sink_size), shift=timestep_shift)


class WanTextEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))

    def forward(self, text_prompts):
        generator = torch.Generator().manual_seed(len(text_prompts[0]))
        embeds = torch.randn(len(text_prompts), 5, TINY_MODEL["text_dim"], generator=generator)
        return {{"prompt_embeds": embeds.to(self.anchor.device)}}


class WanVAEWrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))

    def decode_to_pixel(self, latent, use_cache=False):
        pixels = latent[:, :, :3].float().repeat_interleave(8, dim=-1).repeat_interleave(8, dim=-2)
        return torch.tanh(pixels)
'''

CAUSAL_INFERENCE = '''
"""Self-Forcing's pipeline/causal_inference.py, built from memrope's stand-ins."""
from memrope.testing.upstream import CausalInferencePipelineStandin
from utils.wan_wrapper import WanDiffusionWrapper, WanTextEncoder, WanVAEWrapper


class CausalInferencePipeline(CausalInferencePipelineStandin):
    def __init__(self, args, device, generator=None, text_encoder=None, vae=None):
        generator = WanDiffusionWrapper(**getattr(args, "model_kwargs", {}), is_causal=True) if generator is None else generator
        super().__init__(
            generator,
            variant="self_forcing",
            num_frame_per_block=getattr(args, "num_frame_per_block", 1),
            frame_seq_length=12,  # hard-coded upstream (1560 for Wan 2.1 at 480p); 6 x 8 latents here
            denoising_step_list=tuple(args.denoising_step_list),
            warp_denoising_step=args.warp_denoising_step,
            local_attn_size=generator.model.local_attn_size,
            context_noise=args.context_noise,
            independent_first_frame=args.independent_first_frame,
            args=args,
        )
        self.text_encoder = WanTextEncoder() if text_encoder is None else text_encoder
        self.vae = WanVAEWrapper() if vae is None else vae

    def inference(self, noise, text_prompts, initial_latent=None, return_latents=False):
        conditional_dict = self.text_encoder(text_prompts=text_prompts)
        latents = super().inference(noise, conditional_dict["prompt_embeds"])
        video = (self.vae.decode_to_pixel(latents) * 0.5 + 0.5).clamp(0, 1)
        return (video, latents) if return_latents else video
'''

OMEGACONF_SUBSTITUTE = '''
"""The two OmegaConf calls Self-Forcing's inference makes (load, merge), for a test checkout."""
import yaml


class _Config(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _wrap(value):
    return _Config({key: _wrap(item) for key, item in value.items()}) if isinstance(value, dict) else value


class OmegaConf:
    @staticmethod
    def load(path):
        with open(path) as handle:
            return _wrap(yaml.safe_load(handle) or {})

    @staticmethod
    def merge(*configs):
        merged = {}
        for config in configs:
            for key, value in config.items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    value = {**merged[key], **value}
                merged[key] = value
        return _wrap(merged)
'''

DEFAULT_CONFIG = """
denoising_step_list: [1000, 750, 500, 250]
warp_denoising_step: true
context_noise: 0
independent_first_frame: false
num_frame_per_block: 1
model_kwargs:
  timestep_shift: 5.0
"""

DMD_CONFIG = """
num_frame_per_block: 3
latent_channels: 4
latent_h: 6
latent_w: 8
model_kwargs:
  timestep_shift: 5.0
  local_attn_size: -1
"""


def _fake_checkout(root: Path) -> Path:
    """A Self-Forcing-shaped checkout in ``root / "Self-Forcing"``, with a tiny EMA checkpoint."""
    checkout = root / "Self-Forcing"
    files = {
        "pipeline/__init__.py": "from .causal_inference import CausalInferencePipeline\n",
        "pipeline/causal_inference.py": CAUSAL_INFERENCE,
        "utils/__init__.py": "",
        "utils/wan_wrapper.py": WAN_WRAPPER,
        "configs/default_config.yaml": DEFAULT_CONFIG,
        "configs/self_forcing_dmd.yaml": DMD_CONFIG,
    }
    if importlib.util.find_spec("omegaconf") is None:
        files["omegaconf/__init__.py"] = OMEGACONF_SUBSTITUTE
    for name, text in files.items():
        path = checkout / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    torch.manual_seed(123)
    weights = {
        f"model.{name}": tensor for name, tensor in CausalWanStandin(**TINY_MODEL).state_dict().items()
    }
    (checkout / "checkpoints").mkdir()
    torch.save({"generator_ema": weights}, checkout / "checkpoints" / "self_forcing_dmd.pt")
    return checkout


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _frame_count(path: Path) -> int:
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:
        return sum(1 for _ in reader)


@needs_video
def test_documented_command_from_inside_the_checkout(tmp_path: Path) -> None:
    """The README/docstring command, from the checkout: imports its ``pipeline`` package, runs on the CPU."""
    checkout = _fake_checkout(tmp_path)
    result = _run(
        "--config",
        "configs/self_forcing_dmd.yaml",
        "--checkpoint",
        "checkpoints/self_forcing_dmd.pt",
        "--prompt",
        "a red fox running through snow",
        "--num-frames",
        str(NUM_FRAMES),
        "--output",
        "fox.mp4",
        cwd=checkout,
    )
    assert result.returncode == 0, result.stderr
    assert "MemRoPECache(policy='memrope'" in result.stdout
    assert "layer 0 slots: 0:f0 1:f1 2:f2 3:f3 4:f4 5:f5" in result.stdout  # the MemRoPE cache did the work
    assert f"wrote {checkout / 'fox.mp4'} ({NUM_FRAMES} frames, on cpu in float32)" in result.stdout
    assert _frame_count(checkout / "fox.mp4") == NUM_FRAMES


def _load_script() -> Any:
    return import_script(SCRIPT)


@needs_video
def test_upstream_option_from_elsewhere_keeps_your_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--upstream DIR``: the checkout's defaults (config, checkpoint) are found, the output lands where you are.

    In this process (faster than a fresh one); the checkout's modules are dropped again afterwards.
    """
    checkout = _fake_checkout(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    try:
        _load_script().main(
            [
                "--upstream",
                str(checkout),
                "--num-frames",
                str(NUM_FRAMES),
                "--output",
                "fox.mp4",
                "--device",
                "cpu",
            ]
        )
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] in {"pipeline", "utils", "omegaconf"}:
                del sys.modules[name]
    assert _frame_count(tmp_path / "fox.mp4") == NUM_FRAMES
    assert not (checkout / "fox.mp4").exists()


def test_outside_a_checkout_says_how_to_run_it(tmp_path: Path) -> None:
    script = _load_script()
    with pytest.raises(SystemExit, match="not a Self-Forcing checkout.*--upstream"):
        script.use_checkout(tmp_path)
    with pytest.raises(SystemExit):
        script.main(["--device", "gpu0", "--upstream", str(tmp_path)])

"""The diffusers adapter: a stock ``WanTransformer3DModel`` generating with a MemRoPE cache.

The transformer is diffusers' own tiny Wan test config (2 heads x 12 dims, 2 layers, as in
diffusers' ``tests/models/transformers/test_models_transformer_wan.py``); memrope's DiT holding the
same weights is the reference.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import needs_video, tiny_args
from safetensors.torch import load_file

pytest.importorskip("diffusers")

from diffusers import WanTransformer3DModel
from diffusers.models import attention_dispatch

import memrope
from memrope import MemRoPEConfig
from memrope.adapters import diffusers_wan
from memrope.adapters.diffusers_wan import DiffusersAttachment, diffusers_transformer
from memrope.cli import main
from memrope.convert import from_diffusers_state_dict, wan_config_from_diffusers
from memrope.devices import place_model, plan_devices
from memrope.models.wan import CausalWanModel
from memrope.pipeline import CausalInferencePipeline

TOLERANCE = 1e-5
TEXT_LEN = 8
BATCH = 2
LATENT_HW = (4, 6)
# diffusers' tiny Wan test transformer
TINY_DIFFUSERS = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 16,
    "freq_dim": 256,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}


def tiny_transformer(seed: int = 0, **changes: Any) -> Any:
    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**TINY_DIFFUSERS, **changes}).eval()


def reference_model(transformer: Any) -> CausalWanModel:
    """memrope's DiT holding the transformer's weights."""
    model = CausalWanModel(wan_config_from_diffusers(dict(transformer.config), text_len=TEXT_LEN))
    model.load_state_dict(from_diffusers_state_dict(transformer.state_dict()), strict=True)
    return model.eval()


def stock_flow(transformer: Any, seed: int = 1) -> torch.Tensor:
    """diffusers' own forward on fixed inputs (1-D timestep, full prompt)."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, 4, 3, *LATENT_HW, generator=generator)
    text = torch.randn(1, 5, 16, generator=generator)
    with torch.no_grad():
        (flow,) = transformer(
            hidden_states=hidden,
            timestep=torch.tensor([500.0]),
            encoder_hidden_states=text,
            return_dict=False,
        )
    return flow  # type: ignore[no-any-return]


@pytest.mark.parametrize("policy", ["memrope", "sink"])
def test_tiny_diffusers_config_matches_memrope_dit_over_ten_chunks(policy: str) -> None:
    transformer = tiny_transformer()
    model = reference_model(transformer)
    config = MemRoPEConfig(policy=policy, cache_frames=7, sink_frames=1, chunk_frames=2)
    generator = torch.Generator().manual_seed(2)
    text = torch.randn(BATCH, 5, 16, generator=generator)
    with memrope.attach(transformer, config, text_len=TEXT_LEN) as attachment, torch.no_grad():
        assert isinstance(attachment, DiffusersAttachment)
        caches = (model.new_cache(config, BATCH, LATENT_HW), attachment.new_cache(config, BATCH, LATENT_HW))
        contexts = (model.encode_context(text), attachment.encode_context(text))
        for chunk in range(10):
            start = chunk * config.chunk_frames
            for step in range(2):  # a denoising call, then the clean call rewriting the chunk
                latents = torch.randn(BATCH, config.chunk_frames, 4, *LATENT_HW, generator=generator)
                timesteps = torch.rand(BATCH, config.chunk_frames, generator=generator) * 1000 * (1 - step)
                expected = model(latents, timesteps, contexts[0], cache=caches[0], start_frame=start)
                flow = attachment(latents, timesteps, contexts[1], cache=caches[1], start_frame=start)
                torch.testing.assert_close(flow, expected, rtol=0, atol=TOLERANCE)
        for layer in range(2):
            for ours, theirs in zip(caches[1].layer_contents(layer), caches[0].layer_contents(layer)):
                torch.testing.assert_close(ours, theirs, rtol=0, atol=TOLERANCE)
        assert attachment.cache is caches[1]


def test_remove_restores_the_transformer_exactly() -> None:
    transformer = tiny_transformer()
    before = stock_flow(transformer)
    processors = dict(transformer.attn_processors)
    attachment = memrope.attach(transformer, MemRoPEConfig(cache_frames=7, sink_frames=1, chunk_frames=2))
    assert all(
        isinstance(processor, diffusers_wan._MemRoPEProcessor)
        for processor in transformer.attn_processors.values()
    )
    attachment(
        torch.randn(1, 2, 4, *LATENT_HW), torch.full((1, 2), 900.0), torch.randn(1, 3, 16), start_frame=0
    )
    attachment.remove()
    attachment.remove()  # harmless twice
    assert not attachment.active and attachment.cache is None
    assert transformer.attn_processors == processors
    hooked = [
        name
        for name, module in transformer.named_modules()
        if module._forward_hooks or module._forward_pre_hooks
    ]
    assert hooked == []
    assert torch.equal(stock_flow(transformer), before)


def test_attach_twice_and_direct_calls_are_refused() -> None:
    transformer = tiny_transformer()
    with memrope.attach(transformer) as attachment:
        with pytest.raises(RuntimeError, match="already attached"):
            memrope.attach(transformer)
        with pytest.raises(RuntimeError, match="call the attachment"):
            stock_flow(transformer)
    assert not attachment.active
    with pytest.raises(RuntimeError, match="was removed"):
        attachment.encode_context(torch.randn(1, 3, 16))
    stock_flow(transformer)  # usable again


def test_bad_options_and_inputs_are_refused() -> None:
    transformer = tiny_transformer()
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['sink'\]"):
        memrope.attach(transformer, sink=1)
    with pytest.raises(
        ValueError, match=r"key_workspace must be one of \['per_layer', 'shared'\], got 'global'"
    ):
        memrope.attach(transformer, key_workspace="global")
    with pytest.raises(ValueError, match="text_len must be an int >= 1"):
        memrope.attach(transformer, text_len=0)
    with pytest.raises(TypeError, match="takes a diffusers WanTransformer3DModel, got Linear"):
        diffusers_wan.attach(torch.nn.Linear(2, 2))
    image_to_video = tiny_transformer(image_dim=8, added_kv_proj_dim=8)
    with pytest.raises(ValueError, match="image_dim"):
        memrope.attach(image_to_video)
    assert not diffusers_wan._attached(image_to_video)
    with memrope.attach(
        transformer, chunk_frames=2, cache_frames=7, sink_frames=1, text_len=TEXT_LEN
    ) as attachment:
        assert attachment.cache_config.chunk_frames == 2 and attachment.config.text_len == TEXT_LEN
        with pytest.raises(
            ValueError, match=r"latents must have shape \[B, F, 4, H, W\], got \[1, 2, 3, 4, 6\]"
        ):
            attachment(
                torch.randn(1, 2, 3, *LATENT_HW), torch.zeros(1, 2), torch.randn(1, 3, 16), start_frame=0
            )
        with pytest.raises(ValueError, match=r"timesteps must have shape \[B, F\] = \[1, 2\], got \[1\]"):
            attachment(torch.randn(1, 2, 4, *LATENT_HW), torch.zeros(1), torch.randn(1, 3, 16), start_frame=0)
        with pytest.raises(ValueError, match=r"text_embeds must have shape \[B, L <= 8, 16\]"):
            attachment(
                torch.randn(1, 2, 4, *LATENT_HW), torch.zeros(1, 2), torch.randn(1, 9, 16), start_frame=0
            )


def test_set_attention_backend_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    transformer = tiny_transformer()
    seen: list[object] = []
    dispatch = attention_dispatch.dispatch_attention_fn

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(kwargs.get("backend"))
        return dispatch(*args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(attention_dispatch, "dispatch_attention_fn", recording)
    with memrope.attach(transformer, chunk_frames=2, cache_frames=7, sink_frames=1) as attachment:
        transformer.set_attention_backend("native")
        attachment(torch.randn(1, 2, 4, *LATENT_HW), torch.zeros(1, 2), torch.randn(1, 3, 16), start_frame=0)
    assert len(seen) == 4  # self- and cross-attention of 2 blocks
    assert {str(getattr(backend, "value", backend)) for backend in seen} == {"native"}


def test_pipeline_drives_the_attachment_like_memrope_dit_with_a_prompt_switch() -> None:
    transformer = tiny_transformer()
    model = reference_model(transformer)
    config = MemRoPEConfig(cache_frames=7, sink_frames=1, chunk_frames=2)
    generator = torch.Generator().manual_seed(3)
    text, switched = (
        torch.randn(BATCH, 5, 16, generator=generator),
        torch.randn(BATCH, 4, 16, generator=generator),
    )
    switches = [(6, switched)]
    outputs = []
    with memrope.attach(transformer, config, text_len=TEXT_LEN) as attachment:
        for dit in (model, attachment):
            pipeline = CausalInferencePipeline(dit, config, dtype=torch.float32)
            outputs.append(
                pipeline.generate(
                    text,
                    num_frames=12,
                    latent_hw=LATENT_HW,
                    generator=torch.Generator().manual_seed(0),
                    prompt_switches=switches,
                )
            )
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=TOLERANCE)


def test_device_hook_moves_arguments_to_the_module_device() -> None:
    """The hook logic behind blocks spread over devices (CPU only here: the target is "meta")."""
    module = torch.nn.Linear(3, 3, device="meta")
    hidden, flag = torch.randn(2, 3), "kept"
    moved = diffusers_wan._to_device_of("weight")(module, (hidden, flag, None))
    assert moved[0].device.type == "meta" and moved[1:] == (flag, None)
    cpu = torch.nn.Linear(3, 3)
    assert diffusers_wan._to_device_of("weight")(cpu, (hidden,))[0] is hidden


def test_diffusers_transformer_shares_the_memrope_weights() -> None:
    torch.manual_seed(0)
    model = CausalWanModel(wan_config_from_diffusers(TINY_DIFFUSERS, text_len=TEXT_LEN)).eval()
    transformer = diffusers_transformer(model)
    assert transformer.proj_out.weight.data_ptr() == model.head.head.weight.data_ptr()
    converted = from_diffusers_state_dict(transformer.state_dict())
    assert all(torch.equal(converted[name], tensor) for name, tensor in model.state_dict().items())


def test_import_memrope_and_attach_do_not_import_diffusers() -> None:
    code = (
        "import json, sys, memrope\n"
        "memrope.attach\n"
        "from memrope.adapters import available_adapters\n"
        "print(json.dumps({'loaded': 'diffusers' in sys.modules, 'adapters': list(available_adapters())}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parent,
    )
    report = json.loads(completed.stdout)
    assert report == {"loaded": False, "adapters": ["upstream", "diffusers"]}


def test_checkpoint_resume_through_the_attachment_is_bit_identical(tmp_path: Path) -> None:
    transformer = tiny_transformer()
    config = MemRoPEConfig(cache_frames=7, sink_frames=1, chunk_frames=2)
    text = torch.randn(BATCH, 5, 16, generator=torch.Generator().manual_seed(4))
    path = tmp_path / "run.safetensors"
    with memrope.attach(transformer, config, text_len=TEXT_LEN) as attachment:
        full = list(
            CausalInferencePipeline(attachment, config, dtype=torch.float32).stream(
                text, num_frames=10, seed=11, latent_hw=LATENT_HW, save_every=2, checkpoint_path=path
            )
        )
        resumed = list(
            CausalInferencePipeline(attachment, config, dtype=torch.float32).stream(resume_from=path)
        )
    assert [chunk.index for chunk in resumed] == [4]
    assert torch.equal(resumed[0].latents, full[4].latents)


@needs_video
def test_cli_diffusers_backend_matches_the_memrope_backend(tmp_path: Path) -> None:
    latents = {}
    for backend in ("memrope", "diffusers"):
        path = tmp_path / f"{backend}.safetensors"
        args = tiny_args(tmp_path / f"{backend}.mp4", "--num-frames", "6", "--save-latents", str(path))
        assert main([*args, "--backend", backend]) == 0
        latents[backend] = load_file(path)["latents"]
    torch.testing.assert_close(latents["diffusers"], latents["memrope"], rtol=0, atol=TOLERANCE)


def test_a_model_split_over_devices_converts_and_caches_block_by_block() -> None:
    """``("cpu", "meta")`` stands in for two GPUs (as in test_devices.py): placement only, no compute."""
    config = wan_config_from_diffusers(TINY_DIFFUSERS, text_len=TEXT_LEN)
    plan = plan_devices("split", ("cpu", "meta"), num_layers=config.num_layers)
    transformer = diffusers_transformer(place_model(CausalWanModel(config).eval(), plan), config)
    assert [block.attn1.to_q.weight.device for block in transformer.blocks] == list(plan.block_devices)
    assert transformer.proj_out.weight.device == plan.device_map["head"]
    cache_config = MemRoPEConfig(cache_frames=7, sink_frames=1, chunk_frames=2)
    with memrope.attach(transformer, cache_config, text_len=TEXT_LEN) as attachment:
        pipeline = CausalInferencePipeline(attachment, cache_config, device=plan.primary_device)
        pipeline.stream(torch.zeros(1, 3, config.text_dim), num_frames=4, seed=0, latent_hw=LATENT_HW)
        assert pipeline.cache is not None
        assert pipeline.cache.layer_devices == list(plan.block_devices)
        context = attachment.encode_context(torch.zeros(1, 3, config.text_dim))
        assert [keys.device for keys in context.keys] == list(plan.block_devices)

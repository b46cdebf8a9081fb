"""memrope.components: building a preset's DiT, text encoder, decoder and pipeline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from memrope import components
from memrope.config import MemRoPEConfig
from memrope.encoders import HashTextEncoder
from memrope.errors import NonFiniteError
from memrope.loading import CheckpointFormatError, CheckpointKeyError
from memrope.presets import TINY_MODEL_CONFIG, get_preset, tiny_model
from memrope.vae import TinyDecoder

TINY = get_preset("tiny")


def test_tiny_model_is_the_seeded_one_in_eval_mode() -> None:
    model = components.load_model(TINY, device="cpu")
    reference = tiny_model()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert (
        components.load_model(TINY, device="cpu", dtype=torch.bfloat16).patch_embedding.weight.dtype
        == torch.bfloat16
    )


def test_checkpoint_weights_are_loaded_strictly(tmp_path: Path) -> None:
    weights = tmp_path / "seed3.safetensors"
    save_file(tiny_model(seed=3).state_dict(), weights)
    model = components.load_model(TINY, checkpoint=weights, device="cpu")
    assert torch.equal(model.head.head.weight, tiny_model(seed=3).head.head.weight)
    assert model.patch_embedding.weight.device.type == "cpu" and not model.training
    partial = tmp_path / "partial.safetensors"
    save_file({"head.head.weight": torch.zeros(64, TINY_MODEL_CONFIG.dim)}, partial)
    with pytest.raises(CheckpointKeyError, match="missing"):
        components.load_model(TINY, checkpoint=partial, device="cpu")
    with pytest.raises(FileNotFoundError):
        components.load_model(TINY, checkpoint=tmp_path / "absent.safetensors", device="cpu")
    with pytest.raises(ValueError, match="lora needs checkpoint"):
        components.load_model(TINY, lora=tmp_path / "lora.pt", device="cpu")


def test_damaged_and_nonfinite_checkpoints_are_refused_by_name(tmp_path: Path) -> None:
    weights = tiny_model(seed=3).state_dict()
    weights["blocks.0.self_attn.k.weight"][0, 0] = float("nan")
    poisoned = tmp_path / "nan.safetensors"
    save_file(weights, poisoned)
    with pytest.raises(
        NonFiniteError,
        match=r"nan\.safetensors: 1 tensor with NaN or infinite values: "
        r"'blocks\.0\.self_attn\.k\.weight' \(1 NaN of \d+ elements\)",
    ):
        components.load_model(TINY, checkpoint=poisoned, device="cpu")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(poisoned.read_bytes()[:-10])
    with pytest.raises(CheckpointFormatError, match=r"cut\.safetensors is truncated: expected \d+ bytes"):
        components.load_model(TINY, checkpoint=truncated, device="cpu")


def test_tiny_text_encoder_and_decoder() -> None:
    encoder = components.load_text_encoder(TINY)
    assert isinstance(encoder, HashTextEncoder)
    embeds = encoder.encode(["a red fox"])
    assert embeds.shape == (1, TINY_MODEL_CONFIG.text_len, TINY_MODEL_CONFIG.text_dim)
    assert isinstance(components.load_decoder(TINY), TinyDecoder)
    other = dataclasses.replace(TINY, model_config=dataclasses.replace(TINY_MODEL_CONFIG, out_dim=4))
    with pytest.raises(ValueError, match="16-channel latents only"):
        components.load_decoder(other)


def test_pipeline_follows_the_preset_and_decodes_every_chunk() -> None:
    model = components.load_model(TINY, device="cpu")
    decoder = components.load_decoder(TINY)
    pipeline = components.make_pipeline(TINY, model, decoder=decoder)
    assert pipeline.cache_config == TINY.cache and pipeline.dtype == torch.float32
    assert pipeline.denoising_steps == TINY.denoising_steps and pipeline.device.type == "cpu"
    prompt = components.load_text_encoder(TINY).encode(["a red fox"])
    chunks = list(pipeline.stream(prompt, num_frames=6, seed=0, latent_hw=TINY.latent_hw))
    assert [c.frames.shape for c in chunks] == [(1, 9, 3, 128, 192), (1, 12, 3, 128, 192)]  # type: ignore[union-attr]
    assert pipeline.cache is not None and pipeline.cache.slot_layout() == [f"f{i}" for i in range(6)]
    sink = MemRoPEConfig(policy="sink", cache_frames=6, sink_frames=3)
    assert components.make_pipeline(TINY, model, cache=sink).cache_config == sink


@pytest.mark.filterwarnings("ignore:.*to a meta parameter in the current model, which is a no-op")
def test_placement_puts_each_module_on_its_planned_device(tmp_path: Path) -> None:
    from memrope.devices import plan_devices

    weights = tmp_path / "seed3.safetensors"
    save_file(tiny_model(seed=3).state_dict(), weights)
    split = plan_devices("split", ("cpu", "meta"), num_layers=TINY_MODEL_CONFIG.num_layers)
    for checkpoint in (None, weights):
        model = components.load_model(TINY, checkpoint=checkpoint, placement=split)
        assert (
            model.blocks[0].ffn[0].weight.device.type == "cpu"
            and model.patch_embedding.weight.device.type == "cpu"
        )
        assert (
            model.blocks[1].ffn[0].weight.device.type == "meta"
            and model.head.head.weight.device.type == "meta"
        )
    same = plan_devices("split", ("cpu", "cpu"), num_layers=TINY_MODEL_CONFIG.num_layers)
    placed = components.load_model(TINY, checkpoint=weights, placement=same)
    assert torch.equal(placed.blocks[1].ffn[0].weight, tiny_model(seed=3).blocks[1].ffn[0].weight)
    with pytest.raises(ValueError, match="device or placement, not both"):
        components.load_model(TINY, device="cpu", placement=same)


@pytest.mark.parametrize(
    ("family", "lora", "kind"),
    [
        ("longlive", True, "longlive"),
        ("longlive", False, "auto"),
        ("self-forcing", True, "auto"),
        ("tiny", True, "auto"),
    ],
)
def test_a_checkpoint_with_a_lora_is_read_as_the_family_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, family: str, lora: bool, kind: str
) -> None:
    """The loader kind comes from the preset's family entry (``lora_checkpoint_kind``), not a name test."""
    from memrope.presets import MODEL_FAMILIES

    seen: list[str] = []

    def record_kind(model: object, source: object, *, kind: str, lora: object) -> None:
        seen.append(kind)

    monkeypatch.setattr(components, "load_wan_weights", record_kind)
    family_kind = MODEL_FAMILIES[family].lora_checkpoint_kind
    preset = dataclasses.replace(TINY, family=family, lora_checkpoint_kind=family_kind)
    lora_path = tmp_path / "lora.pt" if lora else None
    components.load_model(preset, checkpoint=tmp_path / "base.pt", lora=lora_path, device="cpu")
    assert seen == [kind]

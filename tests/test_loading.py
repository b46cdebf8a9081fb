"""Checkpoint loading: every supported format, strictness, LoRA merge, safe unpickling, offline Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from memrope.loading import (
    CHECKPOINTS,
    CheckpointFormatError,
    CheckpointKeyError,
    CheckpointKind,
    load_state_dict_strict,
    load_wan_weights,
    merge_lora,
    normalise_key,
    read_state_dict,
    resolve_checkpoint,
)
from memrope.models.wan import CausalWanModel, WanConfig

DIM = 32
FFN_DIM = 64
NUM_BLOCKS = 2
TINY_CONFIG = WanConfig(
    dim=DIM,
    ffn_dim=FFN_DIM,
    num_heads=2,
    num_layers=NUM_BLOCKS,
    in_dim=4,
    out_dim=4,
    text_dim=16,
    text_len=8,
    freq_dim=32,
)
LORA_RANK = 3
LINEAR_NAMES = [
    f"blocks.{block}.{module}"
    for block in range(NUM_BLOCKS)
    for module in [f"{attn}.{proj}" for attn in ("self_attn", "cross_attn") for proj in "qkvo"]
    + ["ffn.0", "ffn.2"]
]
COMMIT_HASH = "0123456789abcdef0123456789abcdef01234567"


class NotATensor:
    """A picklable object that ``torch.load(weights_only=True)`` must refuse."""


def make_model() -> CausalWanModel:
    return CausalWanModel(TINY_CONFIG)


def random_weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(tensor.shape, generator=generator)
        for name, tensor in make_model().state_dict().items()
    }


def wrapper_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename like Self-Forcing's FSDP-wrapped training wrapper does."""
    return {
        f"model._fsdp_wrapped_module.{name}".replace("blocks.1.", "blocks.1._fsdp_wrapped_module."): t
        for name, t in weights.items()
    }


def assert_model_holds(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(loaded[name], tensor.to(loaded[name].dtype), rtol=0, atol=0, msg=name)


def lora_factors(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module name -> (A [rank, in], B [out, rank]) for every Linear in every block."""
    generator = torch.Generator().manual_seed(seed)
    model_weights = make_model().state_dict()
    shapes = {name: model_weights[f"{name}.weight"].shape for name in LINEAR_NAMES}
    return {
        name: (
            torch.randn(LORA_RANK, shape[1], generator=generator),
            torch.randn(shape[0], LORA_RANK, generator=generator),
        )
        for name, shape in shapes.items()
    }


def peft_lora_state_dict(factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """PEFT names; every other module uses the ``.default`` adapter-name form and a ``model.`` prefix."""
    state_dict = {}
    for position, (name, (down, up)) in enumerate(factors.items()):
        if position % 2:
            state_dict[f"model.base_model.model.{name}.lora_A.default.weight"] = down
            state_dict[f"model.base_model.model.{name}.lora_B.default.weight"] = up
        else:
            state_dict[f"base_model.model.{name}.lora_A.weight"] = down
            state_dict[f"base_model.model.{name}.lora_B.weight"] = up
    return state_dict


def expected_merge(
    base: dict[str, torch.Tensor], factors: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float
) -> dict[str, torch.Tensor]:
    merged = dict(base)
    for name, (down, up) in factors.items():
        weight = base[f"{name}.weight"]
        merged[f"{name}.weight"] = (weight.float() + scale * (up @ down)).to(weight.dtype)
    return merged


# --- name normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.blocks.0.ffn.0.weight", "blocks.0.ffn.0.weight"),
        ("model._fsdp_wrapped_module.blocks.0.ffn.0.weight", "blocks.0.ffn.0.weight"),
        ("_fsdp_wrapped_module.model.blocks.1._fsdp_wrapped_module.norm3.bias", "blocks.1.norm3.bias"),
        ("base_model.model.blocks.0.self_attn.q.lora_A.weight", "blocks.0.self_attn.q.lora_A.weight"),
        ("head.head.weight", "head.head.weight"),
    ],
)
def test_normalise_key(name: str, expected: str) -> None:
    assert normalise_key(name) == expected


# --- Self-Forcing, bare state dicts, safetensors -------------------------------------------------


def test_self_forcing_checkpoint_loads_ema_or_raw_generator(tmp_path: Path) -> None:
    ema, raw = random_weights(0), random_weights(1)
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": wrapper_names(raw), "generator_ema": wrapper_names(ema), "step": 7}, path)

    assert_model_holds(load_wan_weights(make_model(), path), ema)
    assert_model_holds(load_wan_weights(make_model(), path, kind="self_forcing", use_ema=False), raw)


def test_use_ema_falls_back_to_generator_with_a_warning(tmp_path: Path) -> None:
    weights = random_weights(2)
    path = tmp_path / "only_generator.pt"
    torch.save({"generator": wrapper_names(weights)}, path)

    with pytest.warns(UserWarning, match="has no 'generator_ema'; loading 'generator'"):
        state_dict = read_state_dict(path, use_ema=True)
    assert state_dict.keys() == weights.keys()


def test_use_ema_false_without_generator_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "only_ema.pt"
    torch.save({"generator_ema": random_weights(3)}, path)
    with pytest.raises(CheckpointFormatError, match="no 'generator'; pass use_ema=True"):
        read_state_dict(path, use_ema=False)


@pytest.mark.parametrize("kind", ["auto", "state_dict"])
def test_bare_state_dict(tmp_path: Path, kind: CheckpointKind) -> None:
    weights = random_weights(4)
    path = tmp_path / "bare.pt"
    torch.save(weights, path)
    assert_model_holds(load_wan_weights(make_model(), path, kind=kind), weights)


def test_kind_must_match_the_file_structure(tmp_path: Path) -> None:
    bare, training = tmp_path / "bare.pt", tmp_path / "training.pt"
    torch.save(random_weights(5), bare)
    torch.save({"generator_ema": random_weights(5)}, training)
    with pytest.raises(CheckpointFormatError, match="neither 'generator_ema' nor 'generator'"):
        read_state_dict(bare, kind="self_forcing")
    with pytest.raises(CheckpointFormatError, match="is a training checkpoint"):
        read_state_dict(training, kind="state_dict")
    with pytest.raises(
        ValueError,
        match="kind must be one of 'auto', 'self_forcing', 'longlive', "
        "'safetensors', 'state_dict', got 'pickle'",
    ):
        read_state_dict(bare, kind="pickle")  # type: ignore[arg-type]


def test_safetensors_file(tmp_path: Path) -> None:
    weights = random_weights(6)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(weights, path)
    assert_model_holds(load_wan_weights(make_model(), path), weights)


def write_shards(directory: Path, weights: dict[str, torch.Tensor]) -> dict[str, str]:
    """Two shards split by name; returns the weight map name -> shard file."""
    names = sorted(weights)
    weight_map = {}
    for shard, shard_names in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), start=1):
        filename = f"diffusion_pytorch_model-0000{shard}-of-00002.safetensors"
        save_file({name: weights[name] for name in shard_names}, directory / filename)
        weight_map.update(dict.fromkeys(shard_names, filename))
    return weight_map


def test_sharded_safetensors_directory_with_index(tmp_path: Path) -> None:
    weights = random_weights(7)
    weight_map = write_shards(tmp_path, weights)
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_model_holds(load_wan_weights(make_model(), tmp_path), weights)

    weight_map["blocks.9.ffn.0.weight"] = next(iter(weight_map.values()))
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(CheckpointKeyError, match=r"do not match their index; 1 missing key: blocks\.9\.ffn"):
        read_state_dict(tmp_path)


def test_sharded_safetensors_directory_without_index(tmp_path: Path) -> None:
    weights = random_weights(8)
    write_shards(tmp_path, weights)
    assert_model_holds(load_wan_weights(make_model(), tmp_path, kind="safetensors"), weights)


def test_directory_without_safetensors_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFormatError, match=r"holds no \*\.safetensors files"):
        read_state_dict(tmp_path)


def test_dtype_converts_the_model_after_loading(tmp_path: Path) -> None:
    weights = random_weights(9)
    path = tmp_path / "bare.pt"
    torch.save(weights, path)
    model = load_wan_weights(make_model(), path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert_model_holds(model, weights)


# --- safety --------------------------------------------------------------------------------------


def test_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pt"
    torch.save({"generator": random_weights(10), "payload": NotATensor()}, path)
    with pytest.raises(CheckpointFormatError, match="refusing to load .*never unpickles arbitrary objects"):
        load_wan_weights(make_model(), path)


# --- damaged and foreign files -------------------------------------------------------------------

RANDOM_BYTES = bytes((index * 167 + 13) % 256 for index in range(4096))  # starts b"\r\xb4[\x02": no format


def safetensors_bytes(tmp_path: Path, weights: dict[str, torch.Tensor]) -> bytes:
    path = tmp_path / "whole.safetensors"
    save_file(weights, path)
    return path.read_bytes()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_an_empty_file_is_named_and_explained(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(
        CheckpointFormatError,
        match=rf"{path} is empty \(0 bytes\): a download or save into it did "
        r"not finish; fetch it again",
    ):
        load_wan_weights(make_model(), path)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_random_bytes_are_not_a_checkpoint(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(RANDOM_BYTES)
    with pytest.raises(
        CheckpointFormatError,
        match=(
            rf"{path} is not a PyTorch checkpoint \(torch\.save\) or a safetensors file \(it starts with "
            r"b'\\r\\xb4\[\\x02.*'\); check that the path names the weights file"
        ),
    ):
        load_wan_weights(make_model(), path)


def test_a_text_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_text("<html><body>404 Not Found</body></html>")
    with pytest.raises(CheckpointFormatError, match=r"is not a PyTorch checkpoint .*starts with b'<html><b'"):
        read_state_dict(path)


def test_a_truncated_safetensors_file_says_how_many_bytes_are_missing(tmp_path: Path) -> None:
    whole = safetensors_bytes(tmp_path, random_weights(40))
    path = tmp_path / "cut.safetensors"
    path.write_bytes(whole[:-100])
    with pytest.raises(
        CheckpointFormatError,
        match=(
            rf"{path} is truncated: expected {len(whole)} bytes, got {len(whole) - 100} \(100 missing\); fetch it again"
        ),
    ):
        load_wan_weights(make_model(), path)
    path.write_bytes(whole[:40])
    with pytest.raises(
        CheckpointFormatError, match=r"is truncated: its safetensors header alone needs \d+ bytes, got 40"
    ):
        read_state_dict(path)
    path.write_bytes(whole + b"\0" * 3)
    with pytest.raises(
        CheckpointFormatError, match=r"is corrupted: expected \d+ bytes, got \d+ \(3 more than its header"
    ):
        read_state_dict(path)


def test_a_truncated_torch_checkpoint_is_named(tmp_path: Path) -> None:
    whole_path = tmp_path / "whole.pt"
    torch.save({"generator": random_weights(41)}, whole_path)
    path = tmp_path / "cut.pt"
    path.write_bytes(whole_path.read_bytes()[:-1000])
    with pytest.raises(
        CheckpointFormatError,
        match=rf"{path} is truncated: it is a PyTorch \(zip\) checkpoint of "
        r"\d+ bytes whose end, the zip directory, is missing",
    ):
        load_wan_weights(make_model(), path)
    legacy = tmp_path / "legacy.pt"
    torch.save(random_weights(41), legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:5000])
    with pytest.raises(
        CheckpointFormatError, match=rf"{legacy} cannot be read: it is truncated or corrupted"
    ):
        read_state_dict(legacy)


def test_safetensors_data_under_another_suffix_is_read_as_safetensors(tmp_path: Path) -> None:
    weights = random_weights(42)
    path = tmp_path / "weights.pt"
    path.write_bytes(safetensors_bytes(tmp_path, weights))
    assert_model_holds(load_wan_weights(make_model(), path), weights)
    with pytest.raises(
        CheckpointFormatError,
        match="holds safetensors data, not a torch.save checkpoint: read it with kind='safetensors'",
    ):
        read_state_dict(path, kind="state_dict")
    wrong = tmp_path / "weights.safetensors"
    torch.save(weights, wrong)
    with pytest.raises(
        CheckpointFormatError, match="holds a torch.save checkpoint, not safetensors: name it"
    ):
        read_state_dict(wrong)


def test_damaged_lora_files_are_named(tmp_path: Path) -> None:
    base = tmp_path / "base.safetensors"
    save_file(random_weights(43), base)
    lora = tmp_path / "lora.pt"
    lora.write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match=rf"{lora} is empty"):
        load_wan_weights(make_model(), base, lora=lora)


# --- strictness ----------------------------------------------------------------------------------


def test_missing_unexpected_and_mismatched_keys_are_listed_with_counts() -> None:
    weights = random_weights(11)
    missing = sorted(name for name in weights if name.startswith("blocks.1.self_attn."))  # 10 names
    for name in missing:
        del weights[name]
    weights["blocks.2.ffn.0.weight"] = torch.zeros(FFN_DIM, DIM)
    weights["head.head.weight"] = torch.zeros(3, DIM)

    with pytest.raises(CheckpointKeyError) as caught:
        load_state_dict_strict(make_model(), weights, origin="ckpt.pt")

    error = caught.value
    message = str(error)
    assert message.startswith("checkpoint ckpt.pt does not match CausalWanModel")
    assert f"10 missing keys: {', '.join(missing[:5])}, ... (5 more)" in message
    assert "1 unexpected key: blocks.2.ffn.0.weight" in message
    assert "1 shape mismatch: head.head.weight (checkpoint [3, 32], target [16, 32])" in message
    assert error.missing_keys == missing
    assert error.unexpected_keys == ["blocks.2.ffn.0.weight"]
    assert isinstance(error, ValueError)


def test_strict_load_rejects_before_touching_the_model() -> None:
    model = make_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    weights = random_weights(12)
    del weights["head.modulation"]
    with pytest.raises(CheckpointKeyError, match="1 missing key: head.modulation"):
        load_state_dict_strict(model, weights)
    assert_model_holds(model, before)


# --- LongLive and LoRA ---------------------------------------------------------------------------


def write_longlive(
    tmp_path: Path, base: dict[str, torch.Tensor], factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> tuple[Path, Path]:
    base_path, lora_path = tmp_path / "longlive_base.pt", tmp_path / "lora.pt"
    torch.save({"generator": wrapper_names(base)}, base_path)
    torch.save({"generator_lora": peft_lora_state_dict(factors)}, lora_path)
    return base_path, lora_path


def test_longlive_lora_is_merged_numerically(tmp_path: Path) -> None:
    base, factors = random_weights(13), lora_factors(14)
    base_path, lora_path = write_longlive(tmp_path, base, factors)

    model = load_wan_weights(make_model(), base_path, kind="longlive", lora=lora_path)
    assert_model_holds(model, expected_merge(base, factors, scale=1.0))

    halved = load_wan_weights(make_model(), base_path, kind="longlive", lora=lora_path, lora_alpha=1.5)
    assert_model_holds(halved, expected_merge(base, factors, scale=1.5 / LORA_RANK))


def test_bare_lora_file_and_low_precision_weights(tmp_path: Path) -> None:
    base = {name: t.to(torch.bfloat16) for name, t in random_weights(15).items()}
    factors = lora_factors(16)
    lora_path = tmp_path / "lora.pt"
    torch.save(peft_lora_state_dict(factors), lora_path)
    base_path = tmp_path / "base.pt"
    torch.save({"generator": base}, base_path)

    model = load_wan_weights(make_model().to(torch.bfloat16), base_path, lora=lora_path, use_ema=False)
    assert_model_holds(model, expected_merge(base, factors, scale=1.0))


def test_merge_lora_leaves_inputs_untouched() -> None:
    base, factors = random_weights(17), lora_factors(18)
    base_copy = {name: t.clone() for name, t in base.items()}
    merged = merge_lora(base, peft_lora_state_dict(factors))
    assert_model_holds(load_state_dict_strict(make_model(), base), base_copy)
    assert not torch.equal(merged["blocks.0.ffn.0.weight"], base["blocks.0.ffn.0.weight"])
    assert merged["blocks.0.norm3.weight"] is base["blocks.0.norm3.weight"]


def test_longlive_without_lora_is_an_error(tmp_path: Path) -> None:
    base_path, _ = write_longlive(tmp_path, random_weights(19), lora_factors(20))
    with pytest.raises(ValueError, match="kind='longlive' needs LongLive's LoRA: pass lora="):
        load_wan_weights(make_model(), base_path, kind="longlive")


def test_lora_for_absent_weights_lists_the_keys() -> None:
    factors = lora_factors(21)
    lora = peft_lora_state_dict(factors)
    lora["base_model.model.blocks.5.self_attn.q.lora_A.weight"] = torch.zeros(LORA_RANK, DIM)
    lora["base_model.model.blocks.5.self_attn.q.lora_B.weight"] = torch.zeros(DIM, LORA_RANK)
    with pytest.raises(
        CheckpointKeyError,
        match=(
            r"LoRA adapts weights that are not in the base state dict; 2 unexpected keys: "
            r"base_model\.model\.blocks\.5\.self_attn\.q\.lora_A\.weight, "
            r"base_model\.model\.blocks\.5\.self_attn\.q\.lora_B\.weight$"
        ),
    ):
        merge_lora(random_weights(22), lora)


def test_lora_shape_mismatch_is_listed() -> None:
    lora = peft_lora_state_dict(lora_factors(23))
    lora["base_model.model.blocks.0.ffn.0.lora_A.weight"] = torch.zeros(LORA_RANK, FFN_DIM)
    with pytest.raises(
        CheckpointKeyError,
        match=r"1 shape mismatch: .*blocks\.0\.ffn\.0\.lora_A\.weight "
        r"\[3, 64\] \(checkpoint \[64, 64\], target \[64, 32\]\)",
    ):
        merge_lora(random_weights(24), lora)


def test_malformed_lora_files_are_errors() -> None:
    base = random_weights(25)
    unpaired = {"base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(LORA_RANK, DIM)}
    with pytest.raises(CheckpointFormatError, match="without their A/B partner: .*self_attn.q.lora_A.weight"):
        merge_lora(base, unpaired)
    dora = peft_lora_state_dict(lora_factors(26))
    dora["base_model.model.blocks.0.self_attn.q.lora_magnitude_vector.default.weight"] = torch.ones(DIM)
    with pytest.raises(CheckpointFormatError, match="1 tensor that are not .*lora_magnitude_vector"):
        merge_lora(base, dora)
    with pytest.raises(CheckpointFormatError, match="LoRA state dict is empty"):
        merge_lora(base, {})
    with pytest.raises(ValueError, match="alpha must be a positive finite number or None"):
        merge_lora(base, peft_lora_state_dict(lora_factors(27)), alpha=0.0)


# --- resolution ----------------------------------------------------------------------------------


def put_in_cache(cache: Path, repo_id: str, filename: str, save: object) -> Path:
    """Lay a file out as huggingface_hub's cache does: snapshots/<commit>/<path> plus refs/main."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    target = repo_dir / "snapshots" / COMMIT_HASH / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(save, target)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(COMMIT_HASH)
    return target


def test_registry_names_resolve_from_the_offline_cache(offline_hub: Path) -> None:
    weights = random_weights(28)
    entry = CHECKPOINTS["self-forcing"].weights
    cached = put_in_cache(offline_hub, entry.repo_id, entry.filename, {"generator_ema": weights})

    assert resolve_checkpoint("self-forcing", cache_dir=offline_hub) == cached
    assert resolve_checkpoint("self-forcing") == cached
    assert resolve_checkpoint(f"hf://{entry.repo_id}/{entry.filename}") == cached
    assert_model_holds(load_wan_weights(make_model(), "self-forcing", cache_dir=offline_hub), weights)


def test_longlive_registry_entry_merges_its_lora(offline_hub: Path) -> None:
    base, factors = random_weights(29), lora_factors(30)
    entry = CHECKPOINTS["longlive"]
    assert entry.lora is not None
    put_in_cache(
        offline_hub, entry.weights.repo_id, entry.weights.filename, {"generator": wrapper_names(base)}
    )
    put_in_cache(
        offline_hub,
        entry.lora.repo_id,
        entry.lora.filename,
        {"generator_lora": peft_lora_state_dict(factors)},
    )

    model = load_wan_weights(make_model(), "longlive", cache_dir=offline_hub)
    assert_model_holds(model, expected_merge(base, factors, scale=1.0))


def test_absent_hub_file_gives_a_helpful_error(offline_hub: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        resolve_checkpoint("self-forcing", cache_dir=offline_hub)
    message = str(caught.value)
    assert "checkpoint 'self-forcing'" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "huggingface-cli download gdhe17/Self-Forcing checkpoints/self_forcing_dmd.pt" in message
    assert "or pass a local path" in message


def test_local_paths_come_first_and_unknown_sources_are_explained(tmp_path: Path) -> None:
    local = tmp_path / "weights.pt"
    local.touch()
    assert resolve_checkpoint(local) == local
    assert resolve_checkpoint(str(local)) == local
    with pytest.raises(FileNotFoundError, match="not a registered name") as caught:
        resolve_checkpoint(tmp_path / "absent.pt")
    assert f"(one of: {', '.join(sorted(CHECKPOINTS))})" in str(caught.value)
    assert {"causvid", "krea-realtime-video-14b", "self-forcing", "wan2.1-t2v-1.3b"} <= set(CHECKPOINTS)
    with pytest.raises(ValueError, match="source must look like 'hf://owner/name/path/in/repo'"):
        resolve_checkpoint("hf://owner/name")

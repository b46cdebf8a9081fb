"""Weight conversion official Wan <-> diffusers ``WanTransformer3DModel``: names, configs, files, CLI, Hub."""

from __future__ import annotations

import ast
import functools
import json
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from memrope.checkpoint_files import CheckpointFormatError, CheckpointKeyError
from memrope.cli import main
from memrope.cli.convert import convert_checkpoint, parse_size
from memrope.convert import (
    DIFFUSERS_CLASS_NAME,
    check_official_state_dict,
    diffusers_config,
    from_diffusers_state_dict,
    load_diffusers_into_wan,
    official_shapes,
    read_diffusers_transformer,
    to_diffusers_state_dict,
    wan_config_from_diffusers,
    wan_config_from_json,
    wan_config_from_state_dict,
    write_diffusers_folder,
)
from memrope.loading import merge_lora, read_state_dict
from memrope.models.wan import CausalWanModel
from memrope.models.wan_config import WanConfig
from memrope.presets import WAN21_T2V_14B_CONFIG

# diffusers' own tiny Wan transformer: 2 heads x 12 dims, 2 layers
TINY = WanConfig(
    dim=24, ffn_dim=32, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=8, text_len=8, freq_dim=16
)
COMMIT_HASH = "0123456789abcdef0123456789abcdef01234567"
LORA_RANK = 2


def random_weights(seed: int, config: WanConfig = TINY) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) for name, shape in official_shapes(config).items()}


def wrapper_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename as Self-Forcing's FSDP-wrapped training wrapper does."""
    return {f"model._fsdp_wrapped_module.{name}": tensor for name, tensor in weights.items()}


def write_self_forcing(path: Path, raw: dict[str, torch.Tensor], ema: dict[str, torch.Tensor]) -> Path:
    torch.save({"generator": wrapper_names(raw), "generator_ema": wrapper_names(ema), "step": 3}, path)
    return path


def assert_same_tensors(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert found.keys() == expected.keys()
    for name, tensor in expected.items():
        assert found[name].dtype == tensor.dtype, name
        assert torch.equal(found[name], tensor), name


def diffusers_module() -> object:
    return pytest.importorskip("diffusers")


# --- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("official", "diffusers"),
    [
        ("patch_embedding.weight", "patch_embedding.weight"),
        ("text_embedding.0.bias", "condition_embedder.text_embedder.linear_1.bias"),
        ("text_embedding.2.weight", "condition_embedder.text_embedder.linear_2.weight"),
        ("time_embedding.0.weight", "condition_embedder.time_embedder.linear_1.weight"),
        ("time_embedding.2.bias", "condition_embedder.time_embedder.linear_2.bias"),
        ("time_projection.1.weight", "condition_embedder.time_proj.weight"),
        ("blocks.0.modulation", "blocks.0.scale_shift_table"),
        ("blocks.1.self_attn.q.weight", "blocks.1.attn1.to_q.weight"),
        ("blocks.1.self_attn.o.bias", "blocks.1.attn1.to_out.0.bias"),
        ("blocks.1.self_attn.norm_k.weight", "blocks.1.attn1.norm_k.weight"),
        ("blocks.12.cross_attn.v.weight", "blocks.12.attn2.to_v.weight"),
        ("blocks.12.cross_attn.norm_q.weight", "blocks.12.attn2.norm_q.weight"),
        ("blocks.3.norm3.weight", "blocks.3.norm2.weight"),
        ("blocks.3.norm2.bias", "blocks.3.norm3.bias"),
        ("blocks.0.ffn.0.weight", "blocks.0.ffn.net.0.proj.weight"),
        ("blocks.0.ffn.2.bias", "blocks.0.ffn.net.2.bias"),
        ("head.head.weight", "proj_out.weight"),
        ("head.modulation", "scale_shift_table"),
    ],
)
def test_names_follow_diffusers_conversion_table(official: str, diffusers: str) -> None:
    tensor = torch.zeros(1)
    assert to_diffusers_state_dict({official: tensor}) == {diffusers: tensor}
    assert from_diffusers_state_dict({diffusers: tensor}) == {official: tensor}


def test_round_trip_keeps_the_tensor_objects_both_ways() -> None:
    official = random_weights(0)
    diffusers = to_diffusers_state_dict(official)
    assert len(diffusers) == len(official)
    back = from_diffusers_state_dict(diffusers)
    assert list(back) == list(official)
    assert all(back[name] is tensor for name, tensor in official.items())
    again = to_diffusers_state_dict(back)
    assert list(again) == list(diffusers)
    assert all(again[name] is tensor for name, tensor in diffusers.items())


@functools.cache
def deep_names() -> list[str]:
    """Every official name of a 41-layer DiT, in order."""
    return list(official_shapes(WanConfig(dim=8, ffn_dim=8, num_heads=2, num_layers=41, text_dim=4)))


@settings(max_examples=30, deadline=None)
@given(num_layers=st.integers(1, 41), data=st.data())
def test_any_subset_of_any_depth_round_trips(num_layers: int, data: st.DataObject) -> None:
    names = [
        name
        for name in deep_names()
        if not name.startswith("blocks.") or int(name.split(".")[1]) < num_layers
    ]
    chosen = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=40))
    tensor = torch.zeros(1)
    diffusers = to_diffusers_state_dict(dict.fromkeys(chosen, tensor))
    assert len(diffusers) == len(chosen)  # no two names collide
    assert list(from_diffusers_state_dict(diffusers)) == chosen


def test_unmapped_names_are_listed_with_a_count() -> None:
    strays = [f"blocks.0.self_attn.q.lora_A.{i}.weight" for i in range(6)] + ["model.patch_embedding.weight"]
    weights = {**random_weights(1), **{name: torch.zeros(1) for name in strays}}
    with pytest.raises(ValueError, match="7 tensors with no diffusers name") as caught:
        to_diffusers_state_dict(weights)
    message = str(caught.value)
    assert "blocks.0.self_attn.q.lora_A.0.weight" in message and "(2 more)" in message
    assert "read_state_dict" in message


def test_image_to_video_names_are_refused() -> None:
    names = ["blocks.0.attn2.add_k_proj.weight", "condition_embedder.image_embedder.norm1.weight"]
    with pytest.raises(ValueError, match="2 tensors with no official Wan name") as caught:
        from_diffusers_state_dict({name: torch.zeros(1) for name in names})
    assert all(name in str(caught.value) for name in names)


def test_non_tensors_and_non_mappings_are_type_errors() -> None:
    with pytest.raises(TypeError, match=r"state_dict\['head.head.weight'\] must be a torch.Tensor"):
        to_diffusers_state_dict({"head.head.weight": [1.0]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        from_diffusers_state_dict([("proj_out.weight", torch.zeros(1))])  # type: ignore[arg-type]


# --- configs and shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", [TINY, WanConfig(), WAN21_T2V_14B_CONFIG, WanConfig(cross_attn_norm=False)]
)
def test_diffusers_config_round_trips(config: WanConfig) -> None:
    kwargs = diffusers_config(config)
    assert kwargs["qk_norm"] == "rms_norm_across_heads" and kwargs["rope_max_seq_len"] == 1024
    assert kwargs["num_attention_heads"] * kwargs["attention_head_dim"] == config.dim
    assert (
        wan_config_from_diffusers({"_class_name": DIFFUSERS_CLASS_NAME, **kwargs}, text_len=config.text_len)
        == config
    )


def test_diffusers_config_refuses_what_diffusers_cannot_hold() -> None:
    with pytest.raises(ValueError, match="config.qk_norm must be True"):
        diffusers_config(WanConfig(qk_norm=False))
    with pytest.raises(ValueError, match="rope_max_seq_len must be an int >= 1"):
        diffusers_config(TINY, rope_max_seq_len=0)
    with pytest.raises(TypeError, match="config must be a memrope WanConfig"):
        diffusers_config({"dim": 24})  # type: ignore[arg-type]


def test_diffusers_config_dicts_are_read_as_diffusers_reads_them() -> None:
    assert wan_config_from_diffusers({}) == WAN21_T2V_14B_CONFIG  # diffusers' defaults are the 14B model
    partial = wan_config_from_diffusers(
        {"num_attention_heads": 2, "attention_head_dim": 12, "out_channels": None}
    )
    assert (partial.dim, partial.out_dim) == (24, 16)
    with pytest.raises(ValueError, match="image-to-video"):
        wan_config_from_diffusers({"image_dim": 1280, "added_kv_proj_dim": 5120})
    with pytest.raises(ValueError, match="_class_name='SkyReelsV2Transformer3DModel'"):
        wan_config_from_diffusers({"_class_name": "SkyReelsV2Transformer3DModel"})
    with pytest.raises(ValueError, match="qk_norm must be 'rms_norm_across_heads'"):
        wan_config_from_diffusers({"qk_norm": "rms_norm"})
    with pytest.warns(UserWarning, match=r"\['rope_theta'\] are not WanTransformer3DModel arguments"):
        wan_config_from_diffusers({"rope_theta": 10000.0, "_diffusers_version": "0.42.1"})


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        WanConfig(**{**TINY.to_dict(), "qk_norm": False}),
        WanConfig(**{**TINY.to_dict(), "cross_attn_norm": False}),
        WanConfig(**{**TINY.to_dict(), "patch_size": (1, 1, 3), "num_layers": 3, "out_dim": 5}),
    ],
)
def test_official_shapes_are_the_models_state_dict(config: WanConfig) -> None:
    model_shapes = [
        (name, tuple(tensor.shape)) for name, tensor in CausalWanModel(config).state_dict().items()
    ]
    assert list(official_shapes(config).items()) == model_shapes


@pytest.mark.parametrize("config", [WanConfig(), WAN21_T2V_14B_CONFIG])
def test_sizes_are_read_from_the_shapes_of_released_models(config: WanConfig) -> None:
    meta = {name: torch.empty(shape, device="meta") for name, shape in official_shapes(config).items()}
    assert wan_config_from_state_dict(meta) == config
    assert wan_config_from_state_dict(meta, num_heads=config.num_heads * 2).num_heads == config.num_heads * 2


def test_sizes_need_the_head_count_when_dim_is_not_128_per_head() -> None:
    with pytest.raises(ValueError, match="dim=24, not a multiple of Wan's head_dim 128"):
        wan_config_from_state_dict(random_weights(2))
    assert wan_config_from_state_dict(random_weights(2), num_heads=2, text_len=8) == TINY
    with pytest.raises(ValueError, match="lack"):
        wan_config_from_state_dict({"proj_out.weight": torch.zeros(1)})


def test_missing_unexpected_and_mis_shaped_tensors_are_named() -> None:
    weights = random_weights(3)
    del weights["blocks.1.cross_attn.k.bias"]
    weights["blocks.2.ffn.0.weight"] = torch.zeros(32, 24)
    weights["head.head.weight"] = torch.zeros(15, 24)
    with pytest.raises(CheckpointKeyError) as caught:
        check_official_state_dict(weights, TINY, origin="the weights")
    message = str(caught.value)
    assert "1 missing key: blocks.1.cross_attn.k.bias" in message
    assert "1 unexpected key: blocks.2.ffn.0.weight" in message
    assert "head.head.weight (checkpoint [15, 24], target [16, 24])" in message


def test_config_json_files_of_both_layouts(tmp_path: Path) -> None:
    official = tmp_path / "official.json"
    official.write_text(json.dumps({"_class_name": "WanModel", **TINY.to_dict()}))
    diffusers = tmp_path / "diffusers.json"
    diffusers.write_text(json.dumps({"_class_name": DIFFUSERS_CLASS_NAME, **diffusers_config(TINY)}))
    assert wan_config_from_json(official) == TINY
    assert wan_config_from_json(diffusers) == WanConfig(**{**TINY.to_dict(), "text_len": 512})
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hidden_size": 24}))
    with pytest.raises(ValueError, match=r"lacks \['dim', 'num_heads', 'num_layers'\]"):
        wan_config_from_json(other)


# --- the two models --------------------------------------------------------------------------------


def test_diffusers_and_memrope_models_load_each_others_weights_strictly() -> None:
    diffusers = diffusers_module()
    torch.manual_seed(0)
    ours = CausalWanModel(TINY)
    theirs = diffusers.WanTransformer3DModel(**diffusers_config(TINY))  # type: ignore[attr-defined]
    theirs.load_state_dict(to_diffusers_state_dict(ours.state_dict()), strict=True)
    assert_same_tensors(theirs.state_dict(), to_diffusers_state_dict(ours.state_dict()))

    other = diffusers.WanTransformer3DModel(**diffusers_config(TINY))  # type: ignore[attr-defined]
    ours.load_state_dict(from_diffusers_state_dict(other.state_dict()), strict=True)
    assert_same_tensors(to_diffusers_state_dict(ours.state_dict()), other.state_dict())
    assert wan_config_from_diffusers(other.config, text_len=TINY.text_len) == TINY

    from_module = load_diffusers_into_wan(other, text_len=TINY.text_len)
    assert from_module.config == TINY
    assert_same_tensors(to_diffusers_state_dict(from_module.state_dict()), other.state_dict())


# --- files and the command line --------------------------------------------------------------------


def test_cli_self_forcing_to_diffusers_and_back_is_bit_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    diffusers = diffusers_module()
    raw, ema = random_weights(4), random_weights(5)
    checkpoint = write_self_forcing(tmp_path / "self_forcing_dmd.pt", raw, ema)
    folder = tmp_path / "sf-diffusers"

    assert main(["convert", str(checkpoint), str(folder), "--to", "diffusers", "--num-heads", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {folder} (diffusers WanTransformer3DModel folder" in printed
    assert f"{len(ema)} tensors (float32)" in printed and "dim=24, num_heads=2, num_layers=2" in printed
    assert sorted(path.name for path in folder.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == DIFFUSERS_CLASS_NAME

    model = diffusers.WanTransformer3DModel.from_pretrained(folder)  # type: ignore[attr-defined]
    assert_same_tensors(model.state_dict(), to_diffusers_state_dict(ema))  # EMA, not the raw generator

    original = tmp_path / "sf.safetensors"
    assert main(["convert", str(folder), str(original), "--to", "original"]) == 0
    assert "official-name safetensors" in capsys.readouterr().out
    assert_same_tensors(read_state_dict(original), ema)
    assert_same_tensors(load_file(original), ema)

    assert (
        main(
            [
                "convert",
                str(checkpoint),
                str(tmp_path / "raw.safetensors"),
                "--to",
                "original",
                "--no-ema",
                "--num-heads",
                "2",
            ]
        )
        == 0
    )
    assert_same_tensors(read_state_dict(tmp_path / "raw.safetensors"), raw)


def lora_file(path: Path, seed: int) -> tuple[Path, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    factors: dict[str, torch.Tensor] = {}
    for module in ("blocks.0.self_attn.q", "blocks.1.ffn.0"):
        out_features, in_features = official_shapes(TINY)[f"{module}.weight"]
        factors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(
            LORA_RANK, in_features, generator=generator
        )
        factors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(
            out_features, LORA_RANK, generator=generator
        )
    torch.save({"generator_lora": factors}, path)
    return path, factors


def test_longlive_base_with_its_lora_converts_merged(tmp_path: Path) -> None:
    base = random_weights(6)
    checkpoint = tmp_path / "longlive_base.pt"
    torch.save({"generator": wrapper_names(base)}, checkpoint)
    lora, factors = lora_file(tmp_path / "lora.pt", seed=7)
    original = tmp_path / "longlive.safetensors"

    with pytest.warns(UserWarning, match="has no 'generator_ema'; loading 'generator' instead"):
        result = convert_checkpoint(checkpoint, original, to="original", lora=lora, config=TINY)

    expected = merge_lora(base, factors)
    assert not torch.equal(expected["blocks.0.self_attn.q.weight"], base["blocks.0.self_attn.q.weight"])
    assert_same_tensors(read_state_dict(original), expected)
    assert result.tensors == len(expected) and result.files == (original,)
    assert json.loads(load_file_metadata(original)["wan_config"]) == TINY.to_dict()


def load_file_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        return dict(handle.metadata())


def test_sharded_folder_loads_in_diffusers_and_back(tmp_path: Path) -> None:
    weights = random_weights(8)
    folder = tmp_path / "sharded"
    result = convert_checkpoint(
        write_self_forcing(tmp_path / "sf.pt", weights, weights),
        folder,
        to="diffusers",
        config=TINY,
        max_shard_bytes=30_000,
    )
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 3 and shards[0] == "diffusion_pytorch_model-00001-of-00003.safetensors"
    assert (
        index["metadata"]["total_size"] == result.tensor_bytes == sum(t.numel() * 4 for t in weights.values())
    )
    read, config = read_diffusers_transformer(folder, text_len=TINY.text_len)
    assert config == TINY
    assert_same_tensors(read, weights)

    diffusers = pytest.importorskip("diffusers")
    model = diffusers.WanTransformer3DModel.from_pretrained(folder)
    assert_same_tensors(model.state_dict(), to_diffusers_state_dict(weights))
    saved = tmp_path / "saved-by-diffusers"
    model.save_pretrained(saved, max_shard_size="30KB")  # diffusers' own shards and index
    assert len(list(saved.glob("diffusion_pytorch_model-*.safetensors"))) > 1
    assert_same_tensors(read_diffusers_transformer(saved, text_len=TINY.text_len)[0], weights)

    (folder / shards[1]).unlink()
    with pytest.raises(CheckpointFormatError, match=f"lists shard files that are not in .*{shards[1]}"):
        read_diffusers_transformer(folder)


def test_destinations_are_never_overwritten_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = random_weights(9), random_weights(10)
    folder = tmp_path / "out"
    write_diffusers_folder(first, TINY, folder)
    source = write_self_forcing(tmp_path / "sf.pt", second, second)
    args = ["convert", str(source), str(folder), "--to", "diffusers", "--num-heads", "2"]

    assert main(args) == 1
    assert f"{folder} exists; pass force=True (--force) to replace it" in capsys.readouterr().err
    assert_same_tensors(read_diffusers_transformer(folder, text_len=8)[0], first)

    assert main([*args, "--force"]) == 0
    assert_same_tensors(read_diffusers_transformer(folder, text_len=8)[0], second)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "sf.pt"]  # nothing left beside it

    (folder / "notes.txt").write_text("mine")
    assert main([*args, "--force"]) == 1
    assert "holds files that are not a diffusers model's (notes.txt)" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "mine"


def test_a_failed_write_leaves_the_destination_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    first = random_weights(11)
    folder, file = tmp_path / "out", tmp_path / "out.safetensors"
    write_diffusers_folder(first, TINY, folder)
    convert_checkpoint(write_self_forcing(tmp_path / "sf.pt", first, first), file, to="original", config=TINY)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    for destination, to in ((folder, "diffusers"), (file, "original")):
        with pytest.raises(OSError, match="No space left"):
            convert_checkpoint(tmp_path / "sf.pt", destination, to=to, config=TINY, force=True)
    monkeypatch.undo()
    assert_same_tensors(read_diffusers_transformer(folder, text_len=8)[0], first)
    assert_same_tensors(read_state_dict(file), first)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "out.safetensors", "sf.pt"]


def test_config_mismatches_and_non_checkpoints_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_self_forcing(tmp_path / "sf.pt", random_weights(12), random_weights(12))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY.to_dict(), "ffn_dim": 48}))
    assert (
        main(["convert", str(source), str(tmp_path / "x"), "--to", "diffusers", "--config", str(config)]) == 1
    )
    error = capsys.readouterr().err
    assert "does not match a Wan DiT of dim=24, num_heads=2, num_layers=2, ffn_dim=48" in error
    assert "blocks.0.ffn.0.weight (checkpoint [32, 24], target [48, 24])" in error

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    assert main(["convert", str(text), str(tmp_path / "y"), "--to", "diffusers"]) == 1
    assert "cannot convert" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"_class_name": DIFFUSERS_CLASS_NAME}))
    torch.save(to_diffusers_state_dict(random_weights(13)), pickled / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointFormatError, match="are pickles, which memrope never loads"):
        read_diffusers_transformer(pickled)


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "a", "b", "--to", "onnx"]) == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
    assert main(["convert", "a", "b", "--to", "diffusers", "--max-shard-size", "big"]) == 2
    assert "a size such as 10GB" in capsys.readouterr().err
    with pytest.raises(ValueError, match="to must be one of"):
        convert_checkpoint("a", "b", to="onnx")


@pytest.mark.parametrize(
    ("text", "size"),
    [("10GB", 10 * 10**9), ("500 MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("1.5k", 1500), ("7", 7)],
)
def test_sizes_as_people_type_them(text: str, size: int) -> None:
    assert parse_size(text) == size


# --- Hub -------------------------------------------------------------------------------------------


def put_snapshot(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay files out as huggingface_hub's cache does: snapshots/<commit>/<path> plus refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT_HASH
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(source.read_bytes())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT_HASH)
    return snapshot


@pytest.mark.parametrize("prefix", ["transformer/", ""])
def test_hub_ids_are_read_from_the_offline_cache(offline_hub: Path, tmp_path: Path, prefix: str) -> None:
    weights = random_weights(14)
    folder = write_diffusers_folder(weights, TINY, tmp_path / "model").destination
    files = {f"{prefix}{path.name}": path for path in folder.iterdir()}
    put_snapshot(offline_hub, "owner/wan-diffusers", files)

    read, config = read_diffusers_transformer("owner/wan-diffusers", text_len=TINY.text_len)
    assert config == TINY
    assert_same_tensors(read, weights)
    model = load_diffusers_into_wan("owner/wan-diffusers", cache_dir=offline_hub, text_len=TINY.text_len)
    assert_same_tensors(model.state_dict(), weights)

    for source in ("owner/wan-diffusers", "hf://owner/wan-diffusers"):
        original = tmp_path / "from-hub.safetensors"
        assert main(["convert", source, str(original), "--to", "original", "--force"]) == 0
        assert_same_tensors(read_state_dict(original), weights)


def test_an_absent_hub_repository_says_how_to_fetch_it(offline_hub: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        read_diffusers_transformer("owner/absent", cache_dir=offline_hub)
    message = str(caught.value)
    assert "'owner/absent' is no local folder, and as a Hub id of a diffusers transformer" in message
    assert "neither in the Hugging Face cache nor downloadable (HF_HUB_OFFLINE is set)" in message
    assert "hf download owner/absent --include 'transformer/*'" in message
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a Hub id"):
        read_diffusers_transformer("no/such/folder")


# --- optional dependency ---------------------------------------------------------------------------


def test_conversion_works_without_diffusers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import memrope.convert

    for module in Path(memrope.convert.__file__).parent.glob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        imported = {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not any(name.split(".")[0] == "diffusers" for name in imported), module.name

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now fails
    weights = random_weights(16)
    assert from_diffusers_state_dict(to_diffusers_state_dict(weights)) == weights
    write_diffusers_folder(weights, TINY, tmp_path / "model")
    read, config = read_diffusers_transformer(tmp_path / "model", text_len=TINY.text_len)
    assert config == TINY
    assert_same_tensors(read, weights)


def test_convert_is_a_registered_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "--help"]) == 0
    assert "memrope convert self_forcing_dmd.pt sf-diffusers --to diffusers" in capsys.readouterr().out


def test_safetensors_written_here_round_trip_through_plain_safetensors(tmp_path: Path) -> None:
    weights = random_weights(15)
    save_file(weights, tmp_path / "plain.safetensors")
    result = convert_checkpoint(tmp_path / "plain.safetensors", tmp_path / "d", to="diffusers", num_heads=2)
    assert result.config == WanConfig(**{**TINY.to_dict(), "text_len": 512})
    assert_same_tensors(
        load_file(tmp_path / "d" / "diffusion_pytorch_model.safetensors"), to_diffusers_state_dict(weights)
    )


def test_low_precision_weights_keep_their_dtype_and_an_empty_folder_is_filled(tmp_path: Path) -> None:
    weights = {name: tensor.to(torch.bfloat16) for name, tensor in random_weights(17).items()}
    save_file(weights, tmp_path / "bf16.safetensors")
    (tmp_path / "empty").mkdir()
    result = convert_checkpoint(
        tmp_path / "bf16.safetensors", tmp_path / "empty", to="diffusers", config=TINY
    )
    assert result.dtypes == ("bfloat16",)
    assert_same_tensors(read_diffusers_transformer(tmp_path / "empty", text_len=8)[0], weights)

"""Text encoders: umT5 through transformers (tiny local model, no network) and the hash encoder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from memrope.encoders import (
    UMT5_TEXT_DIM,
    UMT5_TEXT_LEN,
    HashTextEncoder,
    TextEncoder,
    UMT5TextEncoder,
    clean_prompt,
    component_location,
)

TEXT_LEN = 8
WORDS = ["a", "cat", "dog", "runs", "on", "the", "beach", "at", "night", "red", "blue"]


@pytest.fixture(scope="module")
def tiny_umt5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Diffusers-layout folder (``tokenizer``, ``text_encoder``) with a word-level tokenizer and a
    randomly initialised 2-layer umT5 encoder."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    root = tmp_path_factory.mktemp("umt5")
    vocabulary = {word: index for index, word in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocabulary, unk_token="<unk>"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(root / "tokenizer")
    config = transformers.UMT5Config(
        vocab_size=len(vocabulary), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    transformers.UMT5EncoderModel(config).save_pretrained(root / "text_encoder")
    return root


def load(root: Path, **options: Any) -> UMT5TextEncoder:
    return UMT5TextEncoder.from_pretrained(root, device="cpu", text_len=TEXT_LEN, **options)


def test_umt5_embeddings_are_the_encoder_output_with_padding_rows_zeroed(tiny_umt5: Path) -> None:
    encoder = load(tiny_umt5)
    assert isinstance(encoder, TextEncoder)
    assert encoder.model.dtype == torch.float32 and encoder.text_dim == 16
    embeddings = encoder.encode(["a cat runs", "the red dog runs on the beach at night"])
    assert embeddings.shape == (2, TEXT_LEN, 16)
    # "a cat runs </s>": 4 tokens; the long prompt is truncated to TEXT_LEN tokens, </s> kept.
    assert torch.all(embeddings[0, 4:] == 0) and torch.all(embeddings[0, :4].abs().sum(-1) > 0)
    assert torch.all(embeddings[1].abs().sum(-1) > 0)
    ids = torch.tensor([[3, 4, 6, 1]])
    with torch.no_grad():
        direct = encoder.model(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(embeddings[0, :4], direct)


def test_umt5_prompts_are_cleaned_and_independent_of_the_batch(tiny_umt5: Path) -> None:
    encoder = load(tiny_umt5)
    alone = encoder.encode(["a  cat\n runs "])
    batched = encoder.encode(["blue night", "a cat runs"])
    torch.testing.assert_close(batched[1:], alone)
    assert not torch.equal(batched[:1], alone)


def test_umt5_loads_straight_into_the_requested_dtype(tiny_umt5: Path) -> None:
    full = load(tiny_umt5)
    half = load(tiny_umt5, dtype=torch.bfloat16)
    assert {parameter.dtype for parameter in half.model.parameters()} == {torch.bfloat16}
    for name, tensor in half.model.state_dict().items():
        assert torch.equal(tensor, full.model.state_dict()[name].to(torch.bfloat16)), name
    assert half.encode(["a cat"]).dtype == torch.bfloat16


def test_umt5_offload_visits_the_device_only_while_encoding(tiny_umt5: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = load(tiny_umt5, offload=True)
    moves: list[str] = []
    original_to = encoder.model.to
    monkeypatch.setattr(encoder.model, "to", lambda device: moves.append(str(device)) or original_to(device))
    encoder.encode(["a cat"])
    assert moves == ["cpu", "cpu"]  # to the (here CPU) device, then back to the CPU
    assert next(encoder.model.parameters()).device.type == "cpu"


def test_component_location_reads_the_diffusers_layout_or_a_component_folder(tiny_umt5: Path) -> None:
    assert component_location(tiny_umt5, "tokenizer") == {
        "pretrained_model_name_or_path": str(tiny_umt5 / "tokenizer")}
    assert component_location(tiny_umt5 / "text_encoder", "text_encoder") == {
        "pretrained_model_name_or_path": str(tiny_umt5 / "text_encoder")}
    assert component_location("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "vae") == {
        "pretrained_model_name_or_path": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "subfolder": "vae"}


def test_clean_prompt_unescapes_html_and_collapses_whitespace() -> None:
    assert clean_prompt("  a &amp;amp; b\n\tc  ") == "a & b c"


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"memrope\[text\]"):
        UMT5TextEncoder.from_pretrained()


def test_hash_encoder_defaults_to_the_umt5_shape_with_zero_padding() -> None:
    encoder = HashTextEncoder()
    assert isinstance(encoder, TextEncoder)
    embeddings = encoder.encode(["A cat runs.", ""])
    assert embeddings.shape == (2, UMT5_TEXT_LEN, UMT5_TEXT_DIM) and embeddings.dtype == torch.float32
    assert encoder.tokens("A cat runs.") == ["A", "cat", "runs", ".", "</s>"]
    assert torch.all(embeddings[0, :5].abs().sum(-1) > 0) and torch.all(embeddings[0, 5:] == 0)
    assert torch.all(embeddings[1, :1].abs().sum(-1) > 0) and torch.all(embeddings[1, 1:] == 0)


def test_hash_encoder_is_deterministic_and_tells_prompts_apart() -> None:
    encoder = HashTextEncoder(text_len=16, text_dim=32, seed=7)
    same = HashTextEncoder(text_len=16, text_dim=32, seed=7).encode(["a cat runs", "a  cat runs"])
    assert torch.equal(encoder.encode(["a cat runs"])[0], same[0])
    assert torch.equal(same[0], same[1])  # whitespace does not matter
    others = encoder.encode(["a dog runs", "runs a cat", "A cat runs"])
    for other in others:
        assert not torch.equal(other, same[0])
    assert not torch.equal(HashTextEncoder(text_len=16, text_dim=32, seed=8).encode(["a cat runs"])[0], same[0])
    # the same token gives the same row wherever it stands
    torch.testing.assert_close(others[1, 1], same[0, 0])


def test_hash_encoder_truncates_but_keeps_the_end_token_and_checks_input() -> None:
    encoder = HashTextEncoder(text_len=4, text_dim=8, dtype=torch.bfloat16)
    long = encoder.encode(["one two three four five six"])
    assert long.dtype == torch.bfloat16
    assert encoder.tokens("one two three four five six") == ["one", "two", "three", "</s>"]
    torch.testing.assert_close(long[0, 3], encoder.encode([""])[0, 0])
    with pytest.raises(TypeError, match="list of prompts"):
        encoder.encode("a cat")
    with pytest.raises(ValueError, match="at least one"):
        encoder.encode([])

"""Text encoders: umT5 through transformers (a tiny offline model in the Diffusers layout) and the hash
encoder."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sentencepiece
import torch
import transformers
from torch import nn

from memrope.encoders import (
    UMT5_TEXT_DIM,
    UMT5_TEXT_LEN,
    HashTextEncoder,
    TextEncoder,
    UMT5TextEncoder,
    clean_prompt,
    component_location,
)
from memrope.errors import NonFiniteError

TEXT_LEN = 8
D_MODEL = 16
WORDS = ["a", "cat", "dog", "runs", "on", "the", "beach", "at", "night", "red", "blue"]
LONG_PROMPT = "the red dog runs on the beach at night"  # more than TEXT_LEN tokens with its </s>

pytestmark = pytest.mark.usefixtures("offline_hub")


def train_sentencepiece(path: Path) -> None:
    """A tiny unigram sentencepiece model with umT5's special ids: pad 0, </s> 1, unk 2, no bos."""
    sentences = [" ".join(WORDS[start:] + WORDS[:start]) for start in range(len(WORDS))]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=30,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())


@pytest.fixture(scope="module")
def tiny_umt5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder in the layout of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``: ``tokenizer`` (umT5's T5
    tokenizer class, converted from a sentencepiece model and saved by transformers) and
    ``text_encoder`` (a randomly initialised 2-layer ``UMT5EncoderModel``)."""
    spiece = tmp_path_factory.mktemp("spiece")
    train_sentencepiece(spiece / "spiece.model")
    (spiece / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0})
    )
    root = tmp_path_factory.mktemp("umt5")
    tokenizer = transformers.AutoTokenizer.from_pretrained(spiece)
    tokenizer.save_pretrained(root / "tokenizer")
    config = transformers.UMT5Config(
        vocab_size=len(tokenizer),
        d_model=D_MODEL,
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    transformers.UMT5EncoderModel(config).save_pretrained(root / "text_encoder")
    return root


def load(root: Path, **options: Any) -> UMT5TextEncoder:
    return UMT5TextEncoder.from_pretrained(root, device="cpu", text_len=TEXT_LEN, **options)


def token_ids(encoder: UMT5TextEncoder, prompt: str, max_length: int) -> list[int]:
    return list(encoder.tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"])


def unpadded_output(encoder: UMT5TextEncoder, ids: list[int]) -> torch.Tensor:
    """The encoder run on ``ids`` alone, without padding or mask."""
    with torch.no_grad():
        output: torch.Tensor = encoder.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return output


def test_umt5_embeddings_are_the_encoder_output_with_padding_rows_zeroed(tiny_umt5: Path) -> None:
    encoder = load(tiny_umt5)
    assert isinstance(encoder, TextEncoder)
    assert encoder.model.dtype == torch.float32 and encoder.text_dim == D_MODEL
    short = token_ids(encoder, "a cat runs", TEXT_LEN)
    assert short[-1] == encoder.tokenizer.eos_token_id == 1 and encoder.tokenizer.unk_token_id not in short
    long = token_ids(encoder, LONG_PROMPT, TEXT_LEN)
    assert len(long) == TEXT_LEN and long[-1] == 1  # truncated, </s> kept
    embeddings = encoder.encode(["a cat runs", LONG_PROMPT])
    assert embeddings.shape == (2, TEXT_LEN, D_MODEL)
    n = len(short)
    assert torch.all(embeddings[0, n:] == 0) and torch.all(embeddings[0, :n].abs().sum(-1) > 0)
    torch.testing.assert_close(embeddings[0, :n], unpadded_output(encoder, short))
    torch.testing.assert_close(embeddings[1], unpadded_output(encoder, long))
    # the padding is masked out: attending to it would change the prompt's rows
    padded = short + [0] * (TEXT_LEN - n)
    assert not torch.allclose(unpadded_output(encoder, padded)[:n], embeddings[0, :n], atol=1e-3)


def test_umt5_uses_512_tokens_by_default(tiny_umt5: Path) -> None:
    encoder = UMT5TextEncoder.from_pretrained(tiny_umt5, device="cpu")
    assert encoder.text_len == UMT5_TEXT_LEN == 512
    long_prompt = " ".join(WORDS * 50)  # 550 words
    embeddings = encoder.encode(["a cat runs", long_prompt])
    assert embeddings.shape == (2, 512, D_MODEL)
    n = len(token_ids(encoder, "a cat runs", 512))
    assert torch.all(embeddings[0, n:] == 0) and torch.all(embeddings[0, :n].abs().sum(-1) > 0)
    long = token_ids(encoder, long_prompt, 512)
    assert len(long) == 512 and long[-1] == 1  # 511 word tokens and </s>
    torch.testing.assert_close(embeddings[1], unpadded_output(encoder, long))


def test_umt5_prompts_are_cleaned_and_independent_of_the_batch(tiny_umt5: Path) -> None:
    encoder = load(tiny_umt5)
    alone = encoder.encode(["a cat runs"])
    torch.testing.assert_close(encoder.encode(["  a  cat\n runs "]), alone)
    # HTML entities are unescaped (twice) before tokenising
    assert token_ids(encoder, "&amp;amp;", TEXT_LEN) != token_ids(encoder, "&", TEXT_LEN)
    torch.testing.assert_close(encoder.encode(["a cat &amp;amp; dog"]), encoder.encode(["a cat & dog"]))
    batched = encoder.encode(["blue night", "a cat runs"])
    torch.testing.assert_close(batched[1:], alone)
    assert not torch.equal(batched[:1], alone)


@pytest.mark.parametrize(
    ("dtype", "hint"),
    [
        (torch.float32, "its weights are damaged"),
        (torch.float16, "umT5 overflows in float16: load it in bfloat16"),
    ],
)
def test_umt5_nonfinite_embeddings_name_the_prompt(tiny_umt5: Path, dtype: torch.dtype, hint: str) -> None:
    encoder = load(tiny_umt5, dtype=dtype)
    dog = token_ids(encoder, "dog", TEXT_LEN)[0]
    with torch.no_grad():
        encoder.model.get_input_embeddings().weight[dog] = float("nan")
    assert torch.isfinite(encoder.encode(["a cat runs"])).all()
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(
        NonFiniteError,
        match=(
            rf"the umT5 embeddings of prompt 1 \('the dog runs'\) hold NaN or infinity \(encoder dtype {name}\); {hint}"
        ),
    ):
        encoder.encode(["a cat runs", "the dog runs"])


def test_umt5_loads_straight_into_the_requested_dtype(tiny_umt5: Path) -> None:
    full = load(tiny_umt5)
    half = load(tiny_umt5, dtype=torch.bfloat16)
    assert {parameter.dtype for parameter in half.model.parameters()} == {torch.bfloat16}
    for name, tensor in half.model.state_dict().items():
        assert torch.equal(tensor, full.model.state_dict()[name].to(torch.bfloat16)), name
    prompts = ["a cat runs", LONG_PROMPT]
    embeddings = half.encode(prompts)
    assert embeddings.dtype == torch.bfloat16
    n = len(token_ids(half, "a cat runs", TEXT_LEN))
    assert torch.all(embeddings[0, n:] == 0) and torch.all(embeddings[0, :n].abs().sum(-1) > 0)
    torch.testing.assert_close(embeddings.float(), full.encode(prompts), rtol=0.05, atol=0.05)


def test_umt5_defaults_to_bfloat16_on_cuda_and_float32_on_the_cpu(tiny_umt5: Path) -> None:
    # offloaded, the model stays on the CPU until encode(), so this needs no GPU
    cuda = UMT5TextEncoder.from_pretrained(tiny_umt5, device="cuda", offload=True, text_len=TEXT_LEN)
    assert cuda.device == torch.device("cuda") and cuda.model.dtype == torch.bfloat16
    assert {parameter.device.type for parameter in cuda.model.parameters()} == {"cpu"}
    assert load(tiny_umt5).model.dtype == torch.float32
    default = UMT5TextEncoder.from_pretrained(tiny_umt5, text_len=TEXT_LEN)
    expected = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    assert default.device == expected
    assert default.model.dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)


def test_umt5_offload_visits_the_device_only_while_encoding(
    tiny_umt5: Path, record_moves: Callable[[nn.Module], list[torch.device]]
) -> None:
    encoder = load(tiny_umt5, offload=True)
    moves = record_moves(encoder.model)
    moves_before_forward: list[int] = []
    hook = encoder.model.register_forward_pre_hook(
        lambda module, args: moves_before_forward.append(len(moves))
    )
    encoder.encode(["a cat"])
    encoder.encode(["a dog"])
    cpu = torch.device("cpu")
    assert moves == [encoder.device, cpu] * 2  # to the (here CPU) device and back, for every call
    assert moves_before_forward == [1, 3]  # the model runs while it is on the device
    assert {parameter.device.type for parameter in encoder.model.parameters()} == {"cpu"}
    hook.remove()

    def fail(module: Any, args: Any) -> None:
        raise RuntimeError("encoder failed")

    encoder.model.register_forward_pre_hook(fail)
    moves.clear()
    with pytest.raises(RuntimeError, match="encoder failed"):
        encoder.encode(["a cat"])
    assert moves == [encoder.device, cpu]  # back on the CPU after a failure too


def test_umt5_without_offload_stays_on_its_device(
    tiny_umt5: Path, record_moves: Callable[[nn.Module], list[torch.device]]
) -> None:
    encoder = load(tiny_umt5)
    moves = record_moves(encoder.model)
    encoder.encode(["a cat"])
    assert moves == []


def test_umt5_refuses_a_non_positive_text_len(tiny_umt5: Path) -> None:
    encoder = load(tiny_umt5)
    with pytest.raises(ValueError, match="text_len must be a positive number of tokens, got 0"):
        UMT5TextEncoder(encoder.model, encoder.tokenizer, device="cpu", text_len=0)


def test_component_location_reads_the_diffusers_layout_or_a_component_folder(tiny_umt5: Path) -> None:
    assert component_location(tiny_umt5, "tokenizer") == {
        "pretrained_model_name_or_path": str(tiny_umt5 / "tokenizer")
    }
    assert component_location(tiny_umt5 / "text_encoder", "text_encoder") == {
        "pretrained_model_name_or_path": str(tiny_umt5 / "text_encoder")
    }
    assert component_location("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "vae") == {
        "pretrained_model_name_or_path": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "subfolder": "vae",
    }


def test_umt5_loads_a_folder_holding_both_tokenizer_and_encoder(tiny_umt5: Path, tmp_path: Path) -> None:
    for component in ("tokenizer", "text_encoder"):
        shutil.copytree(tiny_umt5 / component, tmp_path / "umt5", dirs_exist_ok=True)
    single = load(tmp_path / "umt5")
    whole = load(tiny_umt5)
    torch.testing.assert_close(single.encode(["a cat runs"]), whole.encode(["a cat runs"]), rtol=0, atol=0)


def test_clean_prompt_unescapes_html_and_collapses_whitespace() -> None:
    assert clean_prompt("  a &amp;amp; b\n\tc  ") == "a & b c"


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"memrope\[text\]"):
        UMT5TextEncoder.from_pretrained()


def test_transformers_without_torch_support_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # by its dotted name: transformers replaces its module in sys.modules as it loads models
    monkeypatch.setattr("transformers.is_torch_available", lambda: False)
    with pytest.raises(
        ImportError, match=rf"transformers {transformers.__version__} does not work with torch"
    ):
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
    assert not torch.equal(
        HashTextEncoder(text_len=16, text_dim=32, seed=8).encode(["a cat runs"])[0], same[0]
    )
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


def test_encode_prompts_runs_umt5_on_the_cpu_in_bfloat16_and_frees_it(
    tiny_umt5: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``components.encode_prompts``: what ``memrope generate --text-encoder-device cpu`` relies on."""
    from memrope import components
    from memrope.presets import TINY_MODEL_CONFIG, get_preset

    shape = dataclasses.replace(TINY_MODEL_CONFIG, text_dim=D_MODEL, text_len=TEXT_LEN)
    preset = dataclasses.replace(get_preset("tiny"), text_encoder=str(tiny_umt5), model_config=shape)
    loaded: list[weakref.ref[Any]] = []
    load_text_encoder = components.load_text_encoder

    def recording(*args: Any, **kwargs: Any) -> TextEncoder:
        encoder = load_text_encoder(*args, **kwargs)
        assert isinstance(encoder, UMT5TextEncoder)
        loaded.append(weakref.ref(encoder.model))
        assert encoder.model.dtype == torch.bfloat16 and encoder.model.device.type == "cpu"
        return encoder

    monkeypatch.setattr(components, "load_text_encoder", recording)
    prompts = ["a cat runs", LONG_PROMPT]
    embeddings = components.encode_prompts(preset, prompts)
    assert len(loaded) == 1 and loaded[0]() is None  # freed before encode_prompts returned
    assert embeddings.dtype == torch.float32 and embeddings.device.type == "cpu"
    expected = load(tiny_umt5, dtype=torch.bfloat16).encode(prompts).float()
    assert torch.equal(embeddings, expected)


def test_encode_prompts_with_the_hash_encoder_gives_its_embeddings() -> None:
    from memrope import components
    from memrope.presets import get_preset, tiny_text_encoder

    embeddings = components.encode_prompts(get_preset("tiny"), ["a red fox"], device="cpu")
    assert torch.equal(embeddings, tiny_text_encoder().encode(["a red fox"]))

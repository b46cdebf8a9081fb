"""Text encoders: prompts -> zero-padded embeddings ``[B, text_len, text_dim]`` (docs/design.md §10).

* :class:`UMT5TextEncoder` is Wan2.1's umT5-XXL encoder (512 tokens, 4096 channels) through
  ``transformers``, read from the Diffusers layout of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``
  (subfolders ``text_encoder`` and ``tokenizer``) or from a local folder. It needs the ``text`` extra.
* :class:`HashTextEncoder` needs no download: every token gets a fixed pseudo-random vector derived
  from a hash of the token, which is all the built-in tiny model needs.

umT5-XXL needs 10.6 GiB in bf16 (22.7 in float32). It runs on the CPU with ``device="cpu"`` (slower,
nothing on the GPU); :func:`memrope.components.encode_prompts` encodes there in bf16 and frees the
encoder before it returns, so the DiT loads into a GPU that never held both
(``memrope generate --text-encoder-device cpu``).

Both set the rows after the last token to exactly zero, as the Wan DiT expects. umT5's output is
checked: an embedding holding NaN or infinity (damaged weights, or float16, in which umT5 overflows)
raises :class:`~memrope.errors.NonFiniteError` naming the prompt, instead of giving a black video.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from memrope.devices import default_device, offloaded
from memrope.errors import NonFiniteError

__all__ = [
    "UMT5_TEXT_DIM",
    "UMT5_TEXT_LEN",
    "WAN21_DIFFUSERS_REPO",
    "HashTextEncoder",
    "TextEncoder",
    "UMT5TextEncoder",
    "clean_prompt",
    "component_location",
]

WAN21_DIFFUSERS_REPO = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
UMT5_TEXT_LEN = 512
UMT5_TEXT_DIM = 4096

_WHITESPACE = re.compile(r"\s+")
_HASH_TOKEN = re.compile(r"\w+|[^\w\s]")
_END_OF_TEXT = "</s>"
PROMPT_SHOWN_CHARS = 60


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns prompts into the DiT's text conditioning."""

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """``B`` prompts -> ``[B, text_len, text_dim]``; rows after the last token are exactly zero."""
        ...


def component_location(source: str | Path, subfolder: str) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for one component of a Diffusers-layout model.

    ``source`` is a Hub repository id (the component is read from ``subfolder`` there) or a local
    folder: the Diffusers layout (``source/subfolder`` exists) or the component's own folder.
    """
    path = Path(source)
    if path.is_dir():
        component = path / subfolder
        return {"pretrained_model_name_or_path": str(component if component.is_dir() else path)}
    return {"pretrained_model_name_or_path": str(source), "subfolder": subfolder}


def clean_prompt(prompt: str) -> str:
    """Wan's prompt cleaning without ``ftfy``: unescape HTML entities twice and collapse whitespace."""
    return _WHITESPACE.sub(" ", html.unescape(html.unescape(prompt))).strip()


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("encode() takes a list of prompts, not a single string")
    if len(prompts) == 0:
        raise ValueError("encode() needs at least one prompt")
    return list(prompts)


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            "UMT5TextEncoder needs transformers and sentencepiece: pip install 'memrope[text]'"
        ) from error
    if not transformers.is_torch_available():
        raise ImportError(
            f"transformers {transformers.__version__} does not work with torch {torch.__version__} (it "
            "disabled PyTorch): install a newer torch or a transformers release that supports this one"
        )
    return transformers


class UMT5TextEncoder:
    """Wan2.1's umT5-XXL text encoder: prompts -> ``[B, text_len, 4096]`` in the model's dtype.

    Prompts are cleaned (:func:`clean_prompt`), tokenised to ``text_len`` tokens (truncated, padded
    right), encoded with the padding masked out of attention, and the padding rows set to zero.
    The result lives on ``device``. With ``offload`` the model waits on the CPU and visits
    ``device`` only during :meth:`encode`.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: torch.device | str | None = None,
        offload: bool = False,
        text_len: int = UMT5_TEXT_LEN,
    ) -> None:
        if text_len < 1:
            raise ValueError(f"text_len must be a positive number of tokens, got {text_len}")
        self.model: Any = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else default_device()
        self.offload = offload
        self.text_len = text_len
        self.model.to("cpu" if offload else self.device)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = WAN21_DIFFUSERS_REPO,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        offload: bool = False,
        text_len: int = UMT5_TEXT_LEN,
    ) -> UMT5TextEncoder:
        """Load tokenizer and encoder from the Hub (Diffusers layout) or a local folder.

        ``dtype`` defaults to bfloat16 on CUDA and float32 on the CPU. The weights are read on the
        CPU straight into ``dtype`` and only then moved, so the device never holds a float32 copy.
        """
        transformers = _import_transformers()
        target = torch.device(device) if device is not None else default_device()
        if dtype is None:
            dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
        tokenizer = transformers.AutoTokenizer.from_pretrained(**component_location(source, "tokenizer"))
        model = transformers.UMT5EncoderModel.from_pretrained(
            **component_location(source, "text_encoder"), dtype=dtype
        )
        return cls(model, tokenizer, device=target, offload=offload, text_len=text_len)

    @property
    def text_dim(self) -> int:
        return int(self.model.config.d_model)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tensor:
        """``B`` prompts -> ``[B, text_len, text_dim]`` on ``device``, padding rows exactly zero.

        Raises:
            NonFiniteError: an embedding holds NaN or infinity (one host sync checks them all).
        """
        texts = [clean_prompt(prompt) for prompt in _check_prompts(prompts)]
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        with offloaded(self.model, self.device, enabled=self.offload):
            hidden: Tensor = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        embeddings = hidden.masked_fill(mask[..., None] == 0, 0)
        self._check_finite(embeddings, texts)
        return embeddings

    def _check_finite(self, embeddings: Tensor, texts: list[str]) -> None:
        """Raise :class:`NonFiniteError` naming the prompts whose embeddings ``[B, L, D]`` are not finite."""
        flawed_rows = (~torch.isfinite(embeddings)).flatten(1).any(dim=1)  # [B]
        if not bool(flawed_rows.any()):
            return
        flawed = flawed_rows.nonzero().flatten().tolist()
        shown = ", ".join(f"{index} ({texts[index][:PROMPT_SHOWN_CHARS]!r})" for index in flawed)
        dtype = embeddings.dtype
        hint = (
            "umT5 overflows in float16: load it in bfloat16 or float32 (from_pretrained(dtype=...))"
            if dtype == torch.float16
            else "its weights are damaged: fetch the text encoder again"
        )
        raise NonFiniteError(
            f"the umT5 embeddings of prompt{'s' if len(flawed) > 1 else ''} {shown} hold NaN or infinity (encoder dtype "
            f"{str(dtype).removeprefix('torch.')}); {hint}"
        )


class HashTextEncoder:
    """Download-free deterministic text encoder for the built-in tiny model.

    A prompt is split into words and punctuation (case kept, whitespace ignored) followed by an
    end-of-text token, like umT5's ``</s>``; token ``i`` becomes row ``i``: a standard-normal vector
    seeded by a hash of ``(seed, token)``. So equal prompts give equal embeddings, and prompts that
    differ in any token, or in token order, give different ones. Tokens past ``text_len`` are
    dropped (the end token always stays); the remaining rows are zero.
    """

    def __init__(
        self,
        text_len: int = UMT5_TEXT_LEN,
        text_dim: int = UMT5_TEXT_DIM,
        seed: int = 0,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if text_len < 1 or text_dim < 1:
            raise ValueError(f"text_len and text_dim must be positive, got {text_len} and {text_dim}")
        self.text_len = text_len
        self.text_dim = text_dim
        self.seed = seed
        self.device = torch.device(device)
        self.dtype = dtype

    def tokens(self, prompt: str) -> list[str]:
        """The tokens of ``prompt`` that get a row, end-of-text token included."""
        return _HASH_TOKEN.findall(prompt)[: self.text_len - 1] + [_END_OF_TEXT]

    def _token_vector(self, token: str) -> Tensor:
        digest = hashlib.blake2b(f"{self.seed}\0{token}".encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
        return torch.randn(self.text_dim, generator=generator)

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """``B`` prompts -> ``[B, text_len, text_dim]`` on ``device`` in ``dtype``."""
        prompts = _check_prompts(prompts)
        embeddings = torch.zeros(len(prompts), self.text_len, self.text_dim)
        for row, prompt in enumerate(prompts):
            for position, token in enumerate(self.tokens(prompt)):
                embeddings[row, position] = self._token_vector(token)
        return embeddings.to(self.device, self.dtype)

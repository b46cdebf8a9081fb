"""memrope.attach dispatches: adapters register themselves; attach picks the one recognising an object."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any, Self

import pytest
import torch
from torch import nn

import memrope
from memrope import MemRoPECache, MemRoPEConfig
from memrope.adapters import (
    Adapter,
    Attachment,
    available_adapters,
    find_adapter,
    get_adapter,
    register_adapter,
    unregister_adapter,
)
from memrope.adapters.upstream import DESCRIPTION
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.testing.upstream import build_pipeline

MODEL = {"dim": 32, "ffn_dim": 48, "num_heads": 2, "num_layers": 2, "in_dim": 4, "out_dim": 4}
MODEL |= {"text_dim": 12, "text_len": 6, "freq_dim": 16}


# ----------------------------------------------------------------- a third-party adapter
class ToyModel:
    """What the toy adapter takes: anything with ``toy_blocks``."""

    def __init__(self) -> None:
        self.toy_blocks = 2


@dataclass
class ToyAttachment:
    model: ToyModel
    cache_config: MemRoPEConfig
    options: dict[str, Any] = field(default_factory=dict)
    active: bool = True

    @property
    def cache(self) -> MemRoPECache | None:
        return None

    def reset(self) -> None:
        pass

    def remove(self) -> None:
        self.active = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.remove()


def toy_attach(obj: object, cache_config: MemRoPEConfig | None, **options: Any) -> ToyAttachment:
    assert isinstance(obj, ToyModel)
    return ToyAttachment(obj, cache_config or MemRoPEConfig(chunk_frames=1, cache_frames=6), options)


TOY = Adapter(
    name="toy",
    description="test toys: any object with a toy_blocks attribute",
    recognises=lambda obj: hasattr(obj, "toy_blocks"),
    attach=toy_attach,
)


@pytest.fixture
def toy() -> Iterator[Adapter]:
    register_adapter(TOY)
    yield TOY
    unregister_adapter("toy")


# ------------------------------------------------------------------------------ dispatch
def test_attach_dispatches_to_a_registered_adapter(toy: Adapter) -> None:
    names = available_adapters()
    assert names[0] == "upstream" and names[-1] == "toy"  # built-in adapters first, in registration order
    model = ToyModel()
    config = MemRoPEConfig(chunk_frames=2)
    with memrope.attach(model, config, strength=3) as attachment:
        assert isinstance(attachment, ToyAttachment)
        assert attachment.model is model and attachment.cache_config is config
        assert attachment.options == {"strength": 3}
    assert not attachment.active
    assert find_adapter(model) is toy and get_adapter("toy") is toy


def test_upstream_objects_still_go_to_the_upstream_adapter(toy: Adapter) -> None:
    pipe = build_pipeline("self_forcing", MODEL)
    assert find_adapter(pipe) is get_adapter("upstream")
    for target in (pipe, pipe.generator, pipe.generator.model):
        with memrope.attach(target) as attachment:
            assert isinstance(attachment, Attachment) and attachment.active
        assert not attachment.active


def test_unknown_object_lists_every_adapter_description(toy: Adapter) -> None:
    with pytest.raises(TypeError) as caught:
        memrope.attach(42)
    message = str(caught.value)
    assert message.startswith("no adapter recognises the int given to attach(); supported:")
    assert f"\n  upstream: {DESCRIPTION}" in message
    assert "\n  toy: test toys: any object with a toy_blocks attribute" in message
    unregister_adapter("toy")
    with pytest.raises(TypeError, match="causal inference pipeline") as caught:
        memrope.attach(object())
    assert "toy" not in str(caught.value)
    register_adapter(TOY)  # for the fixture's teardown


def test_two_adapters_recognising_one_object_need_a_choice(toy: Adapter) -> None:
    twin = Adapter("twin", "the same toys", toy.recognises, toy_attach)
    register_adapter(twin)
    try:
        with pytest.raises(
            TypeError, match=r"recognised by the adapters \['toy', 'twin'\]; choose one with adapter="
        ):
            memrope.attach(ToyModel())
        attachment = memrope.attach(ToyModel(), adapter="twin")
        assert isinstance(attachment, ToyAttachment)
    finally:
        unregister_adapter("twin")


def test_naming_an_adapter(toy: Adapter) -> None:
    names = ", ".join(repr(name) for name in available_adapters())
    with pytest.raises(ValueError, match=re.escape(f"adapter must be one of [{names}], got 'toi'")):
        memrope.attach(ToyModel(), adapter="toi")
    with pytest.raises(TypeError, match=r"adapter 'toy' does not recognise the int .* it takes: test toys"):
        memrope.attach(42, adapter="toy")
    with pytest.raises(TypeError, match="cache_config must be a MemRoPEConfig or None, got dict"):
        memrope.attach(ToyModel(), {"policy": "sink"})


# ---------------------------------------------------------------------------- registration
def test_registration_is_checked() -> None:
    register_adapter(TOY)
    try:
        assert register_adapter(TOY) is TOY  # the same adapter again: a no-op
        with pytest.raises(ValueError, match="an adapter named 'toy' is already registered"):
            register_adapter(Adapter("toy", "other toys", lambda obj: False, toy_attach))
    finally:
        unregister_adapter("toy")
    with pytest.raises(TypeError, match="adapter must be a memrope.adapters.Adapter, got dict"):
        register_adapter({"name": "toy"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be a non-empty identifier, got 'my adapter'"):
        Adapter("my adapter", "toys", lambda obj: False, toy_attach)
    with pytest.raises(ValueError, match="description must be one non-empty line"):
        Adapter("toy", "two\nlines", lambda obj: False, toy_attach)
    with pytest.raises(TypeError, match="Adapter attach must be callable, got str"):
        Adapter("toy", "toys", lambda obj: False, "toy_attach")  # type: ignore[arg-type]
    built_in = available_adapters()
    assert built_in[0] == "upstream" and "toy" not in built_in
    names = ", ".join(repr(name) for name in built_in)
    with pytest.raises(ValueError, match=re.escape(f"adapter must be one of [{names}], got 'toy'")):
        unregister_adapter("toy")


# ------------------------------------------------------------ the worked example of the docs
def _extending_md_adapter_example() -> str:
    """The Python block of the "Add an adapter" section of docs/extending.md."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text(encoding="utf-8")
    section = text.split("\n## Add an adapter\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_worked_example_of_extending_md_runs_a_wan_model_with_the_cache() -> None:
    namespace: dict[str, Any] = {"__name__": "transformer_pipeline_example"}
    exec(compile(_extending_md_adapter_example(), "docs/extending.md", "exec"), namespace)  # noqa: S102
    try:
        assert available_adapters()[-1] == "transformer_pipeline"  # registered after the built-in ones
        torch.manual_seed(0)
        model = CausalWanModel(WanConfig(**MODEL)).eval()
        pipeline = SimpleNamespace(transformer=model)
        config = MemRoPEConfig(cache_frames=7, sink_frames=1, chunk_frames=2)
        reference_cache = model.new_cache(config, 1, (4, 6))
        text = torch.randn(1, 5, MODEL["text_dim"])
        reference_context = model.encode_context(text)
        with memrope.attach(pipeline, config) as attachment, torch.no_grad():
            assert type(attachment).__name__ == "TransformerAttachment" and attachment.cache_config is config
            for start in range(0, 10, 2):  # past the first eviction
                video = torch.randn(1, MODEL["in_dim"], 2, 4, 6)
                for level in (1000.0, 0.0):
                    timesteps = torch.full((1, 2), level)
                    flow = pipeline.transformer(video, timesteps, text, start_frame=start)
                    expected = CausalWanModel.forward(
                        model,
                        video.transpose(1, 2),
                        timesteps,
                        reference_context,
                        cache=reference_cache,
                        start_frame=start,
                    )
                    assert torch.equal(flow, expected.transpose(1, 2))
        assert "forward" not in vars(model) and not attachment.active
        with pytest.raises(TypeError, match="transformer_pipeline: pipelines holding a Wan DiT"):
            memrope.attach(SimpleNamespace(transformer=nn.Linear(2, 2)))
    finally:
        unregister_adapter("transformer_pipeline")

"""docs/extending.md stays true: each of its Python blocks runs, in a fresh namespace, against the registries
as memrope ships them (so the examples neither clash with what other tests registered nor leak into them)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from memrope import presets
from memrope.adapters import registry as adapter_registry
from memrope.cli import main
from memrope.policies import registry as policy_registry

PAGE = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
NO_RUN = "<!-- no-run -->"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(markdown: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of each Python block of ``markdown`` not preceded by a ``<!-- no-run -->`` line."""
    found = []
    for match in FENCE.finditer(markdown):
        before = markdown[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if match.group(1) == "python" and before.strip() != NO_RUN:
            found.append((markdown.count("\n", 0, match.start()) + 2, match.group(2)))
    return found


def _shipped(entry: Any) -> bool:
    """Whether a registry entry is defined inside the memrope package (not by a test or a doc example)."""
    defined_in = getattr(entry, "attach", entry)  # an Adapter record is known by its attach function
    return str(getattr(defined_in, "__module__", "")).split(".")[0] == "memrope"


@contextmanager
def registries_as_shipped() -> Iterator[None]:
    """Hide policies and adapters registered outside memrope, and restore every registry afterwards.

    The registries are emptied and refilled in place, so every module's view of them sees the change.
    """
    registries: list[dict[str, Any]] = [
        policy_registry._POLICIES,
        adapter_registry._ADAPTERS,
        presets._FAMILIES,
        presets._PRESETS,
    ]
    saved = [dict(registry) for registry in registries]
    for registry in registries[:2]:
        for name in [name for name, entry in registry.items() if not _shipped(entry)]:
            del registry[name]
    try:
        yield
    finally:
        for registry, entries in zip(registries, saved):
            registry.clear()
            registry.update(entries)


def _run(code: str, line: int) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"extending_md_line_{line}"}
    exec(compile("\n" * (line - 1) + code, str(PAGE), "exec"), namespace)  # noqa: S102 (our own docs)
    return namespace


BLOCKS = python_blocks(PAGE.read_text(encoding="utf-8"))


def test_the_page_has_the_policy_family_and_placement_examples() -> None:
    text = PAGE.read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert sections[:2] == ["Add a cache policy", "Add a model family"]
    joined = "\n".join(code for _, code in BLOCKS)
    for needed in ("@register_policy", "register_model_family(", "_placeable_modules = "):
        assert needed in joined


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_each_python_block_runs_in_a_fresh_namespace(line: int, code: str) -> None:
    before = (dict(policy_registry._POLICIES), dict(presets._PRESETS), dict(adapter_registry._ADAPTERS))
    with registries_as_shipped():
        _run(code, line)
    assert (
        dict(policy_registry._POLICIES),
        dict(presets._PRESETS),
        dict(adapter_registry._ADAPTERS),
    ) == before


def test_a_registered_family_shows_in_memrope_presets(capsys: pytest.CaptureFixture[str]) -> None:
    ((line, code),) = [(line, code) for line, code in BLOCKS if "register_model_family(" in code]
    with registries_as_shipped():
        family = _run(code, line)["preset"].family
        expected = list(presets.MODEL_FAMILIES[family].presets())
        assert main(["presets", "--all"]) == 0
        every = capsys.readouterr().out
        assert main(["presets"]) == 0
        grouped = capsys.readouterr().out
    rows = [row.split()[0] for row in every.splitlines() if row.startswith(f"{family}-")]
    assert rows == expected and len(expected) >= 2
    assert [row.split()[0] for row in grouped.splitlines() if row.startswith(f"{family}-")] == [
        f"{family}-<length>"
    ]
    assert family not in presets.MODEL_FAMILIES and not set(expected) & set(presets.PRESETS)


def test_blocks_marked_no_run_and_other_languages_are_skipped() -> None:
    markdown = (
        "text\n```python\nran = 1\n```\n<!-- no-run -->\n```python\nraise SystemExit\n```\n"
        "```bash\nmemrope presets\n```\n\n```python\nran = 2\n```\n"
    )
    assert python_blocks(markdown) == [(3, "ran = 1\n"), (14, "ran = 2\n")]

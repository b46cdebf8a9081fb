"""The README stays true: its Python snippets run (in order, one namespace) on the tiny model, its
`memrope` command lines parse, and its set-up commands are the ones CI runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from memrope.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)
NEEDS = "# needs:"  # first line of a snippet that needs hardware or objects a test machine lacks


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README) if lang == language]


def test_python_snippets_run_on_the_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    runnable = [body for body in blocks("python") if not body.startswith(NEEDS)]
    assert len(runnable) >= 4
    namespace: dict[str, object] = {"__name__": "readme"}
    for body in runnable:
        exec(compile(body, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    assert (tmp_path / "attention.png").stat().st_size > 0
    cache = namespace["cache"]
    assert cache.slot_layout()[:5] == ["f0", "f1", "f2", "long", "short"]  # type: ignore[attr-defined]


def memrope_commands() -> list[list[str]]:
    commands = []
    for body in blocks("bash"):
        text = body.replace("\\\n", " ")
        for line in text.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if "memrope.cli" in words:
                    words = ["memrope", *words[words.index("memrope.cli") + 1 :]]
                if words and words[0] == "memrope":
                    commands.append(words[1:])
    return commands


@pytest.mark.parametrize("arguments", memrope_commands(), ids=lambda words: " ".join(words)[:60])
def test_command_lines_parse(arguments: list[str]) -> None:
    build_parser().parse_args(arguments)


def test_the_setup_commands_are_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = blocks("bash")[1].strip()
    assert test_command.endswith("pip install -e \".[test]\" && python -m pytest")
    for step in ("pip install --quiet torch==2.13.0", 'pip install --quiet -e ".[test]"', "python -m pytest"):
        assert step in ci
    assert "memrope generate --model tiny" in blocks("bash")[0]
    assert len(memrope_commands()) >= 10

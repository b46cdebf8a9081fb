"""The README stays true: its Python snippets run (in order, one namespace) on the tiny model, its
`memrope` command lines parse, its set-up commands are the ones CI runs, its presets table is what
`memrope presets` prints, and it and the design page it links need nothing outside the repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from script_modules import import_script

from memrope.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DESIGN = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
DESIGN_SECTIONS = (  # docstrings and issues cite these as "docs/design.md §N": numbers must not move
    "The problem",
    "Cache layout",
    "Call protocol",
    "Filling phase",
    "Policy `memrope`",
    "Policy `sink`",
    "RoPE",
    "Attention",
    "The Wan2.1 causal DiT",
    "Pipeline",
    "Known limits of the official code",
    "Upstream code",
    "Parity vectors",
)
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
    assert test_command.endswith('pip install -e ".[test]" && python -m pytest')
    for step in ("pip install --quiet torch==2.13.0", 'pip install --quiet -e ".[test]"', "python -m pytest"):
        assert step in ci
    assert len(memrope_commands()) >= 10


def test_the_main_job_is_the_toy_video_whose_strip_the_readme_shows() -> None:
    """The first command makes the toy video, and scripts/readme_strip.py regenerates the strip from
    exactly that command."""
    module = import_script(ROOT / "scripts" / "readme_strip.py")
    assert blocks("bash")[0].strip().endswith("&& " + module.README_COMMAND)
    assert "--model toy" in module.README_COMMAND
    assert "](docs/toy_strip.png)" in README and (ROOT / "docs" / "toy_strip.png").is_file()


def _printed_table(text: str) -> list[list[str]]:
    """Rows (header first) of the plain-text table ``memrope presets`` prints, cut at its column starts."""
    lines = text.splitlines()
    starts = [match.start() for match in re.finditer(r"-+", lines[1])]
    ends = [*starts[1:], None]
    rows = []
    for line in [lines[0], *lines[2:]]:
        if not line.strip():
            break
        rows.append([line[start:end].strip() for start, end in zip(starts, ends)])
    return rows


def _readme_table(heading: str) -> list[list[str]]:
    """Rows (header first) of the first Markdown table after ``heading``, cells without backticks."""
    rows: list[list[str]] = []
    for line in README.split(heading, 1)[1].splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        if set(line) <= set("|-: "):
            continue
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_presets_table_is_what_memrope_presets_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    printed = _printed_table(capsys.readouterr().out)
    assert len(printed) > 10
    assert _readme_table("## Presets and memory") == printed


def test_readme_and_design_page_need_nothing_outside_the_repository() -> None:
    for name, text in (("README.md", README), ("docs/design.md", DESIGN)):
        for outside in ("../shared", "shared/parity", "SPEC.md", "SPEC §"):
            assert outside not in text, f"{name} refers to {outside!r}, which users do not have"
    links = re.findall(r"\]\((?!https?://|#)([^)#\s]+)(?:#([^)\s]+))?\)", README)
    assert "docs/design.md" in {path for path, _ in links}
    design_anchors = {_github_anchor(title) for title in re.findall(r"^#+ (.+)$", DESIGN, flags=re.MULTILINE)}
    for path, anchor in links:
        assert (ROOT / path).exists(), f"README links to {path}, which is not in the repository"
        if path == "docs/design.md" and anchor:
            assert anchor in design_anchors, f"README links to {path}#{anchor}, which is no heading there"


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces -> hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_design_page_keeps_its_section_numbers() -> None:
    headings = re.findall(r"^## (\d+)\. (.+)$", DESIGN, flags=re.MULTILINE)
    assert [int(number) for number, _ in headings] == list(range(1, len(DESIGN_SECTIONS) + 1))
    for (_, title), expected in zip(headings, DESIGN_SECTIONS):
        assert title.startswith(expected), f"design §: {title!r} should start with {expected!r}"

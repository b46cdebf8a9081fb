"""The text form of prompt schedules: parsing, validation and the round trip through formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memrope.schedule import ScheduledPrompt, format_prompt_schedule, parse_prompt_schedule


def test_frames_and_seconds() -> None:
    entries = parse_prompt_schedule(" 0: a cat sits ; 120:the cat jumps;33s:it leaves ", chunk_frames=3)
    assert entries == (
        ScheduledPrompt(0, "a cat sits"),
        ScheduledPrompt(120, "the cat jumps"),
        ScheduledPrompt(132, "it leaves"),
    )


def test_prompts_may_contain_colons_and_a_file_uses_lines() -> None:
    text = "0: scene 1: a harbour at dawn; boats\n\n60: scene 2: the storm\n"
    entries = parse_prompt_schedule(text, chunk_frames=3, num_frames=120, separator="\n")
    assert entries == (ScheduledPrompt(0, "scene 1: a harbour at dawn; boats"), ScheduledPrompt(60, "scene 2: the storm"))


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "the prompt schedule is empty"),
        (" ; ", "the prompt schedule is empty"),
        ("a cat", r"entry 0 must be START:PROMPT, got 'a cat'"),
        ("0:a cat;x:dog", r"entry 1: START must be a latent frame .* got 'x'"),
        ("0:a cat;1.1s:dog", r"entry 1: START must be .* multiple of 0.25"),
        ("0:a cat;120:", r"entry 1 \(frame 120\) has an empty prompt"),
        ("0:a;4:b", r"entry 1 starts at latent frame 4; starts must be multiples of the chunk \(3 latent frames\)"),
        ("0:a;6:b;6:c", r"entry 2 starts at latent frame 6; .*increasing"),
        ("0:a;240:b", r"before the video's end \(latent frame 120\)"),
        ("3:a;6:b", "must start at frame 0, its first entry starts at 3"),
        ("-3:a", "entry 0 starts at latent frame -3"),
    ],
)
def test_bad_schedules(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_prompt_schedule(text, chunk_frames=3, num_frames=120)


def test_not_a_string() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        parse_prompt_schedule(["0:a"], chunk_frames=3)  # type: ignore[arg-type]


prompts = st.text(alphabet=st.characters(blacklist_characters=";\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), min_size=1).filter(
    lambda p: p.strip() == p and p != ""
)


@given(chunk=st.integers(1, 4), gaps=st.lists(st.integers(1, 20), max_size=6), data=st.data())
def test_format_then_parse_is_the_identity(chunk: int, gaps: list[int], data: st.DataObject) -> None:
    frames = [0]
    for gap in gaps:
        frames.append(frames[-1] + gap * chunk)
    entries = tuple(ScheduledPrompt(frame, data.draw(prompts)) for frame in frames)
    assert parse_prompt_schedule(format_prompt_schedule(entries), chunk_frames=chunk) == entries

"""Whole-chunk lengths from seconds and latent frames, and the text form of prompt schedules: parsing,
validation, starts moved to chunk boundaries, and the round trip through formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memrope.prompt_schedule import (
    ScheduledPrompt,
    format_prompt_schedule,
    latent_frames_at_least,
    parse_prompt_schedule,
    round_up_to_chunk,
    video_frame_count,
    video_seconds,
)


@pytest.mark.parametrize(
    ("seconds", "chunk", "latent"),
    [
        (4, 3, 18),
        (5, 3, 21),
        (10, 3, 42),
        (20, 3, 81),
        (3, 3, 15),
        (30, 3, 123),
        (0.001, 3, 3),
        (1 / 16, 1, 1),
        (1 / 16 + 1e-12, 1, 2),
        (4.3125, 3, 18),
        (4.3125 + 1e-9, 3, 21),
        (60, 2, 242),
    ],
)
def test_seconds_give_the_shortest_whole_chunk_video_at_least_that_long(
    seconds: float, chunk: int, latent: int
) -> None:
    assert latent_frames_at_least(seconds, chunk_frames=chunk) == latent
    assert video_seconds(latent) >= seconds


def test_the_issue_example() -> None:
    """--seconds 4 with chunks of 3: 18 latent frames = 69 video frames = 4.31 s."""
    latent = latent_frames_at_least(4, chunk_frames=3)
    assert (latent, video_frame_count(latent), round(video_seconds(latent), 2)) == (18, 69, 4.31)


@given(seconds=st.floats(1e-6, 1e6), chunk=st.integers(1, 5))
def test_lengths_are_whole_chunks_long_enough_and_shortest(seconds: float, chunk: int) -> None:
    latent = latent_frames_at_least(seconds, chunk_frames=chunk)
    assert latent % chunk == 0 and latent >= chunk
    assert video_seconds(latent) >= seconds
    assert latent == chunk or video_seconds(latent - chunk) < seconds


@given(frames=st.integers(1, 10**7), chunk=st.integers(1, 7))
def test_round_up_to_chunk(frames: int, chunk: int) -> None:
    rounded = round_up_to_chunk(frames, chunk_frames=chunk)
    assert rounded % chunk == 0 and frames <= rounded < frames + chunk


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan"), float("inf"), True, "4"])
def test_lengths_that_cannot_be_meant_are_refused(seconds: object) -> None:
    with pytest.raises(ValueError, match="seconds must be"):
        latent_frames_at_least(seconds, chunk_frames=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_frames must be an int >= 1"):
        latent_frames_at_least(4, chunk_frames=0)
    with pytest.raises(ValueError, match=r"frames must be an int >= 1 \(latent frames\)"):
        round_up_to_chunk(0, chunk_frames=3)


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
    assert entries == (
        ScheduledPrompt(0, "scene 1: a harbour at dawn; boats"),
        ScheduledPrompt(60, "scene 2: the storm"),
    )


def test_starts_inside_a_chunk_move_to_the_next_chunk_boundary() -> None:
    """The official example: "10s" is latent frame 40, inside the chunk 39-41, so the switch is at 42."""
    entries = parse_prompt_schedule("0:a;1.1s:y;10s:b;20s:c", chunk_frames=3, num_frames=120)
    assert [(entry.frame, entry.prompt) for entry in entries] == [(0, "a"), (6, "y"), (42, "b"), (81, "c")]
    assert [entry.requested for entry in entries] == [0.0, pytest.approx(4.4), 40.0, 80.0]
    assert parse_prompt_schedule("0:a;4:b", chunk_frames=3)[1].frame == 6
    assert parse_prompt_schedule("0:a;0.1s:b", chunk_frames=1)[1].frame == 1  # 0.4 -> the next frame


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "the prompt schedule is empty"),
        (" ; ", "the prompt schedule is empty"),
        ("a cat", r"entry 0 must be START:PROMPT, got 'a cat'"),
        ("0:a cat;x:dog", r"entry 1: START must be a latent frame .* got 'x'"),
        ("0:a cat;infs:dog", r"entry 1: START must be a latent frame .* got 'infs'"),
        ("0:a cat;120:", r"entry 1 \('120'\) has an empty prompt"),
        ("0:a;2:b;3:c", r"entry 2 \('3'\) does not start after the previous entry \(latent frame 3\)"),
        ("0:a;6:b;6:c", r"entry 2 \('6'\) does not start after the previous entry"),
        ("0:a;240:b", r"entry 1 \('240'\) starts at or after the video's end \(latent frame 120\)"),
        ("0:a;119:b", r"entry 1 \('119' -> latent frame 120\) starts at or after the video's end"),
        ("0:a;29.9s:b", r"entry 1 \('29.9s' -> latent frame 120\) starts at or after the video's end"),
        ("3:a;6:b", "must start at frame 0, its first entry starts at 3"),
        ("1:a", "must start at frame 0, its first entry starts at 3"),
        ("-3:a", r"entry 0 \('-3'\) starts at latent frame -3; starts must be >= 0"),
        ("-1:a", r"entry 0 \('-1'\) starts at latent frame -1; starts must be >= 0"),
    ],
)
def test_bad_schedules(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_prompt_schedule(text, chunk_frames=3, num_frames=120)


def test_not_a_string() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        parse_prompt_schedule(["0:a"], chunk_frames=3)  # type: ignore[arg-type]


prompts = st.text(
    alphabet=st.characters(blacklist_characters=";\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), min_size=1
).filter(lambda p: p.strip() == p and p != "")


@given(chunk=st.integers(1, 4), gaps=st.lists(st.integers(1, 20), max_size=6), data=st.data())
def test_format_then_parse_is_the_identity(chunk: int, gaps: list[int], data: st.DataObject) -> None:
    frames = [0]
    for gap in gaps:
        frames.append(frames[-1] + gap * chunk)
    entries = tuple(ScheduledPrompt(frame, data.draw(prompts)) for frame in frames)
    assert parse_prompt_schedule(format_prompt_schedule(entries), chunk_frames=chunk) == entries

"""`memrope generate` lengths a person types: the shortest whole-chunk video at least as long as asked,
said in a note line and in the report; refusals only for what cannot be meant; absurd lengths refused
at once; Ctrl-C while the noise is positioned stops at once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import SENTINEL, needs_video, tiny_args

from memrope import cli, noise
from memrope.cli import main, plan_generate

pytestmark = needs_video


def args_for(output: Path, *extra: str) -> list[str]:
    return tiny_args(output, *extra, prompt="a red ball")


def plan_frames(tmp_path: Path, *extra: str) -> int:
    return plan_generate(cli.build_parser().parse_args(args_for(tmp_path / "v.mp4", *extra))).num_frames


def test_the_issue_command_makes_a_4_second_video_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`memrope generate --model tiny --prompt "a red ball" --seconds 4 -o ball.mp4` (refused before)."""
    output = tmp_path / "ball.mp4"
    assert main(args_for(output, "--seconds", "4")) == 0
    err = capsys.readouterr().err
    assert (
        "memrope: note: --seconds 4 -> 18 latent frames = 69 video frames = 4.31 s (whole chunks of 3)" in err
    )
    report = json.loads((tmp_path / "ball.mp4.json").read_text())
    assert report["complete"] and report["requested"] == {"seconds": 4.0}
    assert report["produced"] == {"latent_frames": 18, "video_frames": 69, "seconds": 69 / 16}
    assert report["produced"]["seconds"] >= 4

    import imageio.v2 as imageio

    with imageio.get_reader(output) as reader:
        assert sum(1 for _ in reader) == 69


def test_num_frames_round_up_to_whole_chunks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "v.mp4"
    assert main(args_for(output, "--num-frames", "10")) == 0
    assert "note: --num-frames 10 -> 12 latent frames = 45 video frames = 2.81 s" in capsys.readouterr().err
    report = json.loads((tmp_path / "v.mp4.json").read_text())
    assert report["requested"] == {"latent_frames": 10}
    assert report["produced"] == {"latent_frames": 12, "video_frames": 45, "seconds": 45 / 16}


@pytest.mark.parametrize(
    ("extra", "frames"),
    [
        (["--seconds", "5"], 21),
        (["--seconds", "10"], 42),
        (["--seconds", "20"], 81),
        (["--seconds", "3"], 15),
        (["--seconds", "0.01"], 3),
        (["--seconds", "86400"], 345603),
        (["--num-frames", "1"], 3),
        (["--num-frames", "12"], 12),
        (["--num-frames", "13"], 15),
        (["--seconds", "6", "--policy", "full"], 27),
        (["--num-frames", "1023", "--policy", "full"], 1023),
        ([], 24),  # the tiny preset's own length
    ],
)
def test_lengths(tmp_path: Path, extra: list[str], frames: int) -> None:
    assert plan_frames(tmp_path, *extra) == frames


def test_the_default_length_is_reported_as_the_presets(tmp_path: Path) -> None:
    plan = plan_generate(cli.build_parser().parse_args(args_for(tmp_path / "v.mp4")))
    assert plan.requested == {"latent_frames": 24, "preset_default": True}


def test_prompt_schedule_seconds_move_to_the_next_chunk_boundary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "v.mp4"
    command = [
        "generate",
        "--model",
        "tiny",
        "--prompt-schedule",
        "0:a cat;4:a bird;2.5s:a dog",
        "--seconds",
        "4",
        "--output",
        str(output),
        "--no-progress",
    ]
    assert main(command) == 0
    err = capsys.readouterr().err
    assert (
        "--prompt-schedule starts moved to the next chunk boundary (latent frames): 4 -> 6, 10 -> 12" in err
    )
    schedule = json.loads((tmp_path / "v.mp4.json").read_text())["prompt_schedule"]
    assert schedule == [
        {"frame": 0, "prompt": "a cat"},
        {"frame": 6, "prompt": "a bird"},
        {"frame": 12, "prompt": "a dog"},
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seconds", "0"], "--seconds 0: the length must be > 0 seconds"),
        (["--seconds", "-1"], "--seconds -1: the length must be > 0 seconds"),
        (["--seconds", "inf"], "expected a finite number"),
        (["--num-frames", "0"], "expected a positive integer"),
        (
            ["--seconds", "1e9"],
            (
                "--seconds 1000000000 is too long: memrope generate makes at most 24 h of video "
                "per run (--seconds 86400 = --num-frames 345603)"
            ),
        ),
        (["--seconds", "1.5e9"], "--seconds 1500000000 is too long"),
        (["--seconds", "86400.1"], "--seconds 86400.1 is too long"),
        (["--num-frames", "345606"], "--num-frames 345606 is too long"),
        (
            ["--seconds", "256", "--policy", "full"],
            (
                "--policy full keeps every frame and supports at most 1024 "
                "latent frames (the RoPE table); --seconds 256 needs 1026. "
                "The longest in whole chunks is --num-frames 1023"
            ),
        ),
        (
            ["--prompt-schedule", "0:a;5s:b", "--seconds", "4"],
            "entry 1 ('5s' -> latent frame 21) starts at or after the video's end (latent frame 18)",
        ),
    ],
)
def test_what_cannot_be_meant_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    output = tmp_path / "v.mp4"
    output.write_bytes(SENTINEL)
    started = time.perf_counter()
    arguments = args_for(output, *extra)
    if "--prompt-schedule" in extra:
        arguments.remove("--prompt")
        arguments.remove("a red ball")
    assert main(arguments) == 2
    assert time.perf_counter() - started < 10  # never hours positioning the noise
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert " or 1e+09" not in err
    assert output.read_bytes() == SENTINEL and sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_ctrl_c_while_positioning_the_noise_stops_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the first chunk there is nothing to keep: the first Ctrl-C aborts (it was swallowed before,
    so a long video's positioning went on for hours), and every output stays as it was."""
    output = tmp_path / "v.mp4"
    output.write_bytes(SENTINEL)
    original = noise.discard

    def discard(*args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next line
        raise AssertionError("the Ctrl-C was ignored while positioning the noise")

    monkeypatch.setattr(noise, "discard", discard)
    assert main(args_for(output, "--num-frames", "12")) == 130
    assert "memrope: error: interrupted" in capsys.readouterr().err
    assert output.read_bytes() == SENTINEL and sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    monkeypatch.setattr(noise, "discard", original)
    assert main(args_for(output, "--num-frames", "3")) == 0  # the handlers are back to normal

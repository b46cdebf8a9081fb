"""`memrope generate` under faults: nothing lost, nothing silently wrong.

A failed run (a write error, a full disk, NaN/inf) leaves an existing video and its report untouched;
outputs that are one file are refused; a checkpoint is never deleted on a guess; a resume checks the
weights and the latents log; a run locks its outputs; files a killed run left are cleaned; messages
are one line naming the file or flag; a BOM is not part of a prompt; ``--save-latents`` streams.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cli_helpers
import pytest
import torch
from cli_helpers import SENTINEL, needs_video
from safetensors.torch import load_file, save_file

from memrope import cli
from memrope.cli import LatentLog, OutputLock, latent_log, loading, main
from memrope.video import Mp4Writer

pytestmark = needs_video
REPORT = b'{"complete": true, "note": "the report of the existing video"}\n'
FRAMES = "12"  # 4 chunks of the tiny model: a fraction of a second


def tiny_args(output: Path, *extra: str) -> list[str]:
    return cli_helpers.tiny_args(output, "--num-frames", FRAMES, *extra)


def existing_video(folder: Path) -> Path:
    """A 'good' earlier video and its report, which a failed run must leave alone."""
    output = folder / "v.mp4"
    output.write_bytes(SENTINEL)
    (folder / "v.mp4.json").write_bytes(REPORT)
    return output


def untouched(output: Path) -> bool:
    return output.read_bytes() == SENTINEL and output.with_name(output.name + ".json").read_bytes() == REPORT


def hidden_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob(".*"))


def one_line_error(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("memrope: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def after_writes(monkeypatch: pytest.MonkeyPatch, count: int, action: Callable[[], None]) -> None:
    """Run ``action`` right after the ``count``-th ``Mp4Writer.write`` (one write per chunk)."""
    original = Mp4Writer.write
    calls = {"n": 0}

    def write(self: Mp4Writer, frames: Any) -> None:
        original(self, frames)
        calls["n"] += 1
        if calls["n"] == count:
            action()

    monkeypatch.setattr(Mp4Writer, "write", write)


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def interrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> Path:
    """A --save-every 1 run stopped by a Ctrl-C after 2 of 4 chunks: its checkpoint is at latent frame 6."""
    output = tmp_path / "v.mp4"
    with monkeypatch.context() as patch:
        after_writes(patch, 2, ctrl_c)
        assert main(tiny_args(output, "--save-every", "1", *extra)) == 130
    assert (tmp_path / "v.mp4.resume.safetensors").exists()
    return output


def resume_files(output: Path) -> dict[str, bytes]:
    names = [output.name + suffix for suffix in (".resume.safetensors", ".resume.latents", ".resume.json")]
    return {name: (output.parent / name).read_bytes() for name in names}


# --------------------------------------------------------------------------------------------------
# A failed run leaves the existing video and report untouched; its partial files are removed
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--save-latents", "z.safetensors"], ["--save-every", "1"]])
def test_disk_full_mid_run_keeps_the_existing_video_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    output = existing_video(tmp_path)
    monkeypatch.chdir(tmp_path)

    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    after_writes(monkeypatch, 2, disk_full)
    assert main(tiny_args(output, *extra)) == 1
    line = one_line_error(capsys.readouterr().err)
    assert str(output) in line and "No space left on device" in line and "unchanged" in line
    assert untouched(output)
    assert hidden_files(tmp_path) == []  # no partial video, no temporary latents log, no lock
    kept = sorted(path.name for path in tmp_path.iterdir())
    if "--save-every" in extra:  # the checkpoint of the chunk before the failure stays resumable
        assert kept == [
            "v.mp4",
            "v.mp4.json",
            "v.mp4.resume.json",
            "v.mp4.resume.latents",
            "v.mp4.resume.safetensors",
        ]
    else:
        assert kept == ["v.mp4", "v.mp4.json"]


def test_a_write_error_on_a_fresh_output_reports_the_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "new.mp4"

    def broken() -> None:
        raise OSError(errno.EIO, "Input/output error")

    after_writes(monkeypatch, 1, broken)
    assert main(tiny_args(output)) == 1
    assert not output.exists()
    report = json.loads((tmp_path / "new.mp4.json").read_text())
    assert report["complete"] is False and "Input/output error" in report["error"]


def test_files_a_killed_run_left_are_removed_by_the_next_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "v.mp4"
    orphans = [
        ".v.mp4.0123abcd.partial.mp4",
        ".v.mp4.k3x_9q2a.tmp",
        ".v.mp4.json.ab12cd34.tmp",
        ".v.mp4.deadbeef.latents.tmp",
        ".v.mp4.resume.safetensors.zz_zz_zz.tmp",
        "v.mp4.resume.latents",
        "v.mp4.resume.json",
    ]  # a log and run file without a checkpoint
    others = [".other.mp4.0123abcd.partial.mp4", ".v.mp4.notours.tmp", "v.mp4.notes.txt"]
    for name in orphans + others:
        (tmp_path / name).write_bytes(b"left over")
    assert main(tiny_args(output)) == 0
    assert "removed 7 file(s) an interrupted run left" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*others, "v.mp4", "v.mp4.json"])


# --------------------------------------------------------------------------------------------------
# Two outputs of one run that are one file
# --------------------------------------------------------------------------------------------------


def _collisions(tmp_path: Path) -> list[tuple[list[str], str]]:
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "v.mp4")
    os.link(tmp_path / "v.mp4", tmp_path / "hard.bin")
    (tmp_path / "prompts.txt").write_text("0:a cat\n", encoding="utf-8")
    return [
        (["--save-latents", "v.mp4"], "--save-latents"),
        (["--save-latents", "./v.mp4"], "--save-latents"),
        (["--save-latents", "sub/../v.mp4.json"], "the report"),
        (["--save-latents", "v.mp4.resume.safetensors"], "the checkpoint"),
        (["--save-latents", "v.mp4.resume.latents"], "the latents log"),
        (["--save-latents", "v.mp4.resume.json"], "the run file"),
        (["--save-latents", "link.safetensors"], "--save-latents"),
        (["--save-latents", "hard.bin"], "--save-latents"),
        (["--save-latents", "v.mp4.attention.json", "--attention-stats"], "the attention stats"),
    ]


def test_outputs_that_are_one_file_are_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    output = existing_video(tmp_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    for extra, role in _collisions(tmp_path):
        before = sorted(path.name for path in tmp_path.iterdir())
        assert main(tiny_args(Path("v.mp4"), *extra)) == 2, extra
        line = one_line_error(capsys.readouterr().err)
        assert "are the same file" in line and role in line, (extra, line)
        assert untouched(output) and sorted(path.name for path in tmp_path.iterdir()) == before
    # an output over an input of the run
    assert (
        main(
            [
                "generate",
                "--prompt-schedule",
                "@prompts.txt",
                "--output",
                "p.mp4",
                "--save-latents",
                "./prompts.txt",
                "--no-progress",
                "--num-frames",
                FRAMES,
            ]
        )
        == 2
    )
    assert "--prompt-schedule prompts.txt" in one_line_error(capsys.readouterr().err)
    assert (tmp_path / "prompts.txt").read_text(encoding="utf-8") == "0:a cat\n"


# --------------------------------------------------------------------------------------------------
# Forgetting --resume keeps the checkpoint; --restart starts over
# --------------------------------------------------------------------------------------------------


def test_rerunning_without_resume_refuses_and_keeps_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    output = interrupted_run(tmp_path, monkeypatch)
    saved = resume_files(output)
    capsys.readouterr()
    for extra in ([], ["--save-every", "1"]):
        assert main(tiny_args(output, *extra)) == 2
        line = one_line_error(capsys.readouterr().err)
        assert "at latent frame 6 of 12" in line and "--resume" in line and "--restart" in line
        assert resume_files(output) == saved
    assert main(tiny_args(output, "--restart")) == 0
    assert "--restart: removed the checkpoint" in capsys.readouterr().err
    assert json.loads((tmp_path / "v.mp4.json").read_text())["complete"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["v.mp4", "v.mp4.json"]
    assert main(["generate", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--restart" in help_text and "start over" in help_text


# --------------------------------------------------------------------------------------------------
# Resume integrity: the weights and the latents log
# --------------------------------------------------------------------------------------------------


def test_resume_refuses_other_weights_at_the_same_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from memrope.presets import tiny_model

    weights = tmp_path / "weights.safetensors"
    save_file(tiny_model(seed=1).state_dict(), weights)
    original = weights.read_bytes()
    output = interrupted_run(tmp_path, monkeypatch, "--checkpoint", str(weights))
    saved = resume_files(output)
    save_file(tiny_model(seed=2).state_dict(), weights)  # same path, same size, other contents
    assert weights.stat().st_size == len(original)
    capsys.readouterr()
    assert main(tiny_args(output, "--checkpoint", str(weights), "--save-every", "1", "--resume")) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "the weights differ" in line and "same size, other contents" in line and "--restart" in line
    assert resume_files(output) == saved
    weights.write_bytes(original)
    assert main(tiny_args(output, "--checkpoint", str(weights), "--save-every", "1", "--resume")) == 0


def _tamper(kind: str, log: Path) -> None:
    data = log.read_bytes()
    if kind == "overwritten":
        log.write_bytes(torch.randint(0, 256, (len(data),), dtype=torch.uint8).numpy().tobytes())
    elif kind == "truncated":
        log.write_bytes(data[: len(data) // 3])
    elif kind == "missing":
        log.unlink()
    elif kind == "one flipped byte":
        log.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("overwritten", "is not what the checkpoint recorded"),
        ("one flipped byte", "the blake2b of its first 6 latent frames differs"),
        ("truncated", "holds 2 latent frames but the checkpoint is at latent frame 6"),
        ("missing", "is missing"),
    ],
)
def test_resume_refuses_a_damaged_latents_log(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    message: str,
) -> None:
    output = interrupted_run(tmp_path, monkeypatch)
    partial_video = output.read_bytes()
    log = tmp_path / "v.mp4.resume.latents"
    intact = log.read_bytes()
    _tamper(kind, log)
    damaged = log.read_bytes() if log.exists() else None
    capsys.readouterr()
    assert main(tiny_args(output, "--save-every", "1", "--resume")) != 0
    line = one_line_error(capsys.readouterr().err)
    assert message in line and str(log) in line and "--restart" in line
    assert output.read_bytes() == partial_video
    assert (log.read_bytes() if log.exists() else None) == damaged  # a refused resume changes nothing
    log.write_bytes(intact)
    reference = tmp_path / "ref.safetensors"
    assert main(tiny_args(tmp_path / "ref.mp4", "--save-latents", str(reference))) == 0
    latents = tmp_path / "v.safetensors"
    assert main(tiny_args(output, "--save-every", "1", "--resume", "--save-latents", str(latents))) == 0
    assert torch.equal(load_file(latents)["latents"], load_file(reference)["latents"])


def test_an_unreadable_checkpoint_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    output = interrupted_run(tmp_path, monkeypatch)
    (tmp_path / "v.mp4.resume.safetensors").write_bytes(b"\x00garbage" * 10)
    capsys.readouterr()
    assert main(tiny_args(output, "--save-every", "1", "--resume")) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "the checkpoint" in line and "is unreadable" in line and "--restart" in line


# --------------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------------


def test_a_run_refuses_an_output_another_run_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = existing_video(tmp_path)
    lock = OutputLock(tmp_path / ".v.mp4.lock", output)
    lock.acquire()  # flock locks are per open file: this holds it against main() below as another process would
    try:
        assert main(tiny_args(output, "--save-every", "1")) == 1
        line = one_line_error(capsys.readouterr().err)
        assert (
            f"being written by another memrope run (pid {os.getpid()}" in line
            and "choose another --output" in line
        )
        assert untouched(output)
        assert sorted(path.name for path in tmp_path.iterdir()) == [".v.mp4.lock", "v.mp4", "v.mp4.json"]
    finally:
        lock.release()
    assert main(tiny_args(output)) == 0
    assert hidden_files(tmp_path) == []


HOLD_LOCK = """
import sys
from pathlib import Path
from memrope.cli import OutputLock
lock = OutputLock(Path(sys.argv[1]), Path(sys.argv[2]))
lock.acquire()
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


def test_a_second_process_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    import subprocess

    output = tmp_path / "v.mp4"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / ".v.mp4.lock"), str(output)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(cli.CLIError, match=rf"another memrope run \(pid {holder.pid}"):
            OutputLock(tmp_path / ".v.mp4.lock", output).acquire()
    finally:
        holder.communicate("", timeout=60)
    OutputLock(tmp_path / ".v.mp4.lock", output).acquire()  # released: free again


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    output = tmp_path / "v.mp4"
    (tmp_path / ".v.mp4.lock").write_text("999999999\n")  # its process is gone: nobody holds the flock
    assert main(tiny_args(output)) == 0
    assert hidden_files(tmp_path) == [] and output.exists()


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------


def test_meta_device_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = existing_video(tmp_path)
    assert main(tiny_args(output, "--device", "meta")) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--device meta holds no data" in line and "use cpu" in line
    assert untouched(output)


def test_a_folder_that_takes_no_file_is_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """os.access says yes to root and knows nothing of full or odd file systems: the check creates a file."""
    output = existing_video(tmp_path)

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(tiny_args(output)) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"--output {output}: cannot create files in the folder {tmp_path} (Read-only file system)" in line
    assert untouched(output)


def test_ffmpeg_failing_to_write_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """If the folder goes away (or turns read-only) after the checks, ffmpeg fails: one line, no dump."""
    folder = tmp_path / "out"
    folder.mkdir()
    output = folder / "v.mp4"
    original = Mp4Writer.write

    def write(self: Mp4Writer, frames: Any) -> None:
        folder.chmod(0o700)
        if folder.exists():
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()
        original(self, frames)

    monkeypatch.setattr(Mp4Writer, "write", write)
    assert main(tiny_args(output)) == 1
    line = one_line_error(capsys.readouterr().err)
    assert f"cannot write the video {output}" in line and "FFMPEG" not in line


def test_a_bom_is_not_part_of_the_prompt(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("\ufeffa cat\na dog\n".encode())
    assert (
        main(
            [
                "generate",
                "--prompts-file",
                str(prompts),
                "--output",
                str(tmp_path / "v.mp4"),
                "--num-frames",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "v_0.mp4.json").read_text())["prompt"] == "a cat"
    story = tmp_path / "story.txt"
    story.write_bytes("\ufeff0: a harbour\n6: a storm\n".encode())
    assert (
        main(
            [
                "generate",
                "--prompt-schedule",
                f"@{story}",
                "--output",
                str(tmp_path / "s.mp4"),
                "--num-frames",
                "9",
                "--no-progress",
            ]
        )
        == 0
    )
    schedule = json.loads((tmp_path / "s.mp4.json").read_text())["prompt_schedule"]
    assert schedule == [{"frame": 0, "prompt": "a harbour"}, {"frame": 6, "prompt": "a storm"}]


# --------------------------------------------------------------------------------------------------
# --save-latents streams
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_latents_streams_with_bounded_memory(tmp_path: Path, dtype: torch.dtype) -> None:
    frame_shape = (16, 16, 24)
    frames = 300  # 7 MiB of float32: the whole log would be read into memory before
    latents = torch.randn(frames, *frame_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    log = LatentLog(tmp_path / "log", frame_shape, dtype)
    for chunk in latents.split(3):
        log.append(chunk)
    path = tmp_path / "z.safetensors"
    tracemalloc.start()
    try:
        latent_log._save_latents(log, frames - 3, path, piece_bytes=2**16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        log.close()
    assert peak < 2**20  # a few 64 KiB pieces, not the 3.5-7 MiB log
    saved = load_file(path)
    assert list(saved) == ["latents"] and saved["latents"].dtype == dtype
    assert torch.equal(saved["latents"], latents[: frames - 3].unsqueeze(0))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "memrope.latents"}
    assert hidden_files(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# NaN / inf: never a "complete" black video
# --------------------------------------------------------------------------------------------------


def _poison_model(monkeypatch: pytest.MonkeyPatch, after_calls: int) -> None:
    """The DiT's output turns NaN after ``after_calls`` calls (as with NaN weights or a poisoned memory)."""
    load = loading._load_model

    def load_poisoned(plan: Any) -> torch.nn.Module:
        model = load(plan)
        calls = {"n": 0}

        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
            calls["n"] += 1
            return output * float("nan") if calls["n"] > after_calls else output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(loading, "_load_model", load_poisoned)


def test_nan_output_fails_and_keeps_the_existing_video(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    output = existing_video(tmp_path)
    _poison_model(monkeypatch, after_calls=12)  # chunk 0 and 1 are fine, then NaN
    assert main(tiny_args(output, "--save-latents", str(tmp_path / "z.safetensors"))) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "NaN" in line and str(output) in line
    assert untouched(output) and hidden_files(tmp_path) == []
    assert not (tmp_path / "z.safetensors").exists()


def test_nan_output_without_an_earlier_video_reports_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "v.mp4"
    _poison_model(monkeypatch, after_calls=0)
    assert main(tiny_args(output)) == 1
    assert not output.exists()
    report = json.loads((tmp_path / "v.mp4.json").read_text())
    assert report["complete"] is False and "NonFiniteError" in report["error"] and "NaN" in report["error"]


def test_nan_text_embeddings_fail_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    output = existing_video(tmp_path)
    load = loading._load_text_encoder

    def load_poisoned(plan: Any) -> Any:
        encoder = load(plan)
        encode = encoder.encode
        monkeypatch.setattr(encoder, "encode", lambda prompts: encode(prompts) * float("nan"))
        return encoder

    monkeypatch.setattr(loading, "_load_text_encoder", load_poisoned)
    assert main(tiny_args(output)) == 1
    assert "text embeddings of the prompt 'a red fox' hold NaN" in one_line_error(capsys.readouterr().err)
    assert untouched(output) and hidden_files(tmp_path) == []
